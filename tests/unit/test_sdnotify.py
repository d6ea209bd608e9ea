"""sd_notify sends KEY=VALUE datagrams to NOTIFY_SOCKET (path or abstract '@' address)."""
from __future__ import annotations

import os
import socket
import uuid

import pytest

from pipeline.sdnotify import SdNotifier, watchdog_interval_s


def _listener(address):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    s.settimeout(5)
    return s


def test_ready_and_watchdog_arrive_on_a_path_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    srv = _listener(path)
    try:
        n = SdNotifier(path)
        assert n.ready("all up")
        assert n.watchdog()
        assert srv.recv(4096) == b"READY=1\nSTATUS=all up"
        assert srv.recv(4096) == b"WATCHDOG=1"
        n.close()
    finally:
        srv.close()


def test_abstract_namespace_address_is_used_for_a_leading_at_sign():
    name = f"hftfarm-test-{uuid.uuid4().hex}"
    srv = _listener("\0" + name)
    try:
        n = SdNotifier("@" + name)
        assert n.notify(STOPPING=1)
        assert srv.recv(4096) == b"STOPPING=1"
        n.close()
    finally:
        srv.close()


def test_without_notify_socket_every_call_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = SdNotifier()
    assert not n.enabled
    assert n.ready() is False


def test_a_relative_notify_socket_is_refused_with_its_value():
    with pytest.raises(ValueError, match="relative.sock"):
        SdNotifier("relative.sock")


def test_watchdog_interval_is_a_quarter_of_watchdog_usec(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    assert watchdog_interval_s() == 0.75
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval_s(2.0) == 2.0


def test_a_receiver_that_stops_reading_never_blocks_the_sender(tmp_path):
    path = str(tmp_path / "full.sock")
    srv = _listener(path)
    try:
        n = SdNotifier(path)
        results = [n.watchdog() for _ in range(5000)]   # far more than the queue holds
        assert results[0] is True and results[-1] is False
        n.close()
    finally:
        srv.close()
