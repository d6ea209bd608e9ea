"""sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET. Runs in the controller.

Cold path. systemd (Type=notify) passes the socket path in NOTIFY_SOCKET; a leading '@' means an
address in Linux's abstract namespace (the '@' becomes a NUL byte). Messages are newline
separated KEY=VALUE lines: READY=1 once every stage is up, WATCHDOG=1 periodically (at least
every WatchdogSec/4, read from WATCHDOG_USEC), STOPPING=1, STATUS=<text>. Without NOTIFY_SOCKET
every call is a no-op that returns False, so the controller runs the same outside systemd.
"""
from __future__ import annotations

import os
import socket


class SdNotifier:
    def __init__(self, address: str | None = None):
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address = addr
        self._sock = None
        if addr:
            if addr[0] not in ("/", "@"):
                raise ValueError(f"NOTIFY_SOCKET={addr!r}: must be a path or an @abstract name")
            self._target = "\0" + addr[1:] if addr[0] == "@" else addr
            # non-blocking: if the receiver stops reading, a full queue must drop a watchdog
            # ping, never stall the controller's supervision loop
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                       | socket.SOCK_NONBLOCK)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields) -> bool:
        """notify(READY=1, STATUS="3 stages up") -> True if a datagram was sent."""
        if self._sock is None:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(msg, self._target)
        except OSError:  # BlockingIOError included
            return False  # systemd gone or socket full: never fatal for the trading process
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def stopping(self) -> bool:
        return self.notify(STOPPING=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(default: float = 1.0) -> float:
    """A quarter of WATCHDOG_USEC, or ``default`` when no watchdog is set. systemd advises at
    least every half; a quarter keeps every gap under WatchdogSec/2 even when one tick of the
    supervision loop is late on a loaded machine."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    try:
        return max(int(usec) / 4e6, 0.01) if usec else default
    except ValueError:
        return default
