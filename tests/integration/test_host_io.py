"""What the operator sends to and takes from a host over SSH, against a real test host (hack/testhosts):
temporary files are 0600 from their creation on, and a host cannot make the operator read without bound
(adapters/ssh.py). Then the same through the operator process: a hostile host ends in CommandFailed and
the operator's memory stays flat."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from rbd_operator.adapters import ssh
from rbd_operator.api.hypervisor import parse_host_key

from .harness import WORK, wait_for
from .labhosts import LABEL, LabHost, debian_packages, hypervisor
from .manifests import storage

GiB = 1 << 30
MiB = 1 << 20


def session(host: LabHost) -> ssh.SshSession:
    return ssh.SshSession(host.address, 22, "root", (host.run_dir / "id_ed25519").read_text(),
                          parse_host_key(host.host_key))


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    """VmHWM starts again from the current RSS (Linux >= 4.0: clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def test_temporary_file_is_0600_before_its_first_byte_and_created_exclusively(hosts):
    h = hosts["t-h1"]
    d = "/etc/ceph"
    h.exec(f"mkdir -p {d}; rm -f {d}/io-*")
    with session(h) as s:
        # The creation alone: the file exists, empty, with mode 0600, before anything is written.
        fh = s.create_exclusive(f"{d}/io-new", 0o600)
        try:
            assert h.exec(f"stat -c '%a %s %U' {d}/io-new").split() == ["600", "0", "root"]
        finally:
            fh.write(b"payload")
            fh.close()
        assert h.exec(f"cat {d}/io-new") == "payload"
        # Exclusive: an existing file or a symlink at the path is never reused or followed.
        h.exec(f"echo victim > {d}/io-victim; ln -s {d}/io-victim {d}/io-link")
        for taken in ("io-new", "io-link"):
            with pytest.raises(ssh.SshError) as err:
                s.create_exclusive(f"{d}/{taken}", 0o600)
            assert err.value.reason == "CommandFailed"
        assert h.exec(f"cat {d}/io-victim") == "victim\n"

        # write(): a stale, world-readable temporary file left by an interrupted write is replaced, and
        # every state the file passes through while 3 MiB are written is observed 0600 on the host.
        target = f"{d}/io-target"
        tmp = f"{target}.rbd-operator.tmp"
        h.exec(f"echo stale > {tmp}; chmod 0644 {tmp}; : > /tmp/io-modes")
        watch = threading.Thread(target=h.exec, args=(
            f"end=$(($(date +%s) + 20)); while [ ! -e {target} ] && [ $(date +%s) -lt $end ]; do "
            f"stat -c '%a %s' {tmp} >> /tmp/io-modes 2>/dev/null; done; true",), daemon=True)
        watch.start()
        wait_for(lambda: h.exec("wc -l < /tmp/io-modes").strip() != "0", 10, what="the watcher runs")
        data = bytes(range(256)) * (3 * MiB // 256)
        s.write(target, data, 0o600)
        watch.join(30)
        assert h.exec(f"stat -c '%a %s' {target}").split() == ["600", str(len(data))]
        assert not h.ok(f"test -e {tmp}")
        seen = [line.split() for line in h.exec("cat /tmp/io-modes").splitlines()]
        ours = [(mode, size) for mode, size in seen if size != "6"]  # "stale\n" is 6 bytes, mode 644
        assert ours, f"the temporary file was never observed: {seen[:5]}"
        assert all(mode == "600" for mode, _ in ours), f"the temporary file was seen with another mode: {ours}"
        print(f"temporary file observed {len(ours)} times while written, sizes "
              f"{min(int(s_) for _, s_ in ours)}..{max(int(s_) for _, s_ in ours)}, all 0600")
    h.exec(f"rm -f {d}/io-* /tmp/io-modes")


def test_output_and_file_reads_are_bounded(hosts):
    """1 GiB of stdout, of stderr, a 1 GiB file and a file that says it is empty but never ends (a symlink to
    /dev/zero: its size is 0, so only the bound while reading stops it): each ends in CommandFailed after at
    most OUTPUT_LIMIT bytes, and this process's memory does not grow with what the host sends."""
    import os
    h = hosts["t-h1"]
    pid = os.getpid()
    h.exec("rm -f /tmp/io-big /tmp/io-zero; truncate -s 1G /tmp/io-big; ln -s /dev/zero /tmp/io-zero")
    with session(h) as s:
        before = rss_kib(pid)
        reset_peak(pid)
        timings = {}
        for what, call in (
                ("stdout", lambda: s.run(["sh", "-c", "head -c 1073741824 /dev/zero"], timeout=120)),
                ("stderr", lambda: s.run(["sh", "-c", "head -c 1073741824 /dev/zero >&2"], timeout=120)),
                ("1 GiB file", lambda: s.read("/tmp/io-big")),
                ("endless file", lambda: s.read("/tmp/io-zero"))):
            start = time.monotonic()
            with pytest.raises(ssh.SshError) as err:
                call()
            timings[what] = round(time.monotonic() - start, 2)
            assert err.value.reason == "CommandFailed" and "output too large" in err.value.message, err.value
        peak = rss_kib(pid, "VmHWM")
        # The session still works afterwards, and ordinary output is whole.
        assert s.run(["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x"]).out == "x" * 3_000_000
        assert s.read("/etc/hostname") == (h.name + "\n").encode()
    h.exec("rm -f /tmp/io-big /tmp/io-zero")
    growth = (peak - before) / 1024
    print(f"bounded reads: {timings} s; RSS {before / 1024:.1f} MiB before, peak {peak / 1024:.1f} MiB "
          f"(+{growth:.1f} MiB) for 3 GiB offered")
    assert growth < 64, f"memory grew by {growth:.1f} MiB"


def test_output_is_whole_when_the_exit_status_comes_first(hosts):
    """sshd sends a command's exit status as soon as it reaps the command, possibly before the rest of its
    output (OpenSSH session.c: "there could be some more data waiting in the pipe"): a result is complete
    only at the channel's EOF. Deterministically here: the command exits at once while a process it left
    still holds its stdout and writes the line that matters (as the facts script's last line says whether
    the rbd CLI is installed)."""
    h = hosts["t-h1"]
    with session(h) as s:
        for _ in range(3):
            result = s.run(["sh", "-c", "(sleep 0.5; echo rbdCli=true) & echo first"])
            assert (result.rc, result.out) == (0, "first\nrbdCli=true\n")
        # Something left running that keeps stdout open for long does not hold the call beyond EXIT_GRACE.
        start = time.monotonic()
        result = s.run(["sh", "-c", "(sleep 30; echo late) & echo first"])
        assert (result.rc, result.out) == (0, "first\n") and time.monotonic() - start < ssh.EXIT_GRACE + 3


def test_a_hostile_host_ends_in_command_failed_and_operator_memory_stays_flat(platform, operator, ceph, hosts, uniq):
    """A host whose virsh prints 1 GiB (the facts script runs it), then a 1 GiB /etc/ceph/ceph.conf, then one
    that never ends: the HypervisorNode reports CommandFailed, and the operator process's RSS grows far less."""
    h = hosts["t-h2"]
    pid = operator.proc.pid
    name = f"hostile-{uniq}"
    labels = {LABEL: name}
    measured = {}
    h.exec("cp -p /usr/bin/virsh /usr/bin/virsh.real && printf '#!/bin/sh\\nhead -c 1073741824 /dev/zero | "
           "tr \"\\\\0\" 9\\n' > /usr/bin/virsh && chmod 0755 /usr/bin/virsh")
    try:
        platform.apply(hypervisor(h, labels, packages=debian_packages()))
        time.sleep(1)
        before = rss_kib(pid)
        reset_peak(pid)
        start = time.monotonic()
        cond = platform.wait_condition("hvn", h.name, "False", "CommandFailed", timeout=180)
        measured["virsh"] = {"s": round(time.monotonic() - start, 1), "rss_before_mib": round(before / 1024, 1),
                             "peak_mib": round(rss_kib(pid, "VmHWM") / 1024, 1)}
        assert "output too large" in cond["message"], cond
    finally:
        h.exec("mv -f /usr/bin/virsh.real /usr/bin/virsh")

    platform.apply(storage(platform, name, client={"name": name}, deletionPolicy="Delete",
                           hypervisors={"nodeSelector": {"matchLabels": labels}}))
    platform.wait_condition("rbds", name, "True")
    platform.wait_condition("hvn", h.name, "True", timeout=600)  # a sane host converges again
    h.exec("cp -p /etc/ceph/ceph.conf /tmp/ceph.conf.kept && truncate -s 1G /etc/ceph/ceph.conf")
    try:
        before = rss_kib(pid)
        reset_peak(pid)
        start = time.monotonic()
        cond = platform.wait_condition("hvn", h.name, "False", "CommandFailed", timeout=180)
        measured["ceph.conf"] = {"s": round(time.monotonic() - start, 1), "rss_before_mib": round(before / 1024, 1),
                                 "peak_mib": round(rss_kib(pid, "VmHWM") / 1024, 1)}
        assert "/etc/ceph/ceph.conf" in cond["message"] and "output too large" in cond["message"], cond
        assert h.exec("stat -c %s /etc/ceph/ceph.conf").strip() == str(GiB), "the file was written over"
    finally:
        h.exec("mv -f /tmp/ceph.conf.kept /etc/ceph/ceph.conf")
    platform.wait_condition("hvn", h.name, "True", timeout=120)
    # A ceph.conf that claims to be empty and never ends (a symlink to /dev/zero): the bound while reading.
    h.exec("mv /etc/ceph/ceph.conf /tmp/ceph.conf.kept && ln -s /dev/zero /etc/ceph/ceph.conf")
    try:
        before = rss_kib(pid)
        reset_peak(pid)
        start = time.monotonic()
        cond = platform.wait_condition("hvn", h.name, "False", "CommandFailed", timeout=180)
        measured["endless ceph.conf"] = {"s": round(time.monotonic() - start, 1),
                                         "rss_before_mib": round(before / 1024, 1),
                                         "peak_mib": round(rss_kib(pid, "VmHWM") / 1024, 1)}
        assert "/etc/ceph/ceph.conf" in cond["message"] and "output too large" in cond["message"], cond
        assert h.ok("test -L /etc/ceph/ceph.conf"), "the symlink was written over"
    finally:
        h.exec("rm -f /etc/ceph/ceph.conf && mv -f /tmp/ceph.conf.kept /etc/ceph/ceph.conf")
    platform.wait_condition("hvn", h.name, "True", timeout=120)
    platform.delete("rbds", name)
    for what, m in measured.items():
        m["growth_mib"] = round(m["peak_mib"] - m["rss_before_mib"], 1)
        assert m["growth_mib"] < 64, f"{what}: operator RSS grew by {m['growth_mib']} MiB"
    print(f"hostile host: {measured}")
    (WORK / "hostile-host.json").write_text(json.dumps(measured, indent=1) + "\n")
