"""The dashboard server alone (the live pipeline's check is in test_pipeline_live): its token
file is 0600, nothing is served without the token, it is read-only, and /api/status is the
status handler's reply as JSON."""
from __future__ import annotations

import json
import stat
import threading
import urllib.error
import urllib.request

import pytest


@pytest.fixture
def served(tmp_path):
    from pipeline.dashboard import DashboardServer, write_token

    token = write_token(tmp_path)
    status = {"ok": True, "instance": "x", "stages": [], "n": 1}
    srv = DashboardServer("127.0.0.1", 0, token, lambda: status)
    yield srv, token, tmp_path
    srv.close()
    assert not any(t.name == "dashboard" for t in threading.enumerate())


def _code(url, headers=None, method="GET"):
    req = urllib.request.Request(url, headers=headers or {}, method=method,
                                 data=b"{}" if method != "GET" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_token_file_is_0600_and_renewed_each_start(tmp_path):
    from pipeline.dashboard import TOKEN_FILE, write_token

    t1 = write_token(tmp_path)
    assert stat.S_IMODE((tmp_path / TOKEN_FILE).stat().st_mode) == 0o600
    assert (tmp_path / TOKEN_FILE).read_text().strip() == t1 and len(t1) >= 40
    assert write_token(tmp_path) != t1


def test_requests_without_the_right_token_get_401(served):
    srv, token, _ = served
    for path, headers in (("", {}), ("api/status", {}), ("api/status?token=x", {}),
                          ("api/status", {"X-Hftfarm-Token": token + "x"}),
                          ("api/status", {"Authorization": "Bearer nope"})):
        assert _code(srv.url + path, headers)[0] == 401, (path, headers)


def test_with_the_token_the_page_and_the_status_json_are_served_read_only(served):
    srv, token, _ = served
    code, body = _code(srv.url + f"?token={token}")
    assert code == 200 and b"/api/status" in body
    code, body = _code(srv.url + "api/status", {"Authorization": f"Bearer {token}"})
    assert code == 200 and json.loads(body) == {"ok": True, "instance": "x", "stages": [],
                                                "n": 1}
    assert _code(srv.url + "api/status", {"X-Hftfarm-Token": token}, method="POST")[0] == 405
    assert _code(srv.url + f"kill?token={token}")[0] == 404
