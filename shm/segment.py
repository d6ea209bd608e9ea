"""POSIX shared-memory segments: create / attach / close / unlink, and their common header.

Cold path (set-up and tear-down in every process; the controller and ``run.py shm``).

Every hftfarm segment is ``/dev/shm/hftfarm.<instance>.<name>``, mode 0600 (owner only), and
starts with one header so any tool can tell what it is, who made it, and whether its instance is
still alive:

    0   magic        u8   b"HFTFARM1"
    8   version      u4
    12  data_offset  u4   where the segment's own content starts (HEADER_SIZE)
    16  total_size   i8
    24  creator_pid  i8
    32  created_ns   i8
    40  kind         S16  "spsc", "broadcast", "hist", "status", ...
    56  layout_hash  i8   of the record dtype (shm.records.layout_hash), 0 if none
    64  record_size  i8
    72  capacity     i8   records (rings)
    80  n_readers    i8
    88  flags        i8
    96  ready        i8   written last (release): the creator finished initialising
    128 layout       1024 bytes of ASCII: shm.records.layout_description, for error messages
"""
from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass

import numpy as np
import posix_ipc

PREFIX = "hftfarm"
MAGIC = int.from_bytes(b"HFTFARM1", "little")
VERSION = 1
HEADER_SIZE = 1152           # 9 x 128: header + layout text, keeps content 128-byte aligned
LAYOUT_TEXT_OFFSET = 128
LAYOUT_TEXT_SIZE = 1024
MODE = 0o600

HEADER_DTYPE = np.dtype(
    [
        ("magic", "<u8"), ("version", "<u4"), ("data_offset", "<u4"), ("total_size", "<i8"),
        ("creator_pid", "<i8"), ("created_ns", "<i8"), ("kind", "S16"), ("layout_hash", "<i8"),
        ("record_size", "<i8"), ("capacity", "<i8"), ("n_readers", "<i8"), ("flags", "<i8"),
        ("ready", "<i8"), ("reserved", "<i8", (3,)),
    ]
)
assert HEADER_DTYPE.itemsize == 128


class SegmentError(Exception):
    """A segment could not be created or attached; the message names it and says why."""


def segment_name(instance: str, name: str) -> str:
    if not instance or "/" in instance or "." in instance:
        raise ValueError(f"bad instance name {instance!r}: letters, digits, '-' and '_' only")
    if not name or "/" in name:
        raise ValueError(f"bad segment name {name!r}")
    return f"/{PREFIX}.{instance}.{name}"


def pid_alive(pid: int) -> bool:
    """The process runs: it exists and is not a zombie (one that exited but whose parent has
    not reaped it yet, e.g. a controller's stage after a kill -9 of the controller)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        pass
    try:   # no /proc: existence is all we can tell
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Segment:
    """One mapped POSIX shared-memory segment. ``header`` is a numpy record over its header."""

    def __init__(self, shm_name: str, mm: mmap.mmap, created: bool):
        self.shm_name = shm_name
        self.mm = mm
        self.created = created
        self.buf = np.frombuffer(mm, dtype=np.uint8)
        self.addr = self.buf.ctypes.data
        self.header = self.buf[:128].view(HEADER_DTYPE)[0]
        self._closed = False

    # -- creation / attachment ------------------------------------------------------------
    @classmethod
    def create(cls, instance: str, name: str, size: int, kind: str, *, layout_hash: int = 0,
               layout_text: str = "", record_size: int = 0, capacity: int = 0,
               n_readers: int = 0, flags: int = 0) -> "Segment":
        shm_name = segment_name(instance, name)
        total = HEADER_SIZE + int(size)
        try:
            shm = posix_ipc.SharedMemory(shm_name, posix_ipc.O_CREX, mode=MODE, size=total)
        except posix_ipc.ExistentialError:
            raise SegmentError(
                f"segment {shm_name} already exists (another instance named {instance!r} is "
                f"running, or a crashed one left it: see `python run.py shm ls`)") from None
        try:
            os.fchmod(shm.fd, MODE)  # posix_ipc applies the umask; owner-only regardless
            mm = mmap.mmap(shm.fd, total)
        finally:
            shm.close_fd()
        seg = cls(shm_name, mm, created=True)
        h = seg.header
        h["version"] = VERSION
        h["data_offset"] = HEADER_SIZE
        h["total_size"] = total
        h["creator_pid"] = os.getpid()
        h["created_ns"] = time.time_ns()
        h["kind"] = kind.encode()[:16]
        h["layout_hash"] = layout_hash
        h["record_size"] = record_size
        h["capacity"] = capacity
        h["n_readers"] = n_readers
        h["flags"] = flags
        text = layout_text.encode()[: LAYOUT_TEXT_SIZE - 1]
        seg.buf[LAYOUT_TEXT_OFFSET: LAYOUT_TEXT_OFFSET + len(text)] = np.frombuffer(text, np.uint8)
        h["magic"] = MAGIC
        return seg

    def mark_ready(self) -> None:
        """Publish the segment as initialised (attachers wait for this)."""
        self.header["ready"] = 1

    @classmethod
    def attach(cls, instance: str, name: str, *, timeout_s: float = 0.0) -> "Segment":
        shm_name = segment_name(instance, name)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                shm = posix_ipc.SharedMemory(shm_name)
                break
            except posix_ipc.ExistentialError:
                if time.monotonic() >= deadline:
                    raise SegmentError(f"segment {shm_name} does not exist") from None
                time.sleep(0.001)
        try:
            size = os.fstat(shm.fd).st_size
            if size < HEADER_SIZE:
                raise SegmentError(f"segment {shm_name} is {size} bytes, smaller than a header")
            mm = mmap.mmap(shm.fd, size)
        finally:
            shm.close_fd()
        seg = cls(shm_name, mm, created=False)
        while seg.header["ready"] != 1:
            if seg.header["magic"] not in (0, MAGIC):
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.0005)
        if seg.header["magic"] != MAGIC:
            seg.close()
            raise SegmentError(f"segment {shm_name} is not an hftfarm segment (bad magic)")
        if seg.header["version"] != VERSION:
            v = int(seg.header["version"])
            seg.close()
            raise SegmentError(f"segment {shm_name} has version {v}, this code speaks {VERSION}")
        if seg.header["ready"] != 1:
            seg.close()
            raise SegmentError(f"segment {shm_name} was never finished by its creator")
        return seg

    # -- accessors ------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return bytes(self.header["kind"]).rstrip(b"\0").decode()

    @property
    def layout_text(self) -> str:
        raw = bytes(self.buf[LAYOUT_TEXT_OFFSET: LAYOUT_TEXT_OFFSET + LAYOUT_TEXT_SIZE])
        return raw.split(b"\0", 1)[0].decode(errors="replace")

    @property
    def data(self) -> np.ndarray:
        """The content after the header, as bytes (128-byte aligned start)."""
        return self.buf[HEADER_SIZE:]

    @property
    def data_addr(self) -> int:
        return self.addr + HEADER_SIZE

    def close(self) -> None:
        """Unmap. Views made from ``buf`` must be dropped first; a BufferError means one is
        still alive, in which case the mapping is left to the garbage collector."""
        if self._closed:
            return
        self._closed = True
        self.header = None
        self.buf = None
        try:
            self.mm.close()
        except BufferError:
            pass

    def unlink(self) -> None:
        unlink_name(self.shm_name)


def unlink_name(shm_name: str) -> bool:
    try:
        posix_ipc.unlink_shared_memory(shm_name)
        return True
    except posix_ipc.ExistentialError:
        return False


# ------------------------------------------------------------------------------------------
# Listing and cleaning (run.py shm ls / clean, controller start-up)
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentInfo:
    name: str            # file name in /dev/shm (without the leading '/')
    instance: str
    kind: str
    size: int
    creator_pid: int
    alive: bool          # the creator process (normally the controller) still runs

    def as_dict(self) -> dict:
        return dict(name=self.name, instance=self.instance, kind=self.kind, size=self.size,
                    creator_pid=self.creator_pid, alive=self.alive)


def _read_header(path: str) -> np.void | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(128)
    except OSError:
        return None
    if len(raw) < 128:
        return None
    h = np.frombuffer(raw, dtype=HEADER_DTYPE)[0]
    return h if h["magic"] == MAGIC else None


def list_segments(instance: str | None = None, shm_dir: str = "/dev/shm") -> list[SegmentInfo]:
    """Every hftfarm segment (and ring semaphore) in /dev/shm, optionally of one instance."""
    out = []
    try:
        names = sorted(os.listdir(shm_dir))
    except FileNotFoundError:
        return out
    for fname in names:
        base = fname[4:] if fname.startswith("sem.") else fname
        if not base.startswith(PREFIX + "."):
            continue
        parts = base.split(".", 2)
        if len(parts) < 3:
            continue
        inst = parts[1]
        if instance is not None and inst != instance:
            continue
        path = os.path.join(shm_dir, fname)
        try:
            size = os.stat(path).st_size
        except OSError:
            continue
        if fname.startswith("sem."):
            kind, pid = "semaphore", _owner_pid_of(shm_dir, inst)
        else:
            h = _read_header(path)
            if h is None:
                kind, pid = "unknown", 0
            else:
                kind = bytes(h["kind"]).rstrip(b"\0").decode(errors="replace")
                pid = int(h["creator_pid"])
        out.append(SegmentInfo(fname, inst, kind, size, pid, pid_alive(pid)))
    return out


def _owner_pid_of(shm_dir: str, instance: str) -> int:
    """A semaphore has no header: it belongs to the instance whose segments name a live pid."""
    for fname in os.listdir(shm_dir):
        if fname.startswith(f"{PREFIX}.{instance}."):
            h = _read_header(os.path.join(shm_dir, fname))
            if h is not None:
                return int(h["creator_pid"])
    return 0


def unlink_instance(instance: str, shm_dir: str = "/dev/shm") -> list[str]:
    """Remove every segment and semaphore of ``instance``; returns what was removed."""
    removed = []
    for info in list_segments(instance, shm_dir):
        if info.name.startswith("sem."):
            try:
                posix_ipc.unlink_semaphore("/" + info.name[4:])
                removed.append(info.name)
            except posix_ipc.ExistentialError:
                pass
        elif unlink_name("/" + info.name):
            removed.append(info.name)
    return removed


# ------------------------------------------------------------------------------------------
# The machine-wide claim on an instance name
# ------------------------------------------------------------------------------------------
# Segment names are global to the machine (/dev/shm), so the name itself is what a controller
# claims: an flock on /dev/shm/hftfarm-claim.<instance>, held for the controller's life (the
# kernel drops it when the process dies, however it dies). Same namespace as the segments: a
# container with a private /dev/shm has private names and private claims.
CLAIM_PREFIX = f"{PREFIX}-claim."


class InstanceClaimed(SegmentError):
    """Another live controller holds the instance name."""

    def __init__(self, instance: str, owner: dict):
        self.owner = owner
        super().__init__(
            f"instance name {instance!r} is in use on this machine by controller pid "
            f"{owner.get('pid', '?')} (run dir {owner.get('run_dir', '?')}, config "
            f"{owner.get('config', '?')}); stop it first, or give this config another "
            "[instance] name")


def claim_path(instance: str, shm_dir: str = "/dev/shm") -> str:
    segment_name(instance, "claim")   # validates the name
    return os.path.join(shm_dir, CLAIM_PREFIX + instance)


def _read_claim(fd: int) -> dict:
    import json

    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        return {}


def claim_instance(instance: str, owner: dict, shm_dir: str = "/dev/shm") -> int:
    """Take the machine-wide claim on ``instance`` (owner: pid, run_dir, config...); returns
    the fd that holds it. InstanceClaimed if a live controller holds it."""
    import fcntl
    import json

    import time

    path = claim_path(instance, shm_dir)
    busy = 0
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_claim(fd)
            os.close(fd)
            busy += 1
            if busy >= 3 or holder.get("pid"):   # (a bare shared lock is a claim_holder query)
                raise InstanceClaimed(instance, holder) from None
            time.sleep(0.05)
            continue
        try:   # the previous holder may have unlinked the file between our open and flock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), **owner}).encode())
        return fd
    raise SegmentError(f"could not claim instance name {instance!r}: {path} keeps changing")


def release_claim(fd: int, instance: str, shm_dir: str = "/dev/shm") -> None:
    """Drop the claim (unlink first, while still holding it, so nobody locks a dead file)."""
    try:
        os.unlink(claim_path(instance, shm_dir))
    except FileNotFoundError:
        pass
    os.close(fd)


def claim_holder(instance: str, shm_dir: str = "/dev/shm") -> dict | None:
    """The owner record of the live controller holding ``instance``, or None if nobody does."""
    import fcntl

    try:
        fd = os.open(claim_path(instance, shm_dir), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_claim(fd) or {"pid": "?"}
        return None
    finally:
        os.close(fd)
