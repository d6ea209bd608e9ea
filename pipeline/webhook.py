"""Alert webhook: POSTs each alert event as JSON to ``[alerts] webhook_url``.

Runs in the controller process on a thread of its own: the monitor only puts the event in a
bounded queue (never waits; a full queue drops the event and counts it), the sender posts with
``[alerts] webhook_timeout_s`` per request and never retries in a loop, so a slow, dead or
hostile endpoint costs this thread alone, never supervision. Cold path.
"""
from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request

QUEUE_MAX = 256


class WebhookSender:
    def __init__(self, url: str, timeout_s: float, instance: str, log=None):
        self.url, self.timeout_s, self.instance = url, timeout_s, instance
        self.log = log or (lambda msg: None)
        self.q: queue.Queue = queue.Queue(QUEUE_MAX)
        self.sent = self.failed = self.dropped = 0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._thread.start()

    def post(self, event: dict) -> None:
        """Queue one event (never blocks)."""
        try:
            self.q.put_nowait({"instance": self.instance, **event})
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            ev = self.q.get()
            if ev is None or self._closing.is_set():
                return
            req = urllib.request.Request(self.url, data=json.dumps(ev).encode(), method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "User-Agent": "hftfarm-alerts"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    r.read(1024)
                self.sent += 1
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self.failed += 1
                if self.failed <= 3:
                    self.log(f"alert webhook {self.url}: {exc}")

    def close(self, wait_s: float = 2.0) -> None:
        """Deliver what is queued for at most ``wait_s`` more, then drop the rest; the thread
        is gone when this returns (a request in flight ends within its timeout)."""
        try:
            self.q.put(None, timeout=wait_s)
        except queue.Full:
            pass
        self._thread.join(timeout=wait_s)
        self._closing.set()
        try:
            self.q.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=self.timeout_s + 1.0)
