"""``bench ipc``: the usual Python IPC, measured the same way as our rings.

Benchmark code, run by ``run.py bench ipc`` in forked, pinned processes; never on the data path.
Every transport carries the same 64-byte record (a MARKET_DTYPE row as bytes), one message per
record, through the library's ordinary blocking calls. The parent pings (or produces); the child
pongs (or consumes until an empty end-of-stream message, so a run cut short by its time budget
still ends cleanly). Each transport's resources are created and released by the parent, and
the child process opens its own ends after the fork (a zmq context must never cross a fork).
"""
from __future__ import annotations

import shutil
import tempfile
import time

import numpy as np

from bench._procs import Children, core_for, shared_int64, wait_until
from shm.records import MARKET_DTYPE

PAYLOAD = np.zeros(1, MARKET_DTYPE).tobytes()
END = b""
WINDOW = 65_536  # records in flight at most (far above any queue's own depth here)
assert len(PAYLOAD) == 64


class _Peer:
    """Two one-way channels: ping (parent -> child) and pong (child -> parent)."""

    name = ""

    def __init__(self, inst: str):
        self.inst = inst

    def ends(self, side: str):
        """(send, recv) for ``side`` ("parent" or "child"); called in that process."""
        raise NotImplementedError

    def recv_many(self, recv):
        """Consumer side of the throughput run: a list of one or more messages."""
        return [recv()]

    def finish(self) -> None:
        """Child, before it exits: flush what its library still buffers (os._exit would not)."""

    def close(self) -> None:
        pass


class MpQueue(_Peer):
    name = "mp-queue"

    def __init__(self, inst, ctx):
        super().__init__(inst)
        self.ping, self.pong = ctx.Queue(), ctx.Queue()

    def ends(self, side):
        a, b = (self.ping, self.pong) if side == "parent" else (self.pong, self.ping)
        return a.put, b.get

    def finish(self):
        for q in (self.ping, self.pong):  # the last put may still sit in the feeder thread
            q.close()
            q.join_thread()

    def close(self):
        # Join the feeder threads before anything else is forked: a fork taken while a
        # feeder thread holds a lock leaves the child hung before it runs a line. The
        # children are gone by now, so pending writes fail fast (EPIPE) instead of blocking;
        # those failures are expected and kept off stderr.
        for q in (self.ping, self.pong):
            q._on_queue_feeder_error = lambda exc, obj: None
            q.close()
        for q in (self.ping, self.pong):
            q.join_thread()


class MpPipe(_Peer):
    name = "mp-pipe"

    def __init__(self, inst, ctx):
        super().__init__(inst)
        self.a, self.b = ctx.Pipe(duplex=True)

    def ends(self, side):
        c = self.a if side == "parent" else self.b
        return c.send_bytes, c.recv_bytes

    def close(self):
        self.a.close()
        self.b.close()


class FasterFifo(_Peer):
    name = "faster-fifo"

    def __init__(self, inst, ctx):
        super().__init__(inst)
        import faster_fifo

        self.ping = faster_fifo.Queue(max_size_bytes=4 << 20)
        self.pong = faster_fifo.Queue(max_size_bytes=1 << 20)

    def ends(self, side):
        a, b = (self.ping, self.pong) if side == "parent" else (self.pong, self.ping)
        return (lambda m: a.put(m, timeout=60.0)), (lambda: b.get(timeout=60.0))

    def recv_many(self, recv):
        return self.ping.get_many(timeout=60.0, max_messages_to_get=1024)  # its batch read

    def close(self):
        self.ping.close()
        self.pong.close()


class PosixMq(_Peer):
    name = "posix-mq"

    def __init__(self, inst, ctx):
        super().__init__(inst)
        import posix_ipc

        self.names = [f"/hftfarm.{inst}.mq.ping", f"/hftfarm.{inst}.mq.pong"]
        # 10 messages is Linux's default msg_max for unprivileged users: keep what anyone gets.
        for name in self.names:
            posix_ipc.MessageQueue(name, posix_ipc.O_CREX, mode=0o600, max_messages=10,
                                   max_message_size=64).close()

    def ends(self, side):
        import posix_ipc

        ping, pong = (posix_ipc.MessageQueue(n) for n in self.names)
        a, b = (ping, pong) if side == "parent" else (pong, ping)
        return a.send, (lambda: b.receive()[0])

    def close(self):
        import posix_ipc

        for name in self.names:
            try:
                posix_ipc.unlink_message_queue(name)
            except posix_ipc.ExistentialError:
                pass


class ZmqIpc(_Peer):
    name = "zmq-ipc"

    def __init__(self, inst, ctx):
        super().__init__(inst)
        self.dir = tempfile.mkdtemp(prefix=f"hftfarm-{inst}-zmq-")
        self.addr = f"ipc://{self.dir}/pair"
        self._ctx = self._sock = None

    def ends(self, side):
        import zmq

        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PAIR)
        self._sock.setsockopt(zmq.LINGER, 0)
        (self._sock.bind if side == "parent" else self._sock.connect)(self.addr)
        return self._sock.send, self._sock.recv

    def finish(self):
        self._sock.close(linger=10_000)  # sends go through zmq's I/O thread: let them out
        self._ctx.term()
        self._sock = None

    def close(self):
        if self._sock is not None:
            self._sock.close(0)
            self._ctx.term()
        shutil.rmtree(self.dir, ignore_errors=True)


PEERS = {cls.name: cls for cls in (MpQueue, MpPipe, FasterFifo, PosixMq, ZmqIpc)}


# -- child bodies -----------------------------------------------------------------------------
def _child_pong(peer, n, ready):
    send, recv = peer.ends("child")
    ready[0] = 1
    for _ in range(n):
        send(recv())
    peer.finish()


def _child_consume(peer, results):
    send, recv = peer.ends("child")
    send(b"R")  # the parent starts its clock once the channel is known to be connected
    count = 0
    while True:
        msgs = peer.recv_many(recv)
        if msgs[-1] == END:
            count += len(msgs) - 1
            break
        count += len(msgs)
        results[3] = count  # progress, so the producer never runs more than WINDOW ahead
    results[1] = time.perf_counter_ns()
    results[2] = count
    peer.finish()


# -- measurements -----------------------------------------------------------------------------
def peer_latency(name, inst, ctx, n, warm, budget_s):
    peer = PEERS[name](inst, ctx)
    total = n + warm
    try:
        ready = shared_int64(16)
        with Children() as kids:
            kids.start(_child_pong, (peer, total, ready), core_for(0))
            wait_until(lambda: ready[0], f"{name}: child", 30, kids)
            send, recv = peer.ends("parent")
            out = np.zeros(total, np.int64)
            now = time.perf_counter_ns
            soft = time.monotonic() + budget_s
            done = total
            for i in range(total):
                t0 = now()
                send(PAYLOAD)
                recv()
                out[i] = now() - t0
                if (i & 63) == 0 and time.monotonic() > soft:
                    done = i + 1
                    break
            if done == total:
                kids.join(name, 30)
        return (out[min(warm, done // 2):done] // 2).astype(np.int64)
    finally:
        peer.close()


def peer_throughput(name, inst, ctx, n, budget_s):
    peer = PEERS[name](inst, ctx)
    try:
        results = shared_int64(16)
        with Children() as kids:
            kids.start(_child_consume, (peer, results), core_for(0))
            send, recv = peer.ends("parent")
            if recv() != b"R":
                raise RuntimeError(f"{name}: unexpected handshake")
            soft = time.monotonic() + budget_s
            t0 = time.perf_counter_ns()
            sent = n
            for i in range(n):
                send(PAYLOAD)
                if (i & 1023) == 0:
                    if time.monotonic() > soft:
                        sent = i + 1
                        break
                    # mp.Queue buffers without bound in a feeder thread: without this window
                    # the budget would stop the sender while minutes of records still queue.
                    while i - int(results[3]) > WINDOW and time.monotonic() < soft:
                        time.sleep(0)
            send(END)
            kids.join(name, 60)
        if int(results[2]) != sent:
            raise RuntimeError(f"{name}: consumer got {int(results[2])} of {sent} records")
        return sent / ((int(results[1]) - t0) / 1e9)
    finally:
        peer.close()


def available(name: str) -> str | None:
    """None if the transport's library imports, else why not."""
    mod = {"faster-fifo": "faster_fifo", "zmq-ipc": "zmq", "posix-mq": "posix_ipc"}.get(name)
    if mod is None:
        return None
    try:
        __import__(mod)
    except ImportError as exc:
        return f"{mod} not installed ({exc})"
    return None


__all__ = ["PEERS", "peer_latency", "peer_throughput", "available"]
