"""qemu-img as a bounded child process: `info` and `convert` between RBD images through its rbd block driver.

The child gets limits set before exec (address space, CPU time, open files, no core dump), its own process
group (killed whole on a deadline or when the handler gives up), a minimal environment and an argv without
secrets: the cephx key is in a 0600 file of a private 0700 directory, read by qemu's secret object, and the
monitors are in a ceph.conf next to it; both are removed when the call ends.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..api.errors import OperatorError
from ..api.reasons import Reason
from ..reconcile import image_formats as fmt
from .blocking import cancelled

QEMU_IMG = os.environ.get("RBD_OPERATOR_QEMU_IMG", "/usr/bin/qemu-img")
STDERR_MOST = 64 * 1024
# Ceph-side failures (retried), told apart from a malformed image (permanent) by qemu's rbd driver's words.
_CEPH_SIDE = ("error connecting", "error opening pool", "error reading conf", "error while writing",
              "Connection timed out", "error opening image", "Permission denied")


class QemuImgFailed(OperatorError):
    """InvalidImage (the template), or a Ceph-side failure (retried)."""


@dataclass(frozen=True)
class Cluster:
    """How the child reaches Ceph: the operator's credentials for the storage (the key never leaves files)."""
    monitors: tuple[str, ...]
    user: str
    key: str = field(repr=False)
    conf: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Access:
    """The paths of one call's private files."""
    conf: str
    key_file: str


@contextlib.contextmanager
def access(cluster: Cluster) -> Iterator[Access]:
    """A private 0700 directory holding ceph.conf (monitors) and the key (0600), removed afterwards."""
    if not all(c.isalnum() or c in "+/=" for c in cluster.key) or not cluster.key:
        raise QemuImgFailed(Reason.AUTH_FAILED, "the storage's cephx key is not base64; qemu-img was not started",
                            retry=False)
    conf_text = fmt.ceph_conf(cluster.monitors, dict(cluster.conf))
    directory = tempfile.mkdtemp(prefix="rbdop-qemu-")  # 0700
    try:
        paths = Access(os.path.join(directory, "ceph.conf"), os.path.join(directory, "key"))
        for path, text in ((paths.conf, conf_text), (paths.key_file, cluster.key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
        yield paths
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _limits(cpu: int) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec: only system calls
        resource.setrlimit(resource.RLIMIT_AS, (fmt.ADDRESS_SPACE, fmt.ADDRESS_SPACE))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        resource.setrlimit(resource.RLIMIT_NOFILE, (fmt.OPEN_FILES, fmt.OPEN_FILES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "MALLOC_ARENA_MAX": str(fmt.MALLOC_ARENAS)}


def run(argv: list[str], what: str, *, cpu: int, deadline: float, ok: tuple[int, ...] = (0,),
        on_output: Callable[[bytes], None] | None = None) -> tuple[int, bytes]:
    """Run qemu-img; return its exit status (one of `ok`) and stdout. Killed (its whole group) at `deadline` (time.monotonic) or when the
    handler gives up; a failure raises QemuImgFailed classified from its stderr."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=ENV, close_fds=True, start_new_session=True, preexec_fn=_limits(cpu))
    out, err, stopped = bytearray(), bytearray(), ""
    try:
        streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
        while streams:
            if cancelled():
                stopped = "its handler gave up waiting"
            elif time.monotonic() > deadline:
                stopped = "the import's deadline passed"
            if stopped:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            ready, _, _ = select.select(list(streams), [], [], 0.5)
            for fd in ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    del streams[fd]
                    continue
                buf = streams[fd]
                buf += chunk
                if fd == proc.stdout.fileno() and on_output is not None:
                    on_output(chunk)
                if len(buf) > STDERR_MOST:  # the progress lines and messages: keep the tail
                    del buf[:len(buf) - STDERR_MOST]
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    if stopped:
        raise QemuImgFailed(Reason.TIMEOUT, f"{what} was stopped: {stopped}")
    if rc not in ok:
        raise _failure(rc, bytes(err), what)
    return rc, bytes(out)


def _failure(rc: int, stderr: bytes, what: str) -> QemuImgFailed:
    message = fmt.summary(stderr)
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        return QemuImgFailed(Reason.INVALID_IMAGE, f"{what}: qemu-img ended by {name} (the template needs more than "
                             f"the conversion's limits: {fmt.ADDRESS_SPACE // 2**20} MiB of address space, CPU "
                             f"time); {message}", retry=False)
    if any(word in message for word in _CEPH_SIDE):
        return QemuImgFailed(Reason.CEPH_UNREACHABLE, f"{what}: {message}")
    return QemuImgFailed(Reason.INVALID_IMAGE, f"{what}: {message}", retry=False)
