"""Checks of the controller's monitoring against a live pipeline: the Prometheus exporter, the
alerts and the web dashboard (in headless Chromium) each agree with ``run.py status --json``.
Called by tests/integration/test_pipeline_live.py on its one started pipeline (helper module:
a pipeline start costs the suite a lot, so these ride on that one)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.integration.test_pipeline_cli import status_json, wait_for

# what the live module's config adds: exporter and dashboard on any free loopback port, and a
# latency threshold every tick-to-trade exceeds, so that an alert fires while orders flow
CONFIG = """
[metrics]
enabled = true
port = 0

[dashboard]
enabled = true
port = 0

[alerts]
tick_to_trade_p99_us = 0.001
latency_min_count = 1
interval_s = 0.5
"""


def _get(url: str, headers=None, timeout=20):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def _scrape(url: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    _code, body = _get(url)
    out: dict = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def check_exporter_agrees_with_status(cfg) -> None:
    s1 = status_json(cfg)
    url = s1["monitoring"]["metrics_url"]
    assert url.startswith("http://127.0.0.1:"), url
    m = _scrape(url)
    s2 = status_json(cfg)
    inst = s1["instance"]
    assert all(lab["instance"] == inst for series in m.values() for lab, _ in series)

    def by(name, key):
        return {lab[key]: v for lab, v in m[name]}

    stages1 = {r["stage"]: r for r in s1["stages"]}
    stages2 = {r["stage"]: r for r in s2["stages"]}
    assert set(by("hftfarm_stage_up", "stage")) == set(stages1)
    for name, v in by("hftfarm_stage_up", "stage").items():
        assert v == (stages1[name]["state"] == "RUNNING") == (stages2[name]["state"] ==
                                                                "RUNNING"), name
    for metric, key in (("hftfarm_stage_records_in_total", "records_in"),
                        ("hftfarm_stage_records_out_total", "records_out"),
                        ("hftfarm_stage_records_lost_total", "records_lost"),
                        ("hftfarm_stage_restarts_total", "restarts"),
                        ("hftfarm_stage_errors_total", "errors")):
        for name, v in by(metric, "stage").items():   # counters: between the two statuses
            assert stages1[name][key] <= v <= stages2[name][key], (metric, name)
    r1, r2 = s1["risk"], s2["risk"]
    for metric, key in (("hftfarm_fills_total", "fills"),
                        ("hftfarm_orders_sent_total", "orders_sent"),
                        ("hftfarm_risk_approved_total", "approved"),
                        ("hftfarm_risk_rejected_total", "rejected")):
        assert r1[key] <= m[metric][0][1] <= r2[key], metric
    assert r1["state"] == r2["state"]
    assert by("hftfarm_risk_state", "state")[r1["state"]] == 1
    assert set(by("hftfarm_strategy_pnl", "process")) == set(r1["strategies"])
    for lab, v in m["hftfarm_strategy_pnl"]:
        st = r1["strategies"][lab["process"]]
        assert lab["strategy"] == st["strategy"] and lab["shard"] == str(st["shard"])
        assert v == v   # a number, not NaN
    for lab, _v in m["hftfarm_strategy_position_lots"]:
        assert f"{lab['instrument']}@{lab['venue']}" in \
            r1["strategies"][lab["process"]]["instruments"]
    # latency: every histogram of `latency`, as a Prometheus histogram with consistent buckets
    hops = {lab["hop"] for lab, _ in m["hftfarm_latency_seconds_count"]}
    assert hops == set(s1["monitor"]["latency"])
    count = {lab["hop"]: v for lab, v in m["hftfarm_latency_seconds_count"]}
    assert count["tick_to_trade"] >= s1["monitor"]["latency"]["tick_to_trade"]["count"] > 0
    inf = {lab["hop"]: v for lab, v in m["hftfarm_latency_seconds_bucket"] if lab["le"] == "+Inf"}
    assert inf == count
    t2t = sorted((float(lab["le"]), v) for lab, v in m["hftfarm_latency_seconds_bucket"]
                 if lab["hop"] == "tick_to_trade")
    assert [v for _, v in t2t] == sorted(v for _, v in t2t)   # cumulative
    assert {lab["venue"] for lab, _ in m["hftfarm_feed_staleness_seconds"]} == {"simA", "simB"}
    assert s1["uptime_s"] - 5 <= m["hftfarm_uptime_seconds"][0][1] <= s2["uptime_s"] + 5


def check_alerts_in_status_and_journal(cfg) -> None:
    from stages.journal import read_events

    st = wait_for(lambda: (lambda s: s if any(a["alert"] == "latency_degraded" for a in
                                              s["monitor"]["alerts"]) else None)(
        status_json(cfg)), 60, "the latency_degraded alert in status", step=0.5)
    a = next(a for a in st["monitor"]["alerts"] if a["alert"] == "latency_degraded")
    assert a["severity"] == "warning" and a["subject"] == "tick_to_trade"
    assert "tick-to-trade p99" in a["message"]
    assert any("alert latency_degraded firing" in e for e in st["events"]), st["events"]
    events = read_events(Path(st["run_dir"]) / "journal")
    ev = [e for e in events if e["what"] == "alert" and e["alert"] == "latency_degraded"]
    assert ev and ev[0]["state"] == "firing" and ev[0]["who"] == "monitor"


def check_dashboard(cfg) -> None:
    st = status_json(cfg)
    url = st["monitoring"]["dashboard_url"]
    assert url.startswith("http://127.0.0.1:"), url
    token_file = Path(st["run_dir"]) / "dashboard.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    for path, headers in (("", {}), ("api/status", {}), ("api/status?token=nope", {}),
                          ("api/status", {"X-Hftfarm-Token": token[:-1]})):
        try:
            _get(url + path, headers)
            raise AssertionError(f"{path} {headers} was served without the token")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401, (path, exc.code)
    try:
        urllib.request.urlopen(urllib.request.Request(url + f"api/status?token={token}",
                                                      data=b"{}", method="POST"), timeout=20)
        raise AssertionError("a POST was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 405
    code, body = _get(url + "api/status", {"X-Hftfarm-Token": token})
    api = json.loads(body)
    assert code == 200 and set(api) == set(status_json(cfg))
    dom = _chromium_dom(f"{url}?token={token}")
    shown = _page_view(dom)
    cli = status_json(cfg)
    raw = json.loads(shown["raw"])          # the snapshot the page last rendered
    assert set(raw) == set(cli)
    # what the page shows is what its snapshot says, cell for cell
    assert shown["instance"] == raw["instance"] and shown["risk_state"] == raw["risk"]["state"]
    assert shown["stages"] == [(r["stage"], r["state"], str(r["pid"]),
                                "-" if r["cpu"] is None else str(r["cpu"]),
                                str(r["restarts"])) for r in raw["stages"]]
    assert shown["strategies"] == {name: (f"{x['pnl']:.2f}", str(x["open_orders"]))
                                   for name, x in raw["risk"]["strategies"].items()}
    assert set(shown["hops"]) == set(raw["monitor"]["latency"])
    assert "latency_degraded" in shown["alerts"]
    assert shown["curves"] == set(raw["risk"]["strategies"])
    # ... and that snapshot is status --json's: the same instance, stages, processes, risk
    stable = lambda s: (s["instance"], s["pid"], s["run_dir"],   # noqa: E731
                        [(r["stage"], r["state"], r["pid"], r["cpu"], r["restarts"])
                         for r in s["stages"]],
                        s["risk"]["state"], sorted(s["risk"]["strategies"]),
                        s["monitoring"])
    assert stable(raw) == stable(cli)


def check_dashboard_farms(cfg) -> None:
    """The page's Farms table shows each farm, its budget and every shard as the snapshot it
    rendered says (state, PnL, each subscription's valid / cells and oldest age)."""
    st = status_json(cfg)
    token = (Path(st["run_dir"]) / "dashboard.token").read_text().strip()
    dom = _chromium_dom(f"{st['monitoring']['dashboard_url']}?token={token}")
    shown = _page_view(dom)
    raw = json.loads(shown["raw"])
    assert raw["farms"], "no farm in the snapshot"
    want = {}
    for name, f in raw["farms"].items():
        b = f["budget"]
        want[name] = {
            "pnl": f"{f['pnl']:.2f}",
            "budget": (f"notional {b['notional']:g}, loss {b['loss']:g}, {b['rounds']} rounds"
                       if b else "-"),
            "shards": [(s["shard"], s["process"], s["state"], f"{s['pnl']:.2f}",
                        "; ".join(f"{g['kind']} {g['valid']}/{g['cells']}"
                                  + ("" if g["oldest_age_ms"] is None
                                     else f", {g['oldest_age_ms']:g}")
                                  for g in s["signals"]) or "-")
                       for s in f["shards"]]}
    assert shown["farms"] == want


def _chromium_dom(url: str) -> str:
    """The page's DOM after its script ran (headless Chromium, its own profile, its whole
    process group ended afterwards: nothing is left running)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium not found: `make deps` installs Debian's chromium package"
    profile = tempfile.mkdtemp(prefix="hftfarm-chromium-")
    proc = subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu",
                             "--no-first-run", f"--user-data-dir={profile}",
                             "--virtual-time-budget=4000", "--dump-dom", url],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode in (0, -9), proc.returncode
    left = subprocess.run(["pgrep", "-f", profile], capture_output=True, text=True).stdout
    assert not left.strip(), f"chromium left running: {left}"
    return out


def _page_view(dom: str) -> dict:
    import html

    def text(id_):
        m = re.search(rf'id="{id_}"[^>]*>(.*?)</', dom, re.S)
        return html.unescape(m.group(1)) if m else None

    def cells(row):
        return {c: html.unescape(v) for c, v in
                re.findall(r'<td class="([a-z0-9]+)[^"]*">(.*?)</td>', row)}

    stages = []
    for row in re.findall(r'<tr data-stage="[^"]*">(.*?)</tr>', dom, re.S):
        c = cells(row)
        stages.append((c["stage"], c["state"], c["pid"], c["cpu"], c["restarts"]))
    strategies = {}
    for name, row in re.findall(r'<tr data-strategy="([^"]*)">(.*?)</tr>', dom, re.S):
        c = cells(row)
        strategies[html.unescape(name)] = (c["pnl"], c["open"])
    farms = {}
    for name, row in re.findall(r'<tr data-farm="([^"]*)">(.*?)</tr>', dom, re.S):
        c = cells(row)
        farms[html.unescape(name)] = {"pnl": c["pnl"], "budget": c["budget"], "shards": []}
    for name, k, row in re.findall(r'<tr data-farm="([^"]*)" data-shard="([^"]*)">(.*?)</tr>',
                                   dom, re.S):
        c = cells(row)
        farms[html.unescape(name)]["shards"].append((int(k), c["name"].strip(), c["state"],
                                                     c["pnl"], c["signals"]))
    assert 'data-rendered="' in dom, "the page never rendered a status (see its #err)"
    return {"farms": farms, "instance": text("instance"), "risk_state": text("risk-state"),
            "stages": stages, "strategies": strategies,
            "hops": re.findall(r'<tr data-hop="([^"]*)">', dom),
            "alerts": re.findall(r'<li [^>]*data-alert="([^"]*)"', dom),
            "curves": set(re.findall(r'<polyline [^>]*data-strategy="([^"]*)"', dom)),
            "raw": text("raw")}
