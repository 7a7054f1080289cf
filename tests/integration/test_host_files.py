"""Host files follow the ownership rule, on a VMmanager-style test host: its own /etc/ceph/ceph.conf (with
settings of its own) and ceph.client.vmmgr.keyring stay byte for byte until the HypervisorNode adopts
host files (spec.adopt); then the operator's settings apply and the foreign ones are kept, also through
deletionPolicy Delete."""

from __future__ import annotations

import base64
import hashlib
import os
import time

from .harness import OPERATOR_NAMESPACE, wait_for
from .labhosts import LABEL, LabHost, debian_packages, hypervisor
from .manifests import storage

CONF, KEYRING = "/etc/ceph/ceph.conf", "/etc/ceph/ceph.client.vmmgr.keyring"
ADOPTED = "# written by rbd-operator (adopted: the settings it does not manage are kept)"
VMMGR_CONF = """# VMmanager: cluster of the first monitor
[global]
fsid = 11111111-2222-3333-4444-555555555555
mon host = 10.9.9.1,10.9.9.2
auth_client_required = cephx
rbd default features = 3

[client]
rbd cache = true
rbd_cache_writethrough_until_flush = true
"""


def sha256(host: LabHost, path: str) -> str:
    return host.exec(f"sha256sum {path}").split()[0]


def stat(host: LabHost, path: str) -> str:
    return host.exec(f"stat -c '%a %U' {path}").strip()


def cephx_key() -> str:
    return base64.b64encode(b"\x01\x00" + os.urandom(8) + (16).to_bytes(2, "little") + os.urandom(16)).decode()


def client_key(platform, storage_name: str) -> str:
    secret = platform.get("secret", f"{storage_name}-client", OPERATOR_NAMESPACE)
    return base64.b64decode(secret["data"]["userKey"]).decode()


def test_vmmanager_host_files_stay_until_adopted_then_merged_and_kept(platform, operator, ceph, hosts, uniq):
    h = hosts["t-h2"]
    name = f"vmmgr-{uniq}"
    labels = {LABEL: name}
    own_key = cephx_key()  # VMmanager's keyring holds a key of its own (not the one Ceph will give the storage)
    vmmgr_keyring = (f"[client.vmmgr]\n\tkey = {own_key}\n\tcaps mon = \"allow r\"\n"
                     "\tcaps osd = \"allow class-read object_prefix rbd_children, allow rwx pool=vmmgr\"\n")
    h.exec(f"mkdir -p /etc/ceph && rm -f {CONF} && printf '%s' '{vmmgr_keyring}' > {KEYRING} && chmod 0640 {KEYRING}")
    platform.apply(storage(platform, name, client={"name": "vmmgr"}, deletionPolicy="Delete",
                           hypervisors={"nodeSelector": {"matchLabels": labels}}))
    platform.wait_condition("rbds", name, "True")
    uuid = platform.get("rbds", name)["status"]["libvirtSecretUUID"]
    try:
        # 1. Only the keyring is someone else's, ceph.conf is absent: nothing of the step is written, not even
        #    the absent ceph.conf (every file is judged before any is written), no libvirt secret either.
        keyring_sum = sha256(h, KEYRING)
        platform.apply(hypervisor(h, labels, packages=debian_packages(), deletionPolicy="Delete"))
        cond = platform.wait_condition("hvn", h.name, "False", "HostFileNotOwned", timeout=600)
        assert KEYRING in cond["message"] and "spec.adopt" in cond["message"] and CONF not in cond["message"]
        assert platform.condition("hvn", h.name, "CephConfigured")["reason"] == "HostFileNotOwned"
        assert not h.ok(f"test -e {CONF}"), "ceph.conf was written although the step was refused"

        # 2. VMmanager's ceph.conf too: both are named, both stay byte for byte through several resyncs.
        h.exec(f"cat > {CONF} <<'EOF'\n{VMMGR_CONF}EOF")
        conf_sum = sha256(h, CONF)
        wait_for(lambda: CONF in platform.condition("hvn", h.name, "CephConfigured")["message"], 60,
                 what="ceph.conf named too")
        time.sleep(12)  # two more resyncs (5 s)
        cond = platform.condition("hvn", h.name)
        assert cond["status"] == "False" and cond["reason"] == "HostFileNotOwned"
        assert CONF in cond["message"] and KEYRING in cond["message"]
        assert (sha256(h, CONF), sha256(h, KEYRING)) == (conf_sum, keyring_sum)
        assert stat(h, KEYRING) == "640 root"
        assert uuid not in h.exec("virsh -q -c qemu:///system secret-list")
        assert not any(s.get("name") == name for s in platform.get("hvn", h.name)["status"].get("storages") or [])
        assert any(e["reason"] == "HostFileNotOwned" and e["type"] == "Warning" for e in platform.events(h.name))

        # 3. spec.adopt: the operator's settings apply (the probe as client.vmmgr works), the rest is kept.
        platform.apply(hypervisor(h, labels, packages=debian_packages(), deletionPolicy="Delete", adopt=True))
        platform.wait_condition("hvn", h.name, "True", timeout=300)
        status = platform.get("hvn", h.name)["status"]
        [entry] = [s for s in status["storages"] if s["name"] == name]
        assert entry["probe"].startswith("ok"), entry
        fsid = platform.get("rbds", name)["status"]["fsid"]
        conf = h.exec(f"cat {CONF}")
        assert conf.startswith(ADOPTED + "\n# VMmanager: cluster of the first monitor\n[global]\n"), conf
        assert f"\nfsid = {fsid}\n" in conf and "\nmon_host = [v2:" in conf
        assert "11111111-2222" not in conf and "10.9.9.1" not in conf
        for kept in ("auth_client_required = cephx", "rbd default features = 3", "[client]", "rbd cache = true",
                     "rbd_cache_writethrough_until_flush = true"):
            assert f"\n{kept}\n" in conf, f"{kept!r} lost:\n{conf}"
        keyring = h.exec(f"cat {KEYRING}")
        key = client_key(platform, name)
        assert keyring == (f"{ADOPTED}\n[client.vmmgr]\n\tkey = {key}\n\tcaps mon = \"allow r\"\n"
                           "\tcaps osd = \"allow class-read object_prefix rbd_children, allow rwx pool=vmmgr\"\n")
        assert stat(h, KEYRING) == "600 root"
        # Ceph's own tools on the host read both files as the operator means them.
        assert h.exec(f"ceph-conf -c {CONF} -n client.vmmgr --show-config-value fsid").strip() == fsid
        assert h.exec(f"ceph-conf -c {CONF} -n client.vmmgr --show-config-value rbd_cache").strip() == "true"
        assert h.ok(f"timeout 30 rbd --id vmmgr --keyring {KEYRING} ls {name} >/dev/null")
        reasons = {e["reason"] for e in platform.events(h.name)}
        assert "HostFileAdopted" in reasons
        assert key not in operator.log_text()

        # 4. Adopted files stay the operator's to maintain without spec.adopt: a setting it manages that a
        #    person changes is put back, the others still stay.
        platform.apply(hypervisor(h, labels, packages=debian_packages(), deletionPolicy="Delete"))
        h.exec(f"sed -i 's/^mon_host = .*/mon_host = 10.9.9.9/' {CONF} && echo 'debug_rbd = 0/5' >> {CONF}")
        wait_for(lambda: "10.9.9.9" not in h.exec(f"cat {CONF}"), 60, what="mon_host put back")
        assert "debug_rbd = 0/5" in h.exec(f"cat {CONF}")
        platform.wait_condition("hvn", h.name, "True", timeout=60)

        # 5. deletionPolicy Delete: adopted files are not removed (their foreign settings, and VMmanager, stay);
        #    the libvirt secret the operator defined goes.
        before = {path: sha256(h, path) for path in (CONF, KEYRING)}
        platform.delete("hvn", h.name, wait=True)
        assert "HostCleaned" in {e["reason"] for e in platform.events(h.name)}
        assert {path: sha256(h, path) for path in (CONF, KEYRING)} == before
        assert uuid not in h.exec("virsh -q -c qemu:///system secret-list")
        assert "rbd cache = true" in h.exec(f"cat {CONF}") and 'caps mon = "allow r"' in h.exec(f"cat {KEYRING}")
    finally:
        platform.delete("hvn", h.name, wait=True)
        platform.delete("rbds", name, wait=True)
        h.exec(f"rm -f {CONF} {KEYRING}")  # the host as other tests expect it
