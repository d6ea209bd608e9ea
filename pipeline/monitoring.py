"""Wires the controller's monitoring: the monitor thread (KPIs and alerts), the Prometheus
exporter, the dashboard and the alert webhook. Runs in the controller process, cold: called
once after the stages are up (``start``) and once on the way out (``close``, safe after any
failure). Each part is off unless its config section enables it ([alerts] enabled is on by
default; [metrics] and [dashboard] are off)."""
from __future__ import annotations

import time


class Monitoring:
    def __init__(self, ctl):
        self.ctl = ctl
        self.thread = self.metrics = self.dashboard = self.webhook = None

    def start(self) -> None:
        from pipeline.monitor import Monitor, MonitorThread

        ctl, cfg = self.ctl, self.ctl.cfg
        ctl.monitor = Monitor(ctl)
        ctl.monitor.on_alert = self._on_alert
        if cfg.alerts.webhook_url:
            from pipeline.webhook import WebhookSender

            self.webhook = WebhookSender(cfg.alerts.webhook_url, cfg.alerts.webhook_timeout_s,
                                         ctl.instance, ctl.log)
        ctl.monitor.sample()   # a first round, so status and scrapes have figures at once
        self.thread = MonitorThread(ctl.monitor, cfg.alerts.interval_s, ctl.log)
        if cfg.metrics.enabled:
            from pipeline.exporter import MetricsServer

            try:
                self.metrics = MetricsServer(ctl, cfg.metrics.host, cfg.metrics.port)
            except OSError as exc:
                raise _error(f"[metrics] cannot listen on {cfg.metrics.host}:"
                             f"{cfg.metrics.port}: {exc.strerror or exc}; choose another "
                             "port (0: any free one)") from None
            ctl.log(f"metrics: {self.metrics.url}")
        if cfg.dashboard.enabled:
            from pipeline.dashboard import TOKEN_FILE, DashboardServer, write_token

            token = write_token(ctl.run_dir)
            try:
                self.dashboard = DashboardServer(cfg.dashboard.host, cfg.dashboard.port, token,
                                                 self._status)
            except OSError as exc:
                raise _error(f"[dashboard] cannot listen on {cfg.dashboard.host}:"
                             f"{cfg.dashboard.port}: {exc.strerror or exc}; choose another "
                             "port (0: any free one)") from None
            ctl.log(f"dashboard: {self.dashboard.url}?token=<{ctl.run_dir / TOKEN_FILE}>")

    def _status(self) -> dict:
        from pipeline import control as ops

        with self.ctl.lock:
            return ops.handle_request(self.ctl, {"cmd": "status"})

    def _on_alert(self, ev: dict) -> None:
        ctl = self.ctl
        ctl.events.append(f"{time.strftime('%H:%M:%S')} alert {ev['alert']} {ev['state']}: "
                          f"{ev['message']}")
        ctl.event("alert", ev["message"], who="monitor", alert=ev["alert"],
                  subject=ev["subject"], severity=ev["severity"], state=ev["state"])
        if self.webhook is not None:
            self.webhook.post(ev)

    def urls(self) -> dict:
        return {"metrics_url": self.metrics.url if self.metrics else None,
                "dashboard_url": self.dashboard.url if self.dashboard else None}

    def close(self) -> None:
        for part in ("dashboard", "metrics", "thread", "webhook"):
            obj = getattr(self, part)
            setattr(self, part, None)
            if obj is not None:
                try:
                    obj.close()
                except Exception as exc:   # close the rest whatever one part does
                    self.ctl.log(f"monitoring: closing {part}: {type(exc).__name__}: {exc}")


class MonitoringError(Exception):
    """A monitoring server could not start (the controller reports it as its own error)."""


def _error(msg: str) -> Exception:
    return MonitoringError(msg)
