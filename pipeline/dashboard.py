"""Read-only web dashboard served by the controller on loopback (``[dashboard]``).

Runs in the controller process: a stdlib ``ThreadingHTTPServer`` on a thread of its own (one
thread per request, daemon), off the supervision loop; ``/api/status`` answers exactly what
``run.py status --json`` prints (the same handler, under the same lock the control socket
takes for one request). The page (``/``) fetches it every second and draws stages and their
health, positions, the PnL curve, latency percentiles, the risk state and the alerts.

Access: a random token written to ``<run dir>/dashboard.token`` (mode 0600, so only the
instance's user reads it), given as ``?token=...`` or the header ``X-Hftfarm-Token`` (or
``Authorization: Bearer ...``); anything else gets 401. GET only: nothing on this server changes
the instance (the kill switch stays on the CLI); other methods get 405.
"""
from __future__ import annotations

import hmac
import json
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

TOKEN_FILE = "dashboard.token"
PAGE = Path(__file__).resolve().parent / "dashboard.html"


def write_token(run_dir) -> str:
    """A new token in ``<run_dir>/dashboard.token``, created 0600 (never readable by others,
    not even for an instant: O_EXCL with the mode, then the write)."""
    path = Path(run_dir) / TOKEN_FILE
    token = secrets.token_urlsafe(32)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    return token


class DashboardServer:
    def __init__(self, host: str, port: int, token: str, status_fn):
        self.token = token
        self.status_fn = status_fn
        page = PAGE.read_bytes()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "hftfarm-dashboard"

            def log_message(self, *args):   # no stderr line per request
                pass

            def _authorised(self, query) -> bool:
                given = (self.headers.get("X-Hftfarm-Token")
                         or (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                         or (query.get("token") or [""])[0])
                return bool(given) and hmac.compare_digest(given.strip(), outer.token)

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                url = urlsplit(self.path)
                if not self._authorised(parse_qs(url.query)):
                    self._send(401, b'{"ok": false, "error": "token required"}\n',
                               "application/json")
                    return
                if url.path == "/":
                    self._send(200, page, "text/html; charset=utf-8")
                elif url.path == "/api/status":
                    from pipeline.control import _jsonable

                    body = json.dumps(outer.status_fn(), default=_jsonable).encode()
                    self._send(200, body, "application/json")
                else:
                    self._send(404, b'{"ok": false, "error": "not found"}\n',
                               "application/json")

            def _refuse(self):
                self._send(405, b'{"ok": false, "error": "read-only"}\n', "application/json")

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.host, self.port = host, self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="dashboard",
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5.0)
