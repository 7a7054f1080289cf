"""HypervisorNode on real test hosts: netns + overlay rootfs + real sshd/libvirtd (hack/testhosts)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from . import cephcheck
from .harness import BRIDGE, HOST_PREFIX, NET, OPERATOR_NAMESPACE, ROOT, sh, wait_for
from .labhosts import LABEL, TESTHOST, LabHost, debian_packages, hypervisor, repo_url, ssh_secret
from .manifests import storage

def client_key(platform, storage_name: str) -> str:
    secret = platform.get("secret", f"{storage_name}-client", OPERATOR_NAMESPACE)
    return base64.b64decode(secret["data"]["userKey"]).decode()


def host_secret_value(host: LabHost, uuid: str) -> str:
    return host.exec(f"cat /etc/libvirt/secrets/{uuid}.base64 2>/dev/null || "
                     f"virsh -q -c qemu:///system secret-get-value {uuid}", check=False).strip()


def test_storage_reaches_two_debian_hosts_and_follows_key_rotation(platform, operator, ceph, hosts, uniq):
    h1, h2 = hosts["t-h1"], hosts["t-h2"]
    name = f"hv-{uniq}"
    platform.apply(storage(platform, name, client={"name": f"hv-{uniq}"}, deletionPolicy="Delete",
                           hypervisors={"nodeSelector": {"matchLabels": {LABEL: name}}}))
    platform.wait_condition("rbds", name, "True")
    for host in (h1, h2):
        platform.apply(hypervisor(host, {LABEL: name}, packages=debian_packages()))
    for host in (h1, h2):
        platform.wait_condition("hvn", host.name, "True", timeout=600)

    uuid = platform.get("rbds", name)["status"]["libvirtSecretUUID"]
    key = client_key(platform, name)
    for host in (h1, h2):
        status = platform.get("hvn", host.name)["status"]
        assert status["facts"]["osFamily"] == "debian" and status["facts"]["qemuRbd"] is True
        assert status["facts"]["librbdVersion"]
        assert status["hostKeyFingerprint"].startswith("ssh-ed25519 SHA256:")
        [entry] = status["storages"]
        assert entry["secretUUID"] == uuid and entry["probe"].startswith("ok"), entry
        assert host_secret_value(host, uuid) == key, "libvirt secret holds the client key"
        assert host.exec(f"stat -c %a {entry['keyringPath']}").strip() == "600"
        assert key in host.exec(f"cat {entry['keyringPath']}")
        assert "mon_host" in host.exec("cat /etc/ceph/ceph.conf")
        assert host.ok("test -e /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so"), "qemu-block-extra installed"
        assert host.ok("grep -q trusted=yes /etc/apt/sources.list.d/rbd-operator-local.list")
    wait_for(lambda: platform.get("rbds", name)["status"].get("hosts", {}).get("current") == 2, 60,
             what="storage status counts two current hosts")

    # Rotate the key: the client is recreated with a new key; every host follows.
    cephcheck.mon(ceph, "auth del", entity=f"client.hv-{uniq}")
    wait_for(lambda: client_key(platform, name) != key, 60, what="new key published")
    new_key = client_key(platform, name)
    for host in (h1, h2):
        wait_for(lambda: host_secret_value(host, uuid) == new_key, 90, what=f"new key on {host.name}")
    version = platform.get("secret", f"{name}-client", OPERATOR_NAMESPACE)["metadata"]["resourceVersion"]
    for host in (h1, h2):
        wait_for(lambda: platform.get("hvn", host.name)["status"]["storages"][0]["keyVersion"] == version, 90,
                 what=f"{host.name} reports the rotated key")
    wait_for(lambda: platform.get("rbds", name)["status"]["hosts"]["current"] == 2, 60,
             what="storage status counts both hosts current again")
    assert key not in operator.log_text() and new_key not in operator.log_text()

    # Rotation as a feature: raising spec.client.rotateKeyGeneration replaces the key in Ceph (same caps),
    # the Secret follows and the storage's change reaches both hosts without waiting for their resync.
    caps = cephcheck.caps(ceph, f"client.hv-{uniq}")
    platform.apply(storage(platform, name, client={"name": f"hv-{uniq}", "rotateKeyGeneration": 1},
                           deletionPolicy="Delete", hypervisors={"nodeSelector": {"matchLabels": {LABEL: name}}}))
    wait_for(lambda: client_key(platform, name) not in (key, new_key), 60, what="rotated key published")
    rotated = client_key(platform, name)
    assert cephcheck.key(ceph, f"client.hv-{uniq}") == rotated and cephcheck.caps(ceph, f"client.hv-{uniq}") == caps
    for host in (h1, h2):
        wait_for(lambda: host_secret_value(host, uuid) == rotated, 90, what=f"rotated key on {host.name}")
        assert rotated in host.exec(f"cat /etc/ceph/ceph.client.hv-{uniq}.keyring")
    wait_for(lambda: platform.get("rbds", name)["status"].get("keyGeneration") == 1, 30, what="generation recorded")
    wait_for(lambda: {"KeyRotated", "HostsCurrent"} <= {e["reason"] for e in platform.events(name)}, 90,
             what="rotation and rollout events")
    assert rotated not in operator.log_text()

    # A host that is no longer selected loses the keyring and the secret.
    platform.kubectl("label", "hvn", h2.name, f"{LABEL}-")
    wait_for(lambda: not h2.ok(f"test -e /etc/ceph/ceph.client.hv-{uniq}.keyring"), 90, what="keyring removed")
    assert uuid not in h2.exec("virsh -q -c qemu:///system secret-list")
    platform.delete("rbds", name)


def test_host_key_mismatch_executes_nothing(platform, operator, hosts):
    h1, h2 = hosts["t-h1"], hosts["t-h2"]
    body = hypervisor(h1, name="t-mismatch", hostKey=h2.host_key,
                      packages={"repositories": [{"name": "mismatch", "baseURL": repo_url("debian"), "trusted": True}]})
    platform.apply(body)
    try:
        cond = platform.wait_condition("hvn", "t-mismatch", "False", "HostKeyMismatch")
        assert "nothing was executed" in cond["message"]
        assert platform.condition("hvn", "t-mismatch", "HostKeyVerified")["status"] == "False"
        assert not h1.ok("test -e /etc/apt/sources.list.d/rbd-operator-mismatch.list")
        assert any(e["reason"] == "HostKeyMismatch" for e in platform.events("t-mismatch"))
    finally:
        platform.delete("hvn", "t-mismatch", wait=True)


def test_running_domain_blocks_disruptive_removal(platform, operator, hosts):
    h2 = hosts["t-h2"]
    h2.exec("virsh -q -c qemu:///system define /dev/stdin >/dev/null <<'EOF'\n"
            + (ROOT / "hack" / "testhosts" / "tiny-domain.xml").read_text() + "\nEOF\n"
            "virsh -q -c qemu:///system start tiny >/dev/null")
    try:
        platform.apply(hypervisor(h2, packages=debian_packages(remove=["qemu-system-x86"])))
        cond = platform.wait_condition("hvn", h2.name, "True", "RunningDomains", type_="DisruptionBlocked",
                                       timeout=180)
        assert "allowDisruption" in cond["message"]
        assert platform.condition("hvn", h2.name)["status"] == "False"
        assert h2.ok("dpkg -s qemu-system-x86 >/dev/null"), "qemu must stay while a VM runs"
        assert "tiny" in h2.exec("virsh -q -c qemu:///system list --state-running --name")
    finally:
        platform.apply(hypervisor(h2, packages=debian_packages()))
        h2.exec("virsh -q -c qemu:///system destroy tiny; virsh -q -c qemu:///system undefine tiny", check=False)


def test_rpm_host_converges_through_dnf_and_restores_rpmsave(platform, operator, hosts):
    r1 = hosts["t-r1"]
    r1.exec("echo '# site setting kept across the qemu swap' >> /etc/libvirt/libvirtd.conf")
    body = hypervisor(r1, hostKeyPolicy="TrustOnFirstUse", packages={
        "profile": "none",
        "repositories": [{"name": "ceph-qemu", "baseURL": repo_url("rpm"), "trusted": True, "priority": 2}],
        "remove": ["qemu-kvm", "qemu-img"],
        "install": ["qemu-kvm-rhev", "qemu-img-rhev"],
    })
    del body["spec"]["hostKey"]
    platform.apply(body)
    platform.wait_condition("hvn", r1.name, "True", timeout=600)
    status = platform.get("hvn", r1.name)["status"]
    assert status["facts"]["osFamily"] == "rhel"
    assert status["pinnedHostKey"] == r1.host_key, "TrustOnFirstUse pins the first key seen"
    assert platform.condition("hvn", r1.name, "HostKeyVerified")["reason"] == "TrustedOnFirstUse"
    assert r1.ok("rpm -q qemu-kvm-rhev qemu-img-rhev libvirt")
    assert not r1.ok("rpm -q qemu-kvm") and not r1.ok("rpm -q qemu-img")
    assert "site setting kept" in r1.exec("cat /etc/libvirt/libvirtd.conf"), "libvirtd.conf restored from .rpmsave"
    assert r1.ok("test -e /etc/libvirt/libvirtd.conf.rpmsave.restored")
    assert "priority=2" in r1.exec("cat /etc/yum.repos.d/rbd-operator-ceph-qemu.repo")
    assert "enabled = 1" in r1.exec("cat /etc/yum/pluginconf.d/priorities.conf")
    reasons = {e["reason"] for e in platform.events(r1.name)}
    assert {"PackagesRemoved", "PackagesInstalled", "ConfigRestored", "HostKeyPinned"} <= reasons


def test_shell_injection_is_rejected_or_inert(platform, operator, hosts):
    h1 = hosts["t-h1"]
    for bad in ({"packages": {"install": ["qemu;touch /tmp/pwned"]}},
                {"packages": {"repositories": [{"name": "x;touch /tmp/pwned", "baseURL": "http://a/"}]}},
                {"address": f"{NET}.11;touch /tmp/pwned"}, {"user": "root$(touch /tmp/pwned)"}):
        result = platform.apply(hypervisor(h1, name="t-inject", **bad), check=False)
        assert result.returncode != 0 and "spec." in result.stderr, result.stderr
    # A URL the schema allows but a shell would expand: it lands only in a file, never in a command.
    url = repo_url("debian") + "/$(touch$IFS/tmp/pwned)"
    platform.apply(hypervisor(h1, {}, packages={"repositories": [{"name": "local", "baseURL": url, "trusted": True}]}))
    try:
        platform.wait_condition("hvn", h1.name, "False", "RepositoryUnreachable", type_="PackagesReady", timeout=180)
        assert not h1.ok("test -e /tmp/pwned") and not Path("/tmp/pwned").exists()
    finally:
        platform.apply(hypervisor(h1, {}, packages=debian_packages()))


def test_unreachable_host_and_missing_package_are_reported(platform, operator, hosts):
    h1 = hosts["t-h1"]
    ghost = LabHost(f"{HOST_PREFIX}ghost", f"{NET}.99", "debian")  # nothing listens there
    body = hypervisor(h1, name="t-ghost")
    body["spec"]["address"] = ghost.address
    platform.apply(body)
    try:
        cond = platform.wait_condition("hvn", "t-ghost", "False", "HostUnreachable", timeout=120)
        assert f"{NET}.99" in cond["message"]
        assert platform.condition("hvn", "t-ghost", "Reachable")["status"] == "False"
    finally:
        platform.delete("hvn", "t-ghost")

    platform.apply(hypervisor(h1, {}, packages=debian_packages(install=["no-such-package-rbdop"])))
    try:
        cond = platform.wait_condition("hvn", h1.name, "False", "PackageNotFound", type_="PackagesReady",
                                       timeout=180)
        assert "no-such-package-rbdop" in cond["message"]
        assert platform.condition("hvn", h1.name)["status"] == "False"
        assert any(e["reason"] == "PackageNotFound" and e["type"] == "Warning" for e in platform.events(h1.name))
    finally:
        platform.apply(hypervisor(h1, {}, packages=debian_packages()))


def test_trust_on_first_use_pins_before_sending_anything_and_never_silently_repins(platform, operator, hosts):
    h2 = hosts["t-h2"]
    # A user name of its own: any authentication attempt would show up in the host's sshd log.
    body = hypervisor(h2, name="t-tofu", user="tofuprobe", hostKeyPolicy="TrustOnFirstUse",
                      sshKeySecretRef={"name": "no-such-key"}, packages={"profile": "none"})
    del body["spec"]["hostKey"]
    platform.apply(body)
    try:
        # First contact pins; the pass after it fails on the missing key Secret, before connecting.
        platform.wait_condition("hvn", "t-tofu", "False", "AuthenticationFailed", timeout=60)
        obj = platform.get("hvn", "t-tofu")
        assert obj["status"]["pinnedHostKey"] == h2.host_key
        assert obj["metadata"]["annotations"]["rbd-operator.io/pinned-host-key"].startswith("ssh-ed25519 SHA256:")
        assert "HostKeyPinned" in {e["reason"] for e in platform.events("t-tofu")}
        assert "tofuprobe" not in h2.exec("cat /var/log/sshd.log"), "first contact authenticated or sent something"

        # The pin vanishes from the status: refused and reported, never trusted again silently.
        platform.kubectl("patch", "hvn", "t-tofu", "--subresource=status", "--type=json",
                         "-p", '[{"op": "remove", "path": "/status/pinnedHostKey"}]')
        cond = platform.wait_condition("hvn", "t-tofu", "False", "HostKeyPinLost", timeout=60)
        assert "spec.hostKey" in cond["message"]
        assert any(e["reason"] == "HostKeyPinLost" and e["type"] == "Warning" for e in platform.events("t-tofu"))
        assert "pinnedHostKey" not in platform.get("hvn", "t-tofu")["status"]
    finally:
        platform.delete("hvn", "t-tofu", wait=True)


def test_values_read_back_from_status_are_validated_before_use(platform, operator, hosts):
    h1 = hosts["t-h1"]
    platform.apply(hypervisor(h1, {}, packages=debian_packages()))
    platform.wait_condition("hvn", h1.name, "True", timeout=300)
    bogus = {"name": "ghost", "keyringPath": "/etc/ceph/ceph.client.x/../../hostname",
             "secretUUID": "00000000-0000-0000-0000-000000000000", "deletionPolicy": "Delete"}
    platform.kubectl("patch", "hvn", h1.name, "--subresource=status", "--type=json",
                     "-p", json.dumps([{"op": "add", "path": "/status/storages/-", "value": bogus}]))
    wait_for(lambda: any(e["reason"] == "UnsafeValue" and "keyringPath" in e["message"]
                         for e in platform.events(h1.name)), 60, what="the bogus entry reported")
    assert h1.ok("test -s /etc/hostname"), "a path read back from status reached the host"
    wait_for(lambda: all(s.get("name") != "ghost" for s in platform.get("hvn", h1.name)["status"]["storages"]), 60,
             what="the bogus entry dropped")


def test_hosts_keep_keys_while_the_storage_exists_and_delete_policy_cleans_the_host(platform, operator, ceph,
                                                                                      hosts, uniq):
    h1 = hosts["t-h1"]
    blocked, kept = f"blk-{uniq}", f"kept-{uniq}"
    labels = {LABEL: f"keep-{uniq}"}
    for name, policy in ((blocked, "Delete"), (kept, "Retain")):
        platform.apply(storage(platform, name, client={"name": name}, deletionPolicy=policy,
                               hypervisors={"nodeSelector": {"matchLabels": labels}}))
        platform.wait_condition("rbds", name, "True")
    platform.apply(hypervisor(h1, labels, packages=debian_packages(), deletionPolicy="Delete"))
    keyring = {n: f"/etc/ceph/ceph.client.{n}.keyring" for n in (blocked, kept)}
    uuids = {n: platform.get("rbds", n)["status"]["libvirtSecretUUID"] for n in (blocked, kept)}
    for name in (blocked, kept):
        wait_for(lambda: h1.ok(f"test -e {keyring[name]}"), 300, what=f"{name}'s keyring on the host")
    key = client_key(platform, blocked)

    # The Delete storage's deletion is blocked by a hand-made image: its key stays on the host.
    platform.rbd_cli("create", "--size", "8", f"{blocked}/leftover")
    platform.delete("rbds", blocked)
    platform.wait_condition("rbds", blocked, "False", "PoolNotEmpty")
    time.sleep(12)  # two resyncs of the host
    assert h1.ok(f"test -e {keyring[blocked]}") and host_secret_value(h1, uuids[blocked]) == key

    # Retain: the storage object goes, its pool and client stay in Ceph, and its key on the host.
    platform.delete("rbds", kept, wait=True)
    wait_for(lambda: any(s["name"] == kept and s.get("retained") for s in
                         platform.get("hvn", h1.name)["status"]["storages"]), 60, what="entry marked retained")
    assert h1.ok(f"test -e {keyring[kept]}") and uuids[kept] in h1.exec("virsh -q -c qemu:///system secret-list")

    # The blocked deletion completes (pool and client gone from Ceph): then the key leaves the host.
    platform.rbd_cli("rm", f"{blocked}/leftover")
    wait_for(lambda: platform.get("rbds", blocked) is None, 120, what="storage deleted once empty")
    wait_for(lambda: not h1.ok(f"test -e {keyring[blocked]}"), 60, what="keyring of the deleted storage removed")
    assert uuids[blocked] not in h1.exec("virsh -q -c qemu:///system secret-list")
    assert h1.ok(f"test -e {keyring[kept]}")

    # deletionPolicy Delete on the HypervisorNode: what the operator wrote leaves the host first.
    platform.delete("hvn", h1.name, wait=True)
    assert not h1.ok(f"test -e {keyring[kept]}")
    assert uuids[kept] not in h1.exec("virsh -q -c qemu:///system secret-list")
    assert not h1.ok("ls /etc/apt/sources.list.d/rbd-operator-* >/dev/null 2>&1")
    assert not h1.ok("test -e /etc/ceph/ceph.conf")
    assert "HostCleaned" in {e["reason"] for e in platform.events(h1.name)}
