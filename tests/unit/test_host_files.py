"""Host files follow the ownership rule (reconcile/host_plan.py): which files the operator may write,
and how its settings are merged into a file it adopts, against hostile inputs."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time

import pytest

from rbd_operator.reconcile import host_plan
from rbd_operator.reconcile.host_plan import ADOPTED_HEADER, OWNED_HEADER, HostStorage, Ownership, Settings

FSID = "7c9d8d1e-5a0b-4f5e-9c3d-2b1a0f9e8d7c"
UUID = "2f0e4c1a-9b8d-5e7f-8a6b-1c2d3e4f5a6b"
MONS = "[v2:10.0.0.1:3300,v1:10.0.0.1:6789]"


def cephx(seed: bytes) -> str:
    return base64.b64encode(b"\x01\x00" + b"\x00" * 8 + (16).to_bytes(2, "little") + seed * 16).decode()


KEY, OLD_KEY = cephx(b"k"), cephx(b"o")
STORAGE = HostStorage("vmmgr", FSID, (MONS,), "vmmgr", "vmmgr", UUID, KEY)
CONF_PATH, KEYRING_PATH = "/etc/ceph/ceph.conf", "/etc/ceph/ceph.client.vmmgr.keyring"
CONF = Settings("global", (("fsid", FSID), ("mon_host", MONS)), also_in=("client", "client."))
KEYRING = Settings("client.vmmgr", (("key", KEY),), indent="\t")

VMMGR_CONF = (b"# VMmanager's cluster\n[global]\nfsid = 11111111-2222-3333-4444-555555555555\n"
              b"mon host = 10.9.9.1,10.9.9.2\nauth_client_required = cephx\n\n[client]\nrbd cache = true\n")
VMMGR_KEYRING = (f"[client.vmmgr]\n\tkey = {OLD_KEY}\n\tcaps mon = \"allow r\"\n"
                 "\tcaps osd = \"allow class-read object_prefix rbd_children, allow rwx pool=vmmgr\"\n").encode()


def plan(current: dict, adopt: bool = False, recorded: set = frozenset()) -> host_plan.FilesPlan:
    return host_plan.plan_files(host_plan.storage_files([STORAGE]), current, adopt=adopt, recorded=set(recorded))


def merged(content: bytes, settings: Settings = CONF) -> str:
    return host_plan.merge_ini(content, settings).decode("utf-8", "surrogateescape")


# -- who may write what -------------------------------------------------------------------------------

def test_absent_files_are_created_with_the_header():
    p = plan({CONF_PATH: None, KEYRING_PATH: None})
    assert not p.refused
    conf, keyring = p.writes
    assert conf.content == f"{OWNED_HEADER}[global]\nfsid = {FSID}\nmon_host = {MONS}\n".encode()
    assert keyring.content == f"{OWNED_HEADER}[client.vmmgr]\n\tkey = {KEY}\n".encode() and keyring.mode == 0o600
    assert {s.how for s in p.writes} == {Ownership.ABSENT}


def test_own_files_are_kept_exact_and_unchanged_ones_not_rewritten():
    first = plan({CONF_PATH: None, KEYRING_PATH: None})
    current = {s.path: s.content for s in first.writes}
    assert plan(current).writes == []
    drifted = {**current, CONF_PATH: current[CONF_PATH] + b"debug_ms = 20\n"}  # edited under our header
    [step] = plan(drifted).writes
    assert step.path == CONF_PATH and step.content == current[CONF_PATH] and step.how is Ownership.OWNED


def test_a_foreign_file_refuses_the_whole_step_before_anything_is_written():
    # ceph.conf is someone else's, the keyring is absent: nothing at all may be written (no partial damage).
    p = plan({CONF_PATH: VMMGR_CONF, KEYRING_PATH: None})
    assert p.refused == [CONF_PATH] and p.writes == []
    p = plan({CONF_PATH: None, KEYRING_PATH: VMMGR_KEYRING})
    assert p.refused == [KEYRING_PATH] and p.writes == []
    assert plan({CONF_PATH: VMMGR_CONF, KEYRING_PATH: VMMGR_KEYRING}).refused == [CONF_PATH, KEYRING_PATH]


def test_adoption_merges_keeps_foreign_settings_and_marks_the_file():
    p = plan({CONF_PATH: VMMGR_CONF, KEYRING_PATH: VMMGR_KEYRING}, adopt=True)
    conf, keyring = (s.content.decode() for s in p.writes)
    assert {s.how for s in p.writes} == {Ownership.FOREIGN}
    assert conf == (f"{ADOPTED_HEADER}# VMmanager's cluster\n[global]\nfsid = {FSID}\nmon_host = {MONS}\n"
                    "auth_client_required = cephx\n\n[client]\nrbd cache = true\n")
    assert keyring == (f"{ADOPTED_HEADER}[client.vmmgr]\n\tkey = {KEY}\n\tcaps mon = \"allow r\"\n"
                       "\tcaps osd = \"allow class-read object_prefix rbd_children, allow rwx pool=vmmgr\"\n")
    # From then on the file is the operator's to maintain, without spec.adopt, and still merged.
    current = {s.path: s.content for s in p.writes}
    assert plan(current).writes == [] and not plan(current).refused
    rotated = HostStorage("vmmgr", FSID, (MONS,), "vmmgr", "vmmgr", UUID, cephx(b"n"))
    later = host_plan.plan_files(host_plan.storage_files([rotated]), current, adopt=False)
    [step] = later.writes
    assert step.how is Ownership.ADOPTED and cephx(b"n") in step.content.decode()
    assert 'caps mon = "allow r"' in step.content.decode() and step.content.startswith(ADOPTED_HEADER.encode())


def test_an_earlier_releases_keyring_is_ours_only_where_status_records_it():
    legacy = f"[client.vmmgr]\n\tkey = {OLD_KEY}\n".encode()  # also what `ceph auth get-or-create` prints
    assert plan({CONF_PATH: None, KEYRING_PATH: legacy}).refused == [KEYRING_PATH]
    p = plan({CONF_PATH: None, KEYRING_PATH: legacy}, recorded={KEYRING_PATH})
    assert not p.refused
    assert p.writes[1].how is Ownership.LEGACY and p.writes[1].content.startswith(OWNED_HEADER.encode())
    # Recorded, but with anything beyond the earlier release's exact shape: someone else's now.
    for other in (legacy + b"\tcaps mon = \"allow r\"\n", legacy.replace(b"vmmgr", b"other"),
                  b"# note\n" + legacy, legacy.replace(b"\n", b"\r\n")):
        assert plan({CONF_PATH: None, KEYRING_PATH: other}, recorded={KEYRING_PATH}).refused == [KEYRING_PATH]


def test_priorities_conf_follows_the_rule_and_an_earlier_releases_copy_is_upgraded():
    from rbd_operator.api.hypervisor import parse_host
    from test_hypervisor_plan import BASE

    spec = parse_host("h", {**BASE, "packages": {"repositories": [
        {"name": "ceph-qemu", "baseURL": "http://repo.example/rpm", "priority": 2, "trusted": True}]}})
    files = host_plan.repository_plan(spec, "rhel")
    path = "/etc/yum/pluginconf.d/priorities.conf"
    current = {f.path: None for f in files}
    assert host_plan.plan_files(files, {**current, path: b"[main]\nenabled = 1\n"}, adopt=False).refused == []
    site = b"[main]\nenabled = 0\ncheck_obsoletes = 1\n"
    assert host_plan.plan_files(files, {**current, path: site}, adopt=False).refused == [path]
    adopted = host_plan.plan_files(files, {**current, path: site}, adopt=True)
    [step] = [s for s in adopted.writes if s.path == path]
    assert step.content == ADOPTED_HEADER.encode() + b"[main]\nenabled = 1\ncheck_obsoletes = 1\n"
    # Repository files under the rbd-operator- prefix are the operator's by name, whatever they hold.
    repo = "/etc/yum.repos.d/rbd-operator-ceph-qemu.repo"
    assert host_plan.plan_files(files, {**current, repo: b"[other]\n"}, adopt=False).refused == []


def test_removal_only_of_what_the_operator_made():
    settings = host_plan.keyring_settings_for(KEYRING_PATH)
    own = f"{OWNED_HEADER}[client.vmmgr]\n\tkey = {KEY}\n".encode()
    assert host_plan.removable(own, settings, recorded=True)
    assert host_plan.removable(f"[client.vmmgr]\n\tkey = {KEY}\n".encode(), settings, recorded=True)
    assert not host_plan.removable(ADOPTED_HEADER.encode() + VMMGR_KEYRING, settings, recorded=True)
    assert not host_plan.removable(VMMGR_KEYRING, settings, recorded=True)
    assert not host_plan.removable(None, settings, recorded=True)
    for bad in ("/etc/ceph/ceph.client.x/../../passwd.keyring", "/etc/passwd", 7, None):
        assert host_plan.keyring_settings_for(bad) is None


# -- the merge, against hostile inputs --------------------------------------------------------------------

def test_every_spelling_of_a_managed_option_goes_and_only_there():
    text = (b"[global]\nmon_host = 1.1.1.1\nmon host = 2.2.2.2\nmon-host = 3.3.3.3\n  mon__host\t= 4.4.4.4 ; c\n"
            b"Mon_host = 5.5.5.5\nmon_host_extra = 6\nfsid=x\n[mon.a]\nmon_host = 7.7.7.7\n"
            b"[client]\nmon host = 8.8.8.8\nrbd cache = true\n[client.admin]\nfsid = y\n[clientx]\nfsid = z\n")
    out = merged(text)
    assert out == (f"[global]\nfsid = {FSID}\nmon_host = {MONS}\nMon_host = 5.5.5.5\nmon_host_extra = 6\n"
                   "[mon.a]\nmon_host = 7.7.7.7\n[client]\nrbd cache = true\n[client.admin]\n[clientx]\nfsid = z\n")


def test_global_twice_weird_headers_comments_and_continuations():
    text = (b"; top comment\n[global] # the first\nfsid = old\n# keep me\n[ global ]\nmon_host = not-global\n"
            b"[global];again\nmon_host = a \\\n  b \\\n  c\nafter = 1\n[global\nmon_host = broken-header\n")
    out = merged(text)
    assert out == ("; top comment\n[global] # the first\n"
                   f"fsid = {FSID}\nmon_host = {MONS}\n# keep me\n[ global ]\nmon_host = not-global\n"
                   "[global];again\nafter = 1\n[global\n")  # '[global' is no header: the line is in [global]


def test_crlf_no_trailing_newline_and_no_section_at_all():
    crlf = b"[global]\r\nfsid = old\r\nauth_supported = cephx\r\n"
    assert merged(crlf) == f"[global]\r\nfsid = {FSID}\r\nmon_host = {MONS}\r\nauth_supported = cephx\r\n"
    assert merged(b"[global]") == f"[global]\nfsid = {FSID}\nmon_host = {MONS}\n"
    assert merged(b"[client]\nrbd cache = true") == (f"[client]\nrbd cache = true\n[global]\nfsid = {FSID}\n"
                                                      f"mon_host = {MONS}\n")
    assert merged(b"") == f"[global]\nfsid = {FSID}\nmon_host = {MONS}\n"
    assert merged(b"[other]\r\nx = 1\r\n") == f"[other]\r\nx = 1\r\n[global]\r\nfsid = {FSID}\r\nmon_host = {MONS}\r\n"


def test_bytes_that_are_not_text_pass_through_and_merging_twice_changes_nothing():
    text = b"[global]\nname = \xff\xfe\x00odd\nfsid = old\n[client]\nx = \xe9\n"
    once = host_plan.merge_ini(text, CONF)
    assert b"name = \xff\xfe\x00odd\n" in once and b"x = \xe9\n" in once
    assert host_plan.merge_ini(once, CONF) == once
    for sample in (VMMGR_CONF, b"[global]", b"", b"[client]\nmon host = 1\n[global]\r\nfsid = 2\r\n"):
        first = host_plan.merge_ini(sample, CONF)
        assert host_plan.merge_ini(first, CONF) == first


def test_keyring_merge_keeps_other_entities_and_caps():
    text = (b"[client.admin]\n\tkey = ADMIN\n[client.vmmgr]\n\tkey = OLD\n\tcaps mon = \"allow r\"\n"
            b"[client.vmmgr]\n\tkey = LATER\n")
    out = merged(text, KEYRING)
    assert out == (f"[client.admin]\n\tkey = ADMIN\n[client.vmmgr]\n\tkey = {KEY}\n\tcaps mon = \"allow r\"\n"
                   "[client.vmmgr]\n")


def test_a_huge_file_is_merged_in_linear_time():
    sections = b"".join(b"[client.s%d]\nopt_%d = %d\nmon host = x\n" % (i, i, i) for i in range(60_000))
    text = b"[global]\n" + b"# filler\n" * 100_000 + sections  # ~3.5 MB
    start = time.process_time()
    out = host_plan.merge_ini(text, CONF)
    assert time.process_time() - start < 5
    assert out.count(b"mon host = x") == 0 and out.count(b"opt_59999 = 59999") == 1
    assert len(out) == len(text) - 60_000 * len(b"mon host = x\n") + len(f"fsid = {FSID}\nmon_host = {MONS}\n")


@pytest.mark.skipif(not shutil.which("ceph-conf"), reason="Ceph's own parser (ceph-conf) is not installed")
def test_ceph_reads_the_merged_file_with_the_operators_values(tmp_path):
    """Ceph's own parser (ceph-conf, as clients read ceph.conf) sees the operator's values after a merge."""
    hostile = (b"[global]\nmon_host = 1.1.1.1\n[global]\nmon host = 2.2.2.2\nfsid = 11111111-2222-3333-4444-555555555555"
               b"\n[client]\nmon_host = 3.3.3.3\n[client.vmmgr]\nmon-host = 4.4.4.4\n")
    conf = tmp_path / "ceph.conf"
    conf.write_bytes(ADOPTED_HEADER.encode() + host_plan.merge_ini(hostile, CONF))

    def value(option: str) -> str:
        return subprocess.run(["ceph-conf", "-c", str(conf), "-n", "client.vmmgr", "--show-config-value", option],
                              capture_output=True, text=True, check=True).stdout.strip()
    assert value("mon_host") == MONS and value("fsid") == FSID
