"""deploy/prometheus and deploy/grafana: the alerting rules pass `promtool check rules` and
their unit tests (`promtool test rules`), and every expression of the rules and of the Grafana
dashboard names only series, and labels, that the exporter exports. promtool is Debian's
prometheus package, installed by `make deps` (part of `make test`)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.integration.test_pipeline_cli import ROOT
from tests.unit.monitoring_rig import Rig

PROM = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana" / "hftfarm-dashboard.json"
METRIC_RE = re.compile(r"\b(hftfarm_[a-z0-9_]+)\s*(\{[^}]*\})?")
FUNCS_WITH_LABEL_LISTS = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: `make deps` installs Debian's prometheus package"
    return path


def test_alerting_rules_pass_promtool_check_rules():
    r = subprocess.run([promtool(), "check", "rules", "hftfarm-alerts.yml"], cwd=PROM,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 6 rules found" in r.stdout


def test_alerting_rules_pass_their_promtool_unit_tests():
    r = subprocess.run([promtool(), "test", "rules", "hftfarm-alerts.test.yml"], cwd=PROM,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{series name: label names} of everything the exporter can export."""
    import os
    import uuid

    from pipeline.exporter import HftfarmCollector
    from pipeline.monitor import Monitor
    from shm.segment import list_segments

    name = f"t{os.getpid()}x{uuid.uuid4().hex[:8]}"
    rig = Rig(name, tmp_path_factory.mktemp("rig"), n_strategies=2)
    try:
        rig.ctl.monitor = Monitor(rig.ctl)
        rig.ctl.monitor.sample()
        out = {}
        for fam in HftfarmCollector(rig.ctl).collect():
            labels = {"instance"} | set(getattr(fam, "_labelnames", ()))   # declared ones
            for smp in fam.samples:
                labels |= set(smp.labels)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
            for suf in suffixes.get(fam.type, [""]):
                out[fam.name + suf] = labels | ({"le"} if suf == "_bucket" else set())
        # families whose samples are empty here still declare their labels
        out["hftfarm_rejects_total"] |= {"reason"}
        out["hftfarm_alerts_firing"] |= {"alert", "subject", "severity"}
    finally:
        rig.close()
        assert list_segments(name) == []
    return out


def _check_expr(expr: str, exported: dict) -> list[str]:
    problems = []
    names = METRIC_RE.findall(expr)
    if not names:
        problems.append(f"{expr!r} names no hftfarm series")
    for metric, matchers in names:
        if metric not in exported:
            problems.append(f"{metric} (in {expr!r}) is not exported")
            continue
        for key in re.findall(r"([a-zA-Z_]+)\s*=~?", matchers or ""):
            if key not in exported[metric]:
                problems.append(f"{metric} has no label {key!r} (in {expr!r})")
    known = set().union(*exported.values())
    for group in FUNCS_WITH_LABEL_LISTS.findall(expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            if label not in known:
                problems.append(f"label {label!r} (in {expr!r}) is on no exported series")
    return problems


def test_every_grafana_expression_names_exported_series(exported):
    dash = json.loads(GRAFANA.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    assert len(exprs) > 20
    problems = [p for e in exprs for p in _check_expr(e, exported)]
    assert problems == []


def test_every_alert_rule_expression_names_exported_series(exported):
    rules = _rules(PROM / "hftfarm-alerts.yml")
    assert set(rules) == {
        "HftfarmWinRateDegraded", "HftfarmDrawdownExcessive", "HftfarmLatencyDegraded",
        "HftfarmFeedStale", "HftfarmRejectSpike", "HftfarmStageRestarting"}
    problems = [p for e in rules.values() for p in _check_expr(e, exported)]
    assert problems == []


def _rules(path) -> dict:
    """{alert: expr} of a rules file, read as its plain layout (no YAML library here: the
    file's syntax is promtool's to check): ``expr: ...`` on one line, or ``expr: >-`` and the
    lines indented below it."""
    rules, alert, lines = {}, None, path.read_text().splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("- alert:"):
            alert = s.split(":", 1)[1].strip()
        elif s.startswith("expr:"):
            expr = s.split(":", 1)[1].strip()
            if expr in (">-", ">", "|"):
                indent = len(line) - len(line.lstrip())
                body = []
                for nxt in lines[i + 1:]:
                    if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                        break
                    body.append(nxt.strip())
                expr = " ".join(body)
            rules[alert] = expr
    return rules


def test_the_expression_check_catches_an_unknown_series_or_label(exported):
    assert _check_expr('hftfarm_strategy_pnl{farm="x"}', exported)
    assert _check_expr("rate(hftfarm_no_such_total[1m])", exported)
    assert _check_expr("sum by (goal) (hftfarm_strategy_pnl)", exported)
    assert not _check_expr('sum by (process) (hftfarm_strategy_pnl{strategy="mm"})', exported)
