"""Zero-change migration (#24 item 4): VMmanager's RBD storage set up by hand with the seed's commands (pool with
128 PGs, client.vmmgr with the seed's legacy caps, three images with data, a snapshot, a clone; a host with
ceph.conf, the client's keyring and a libvirt secret of VMmanager's own UUID), then `rbd-operator discover`,
`kubectl apply`, everything Ready - and Ceph and the host are as they were, except the operator's ownership
markers:

  1. the pool's `rbd` application metadata gains rbd-operator.owner and rbd-operator.cluster (and with
     them the pool's `last_change` osdmap epoch moves);
  2. mon config-key rbd-operator.io/clients/client.vmmgr is written (the client's owner record);
  3. each image's metadata gains rbd-operator.io/owner, the snapshot's image rbd-operator.io/snapshot.<name>;
  4. /etc/ceph/ceph.conf and /etc/ceph/ceph.client.vmmgr.keyring gain the adoption header as their first line
     (# written by rbd-operator (adopted: ...)); every other byte, the mode and the owner stay.

Nothing else may differ: pool settings and quotas, the client's caps and key, image sizes, features, data
(SHA-256 of every byte), snapshots, the clone's parent, the libvirt secret's UUID, XML and value.
Also: discover's hostile inputs (image names with shell metacharacters, unicode, 200 characters; a host whose
secret store holds garbage, a "host" answering SSH with garbage) end in a clear error and no output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import threading
import uuid as uuidlib
from pathlib import Path

import pytest
import rados
import rbd
import yaml

from .harness import BRIDGE, HOST_PREFIX, NET, OPERATOR_NAMESPACE, ROOT, sh, wait_for
from .labhosts import TESTHOST, LabHost

ADOPTED = "# written by rbd-operator (adopted: the settings it does not manage are kept)\n"
CONF, KEYRING = "/etc/ceph/ceph.conf", "/etc/ceph/ceph.client.vmmgr.keyring"
MARKERS = ("rbd-operator.",)  # rbd-operator.owner/.cluster (pool), rbd-operator.io/... (images)
IMAGE_SIZE = 16 << 20
DISCOVER = str(ROOT / ".venv" / "bin" / "rbd-operator")


@pytest.fixture(scope="module")
def vmhost(platform):
    sh(TESTHOST, "prepare", timeout=1800)
    host = LabHost(f"{HOST_PREFIX}m1", f"{NET}.31", "debian")
    sh(TESTHOST, "up", host.name, BRIDGE, f"{host.address}/24", host.family, env={"TESTHOST_NO_REPO": "1"}, timeout=900)
    try:
        yield host
    finally:
        platform.kubectl("delete", "hvn", "--all", "--ignore-not-found", "--wait=true", "--timeout=120s", check=False)
        sh(TESTHOST, "down", host.name, check=False)


def host_sh(host: LabHost, command: str, stdin: str | None = None) -> str:
    """A command on the host; secrets go through stdin, never argv."""
    return sh(TESTHOST, "exec", host.name, "sh", "-c", command, input=stdin).stdout


def discover(platform, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    keyring = platform.ceph_dir / "ceph.client.admin.keyring"
    argv = [DISCOVER, "discover", "--ceph-conf", str(platform.ceph_conf), "--keyring", str(keyring), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KUBECONFIG": str(platform.kubeconfig)})
    if check and result.returncode != 0:
        raise AssertionError(f"discover failed ({result.returncode}): {result.stderr}")
    return result


# -- the by-hand setup ------------------------------------------------------------------------------------------
def vmmanager_setup(platform, ceph: rados.Rados, host: LabHost, pool: str, secret_uuid: str) -> str:
    """The seed's steps; returns client.vmmgr's key (kept in memory only)."""
    platform.ceph_cli("osd", "pool", "create", pool, "128", "128")
    # What `ceph health` asks of every pool (POOL_APP_NOT_ENABLED); a pool without it gets `rbd pool init`
    # from the operator, the one change an adoption makes (docs/migrate.md).
    platform.ceph_cli("osd", "pool", "application", "enable", pool, "rbd")
    platform.ceph_cli("auth", "get-or-create", "client.vmmgr", "mon", "allow r",
                      "osd", f"allow class-read object_prefix rbd_children, allow rwx pool={pool}")
    key = json.loads(platform.ceph_cli("auth", "get-key", "client.vmmgr", "-f", "json"))["key"]
    for name in ("vm1-disk", "vm2-disk", "vm3-disk"):
        sh("qemu-img", "create", "-f", "rbd", f"rbd:{pool}/{name}:conf={platform.ceph_conf}", str(IMAGE_SIZE))
    with ceph.open_ioctx(pool) as ioctx:
        for i, name in enumerate(("vm1-disk", "vm2-disk", "vm3-disk")):
            with rbd.Image(ioctx, name) as image:
                for offset in (0, IMAGE_SIZE // 2, IMAGE_SIZE - 65536):
                    image.write(hashlib.sha256(f"{name}{offset}".encode()).digest() * 2048, offset)
    platform.rbd_cli("snap", "create", f"{pool}/vm1-disk@golden")
    platform.rbd_cli("snap", "protect", f"{pool}/vm1-disk@golden")
    platform.rbd_cli("clone", f"{pool}/vm1-disk@golden", f"{pool}/vm4-clone")
    # The host: ceph.conf, the client's keyring, the libvirt secret under VMmanager's UUID.
    fsid = ceph.get_fsid()
    mons = json.loads(platform.ceph_cli("mon", "dump", "-f", "json"))["mons"]
    mon_host = ",".join("[" + ",".join(f"{a['type']}:{a['addr']}" for a in m["public_addrs"]["addrvec"]) + "]"
                        for m in mons)
    host_sh(host, f"mkdir -p /etc/ceph && cat > {CONF} && chmod 0644 {CONF}",
            f"[global]\nfsid = {fsid}\nmon_host = {mon_host}\n\n[client]\nrbd cache = true\n")
    host_sh(host, f"umask 077 && cat > {KEYRING}", f"[client.vmmgr]\n\tkey = {key}\n")
    xml = (f"<secret ephemeral='no' private='no'>\n  <uuid>{secret_uuid}</uuid>\n  <usage type='ceph'>\n"
           "    <name>client.vmmgr secret</name>\n  </usage>\n</secret>\n")
    host_sh(host, "cat > /root/vmmgr-secret.xml && virsh -q -c qemu:///system secret-define /root/vmmgr-secret.xml"
            " && rm -f /root/vmmgr-secret.xml", xml)
    host_sh(host, f"umask 077 && cat > /root/k && virsh -q -c qemu:///system secret-set-value {secret_uuid} "
            "--file /root/k && rm -f /root/k", key)
    return key


# -- the dumps --------------------------------------------------------------------------------------------------
def without_markers(mapping: dict) -> dict:
    return {k: v for k, v in mapping.items() if not k.startswith(MARKERS)}


def ceph_dump(platform, ceph: rados.Rados, pool: str) -> dict:
    detail = next(p for p in json.loads(platform.ceph_cli("osd", "pool", "ls", "detail", "-f", "json"))
                  if p["pool_name"] == pool)
    applications = detail.pop("application_metadata")
    markers = {app: {k: v for k, v in meta.items() if k.startswith(MARKERS)} for app, meta in applications.items()}
    apps = {app: without_markers(meta) for app, meta in applications.items()}
    detail.pop("last_change")
    auth = json.loads(platform.ceph_cli("auth", "get", "client.vmmgr", "-f", "json"))[0]
    dump = {"pool": detail, "pool_markers_seen": markers, "apps": apps,
            "settings": json.loads(platform.ceph_cli("osd", "pool", "get", pool, "all", "-f", "json")),
            "quota": {k: v for k, v in json.loads(platform.ceph_cli("osd", "pool", "get-quota", pool, "-f", "json")).items()
                      if not k.startswith("current_")},  # usage figures (PG stats arrive late), not settings
            "client": {"caps": auth["caps"], "key_sha256": hashlib.sha256(auth["key"].encode()).hexdigest()},
            "images": {}}
    with ceph.open_ioctx(pool) as ioctx:
        for name in sorted(rbd.RBD().list(ioctx)):
            with rbd.Image(ioctx, name, read_only=True) as image:
                try:
                    parent = image.get_parent_image_spec()
                except rbd.ImageNotFound:
                    parent = None
                data = hashlib.sha256()
                for offset in range(0, image.size(), 4 << 20):
                    data.update(image.read(offset, min(4 << 20, image.size() - offset)))
                dump["images"][name] = {
                    "size": image.size(), "features": image.features(), "flags": image.flags(),
                    "order": image.stat()["order"], "data_pool": image.data_pool_id(), "parent": parent,
                    "snapshots": [(s["name"], s["size"], image.is_protected_snap(s["name"]))
                                  for s in image.list_snaps()],
                    "metadata": without_markers(dict(image.metadata_list())),
                    "sha256": data.hexdigest()}
    return dump


def host_dump(host: LabHost, secret_uuid: str) -> dict:
    files = {}
    for path in (CONF, KEYRING):
        files[path] = {"stat": host_sh(host, f"stat -c '%a %U %G' {path}").strip(),
                       "content": host_sh(host, f"cat {path}")}
    secrets = host_sh(host, "virsh -q -c qemu:///system secret-list").split()
    return {"files": files, "secret_uuids": sorted(s for s in secrets if len(s) == 36),
            "secret_xml": host_sh(host, f"virsh -q -c qemu:///system secret-dumpxml {secret_uuid}"),
            "secret_value_sha256": hashlib.sha256(
                host_sh(host, f"cat /etc/libvirt/secrets/{secret_uuid}.base64").strip().encode()).hexdigest()}


# -- the test ---------------------------------------------------------------------------------------------------
def test_vmmanager_installation_is_adopted_with_zero_change(platform, operator, ceph, vmhost, uniq, tmp_path):
    pool, namespace = f"vmmgr-{uniq}", f"vms-{uniq}"
    secret_uuid = str(uuidlib.uuid4())  # VMmanager's own choice
    key = vmmanager_setup(platform, ceph, vmhost, pool, secret_uuid)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{vmhost.address} {vmhost.host_key}\n")
    platform.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hypervisor-ssh",
                    "namespace": OPERATOR_NAMESPACE},
                    "stringData": {"ssh-privatekey": (vmhost.run_dir / "id_ed25519").read_text()}})
    platform.kubectl("create", "namespace", namespace)
    try:
        before = ceph_dump(platform, ceph, pool), host_dump(vmhost, secret_uuid)
        args = ("--pool", pool, "--namespace", namespace, "--host", vmhost.address,
                "--ssh-key", str(vmhost.run_dir / "id_ed25519"), "--known-hosts", str(known_hosts))
        out = discover(platform, *args).stdout
        assert key not in out
        docs = [d for d in yaml.safe_load_all(out) if d]
        kinds = sorted(d["kind"] for d in docs)
        assert kinds == ["HypervisorNode", "RbdImage", "RbdImage", "RbdImage", "RbdImage", "RbdSnapshot",
                         "RbdStorage"], kinds
        storage = next(d for d in docs if d["kind"] == "RbdStorage")
        assert storage["spec"]["hypervisors"]["libvirtSecretUUID"] == secret_uuid
        assert storage["spec"]["pool"]["pgNum"] == 128 and storage["spec"]["pool"]["adopt"] is True
        assert storage["spec"]["client"]["caps"] == {
            "mon": "allow r", "osd": f"allow class-read object_prefix rbd_children, allow rwx pool={pool}"}
        clone = next(d for d in docs if d["kind"] == "RbdImage" and d["spec"]["name"] == "vm4-clone")
        assert clone["spec"]["source"] == {"image": "vm1-disk", "snapshot": "golden"}

        # The server accepts every document (schemas, CEL) before anything is applied.
        platform.kubectl("apply", "--dry-run=server", "-f", "-", input=out)
        # --diff before: every object new, the Ceph plan only ownership markers.
        diff = discover(platform, *args, "--diff", check=False)
        assert diff.returncode == 1, diff.stdout + diff.stderr
        assert "change:" not in diff.stdout, diff.stdout
        assert "ownership marker" in diff.stdout and "does not exist (created)" in diff.stdout

        platform.kubectl("apply", "-f", "-", input=out)
        name = storage["metadata"]["name"]
        platform.wait_condition("rbds", name, "True", timeout=120)
        for doc in docs:
            kind, meta = doc["kind"].lower(), doc["metadata"]
            platform.wait_condition(kind, meta["name"], "True", namespace=meta.get("namespace"), timeout=300)
        assert platform.get("rbds", name)["status"]["libvirtSecretUUID"] == secret_uuid
        hvn = platform.get("hvn", vmhost.address)
        assert [s["secretUUID"] for s in hvn["status"]["storages"]] == [secret_uuid]
        wait_for(lambda: platform.get("rbds", name)["status"]["hosts"]["current"] == 1, 60, what="host current")

        # --diff after: nothing to do, in Kubernetes or in Ceph.
        diff = discover(platform, *args, "--diff", check=False)
        assert diff.returncode == 0, diff.stdout + diff.stderr
        assert "does not exist" not in diff.stdout and "ownership marker" not in diff.stdout

        # The adopted UUID cannot be changed under a host that holds it (domains name it): refused, nothing
        # touched; the previous value back, Ready again. The schema refuses a malformed one outright.
        other_uuid = str(uuidlib.uuid4())
        patch = lambda value: platform.kubectl("patch", "rbds", name, "--type=merge", "-p", json.dumps(  # noqa: E731
            {"spec": {"hypervisors": {"libvirtSecretUUID": value}}}), check=False)
        refused = patch(secret_uuid.upper())
        assert refused.returncode != 0 and "libvirtSecretUUID" in refused.stderr, refused.stderr
        assert patch(other_uuid).returncode == 0
        cond = platform.wait_condition("rbds", name, "False", "LibvirtSecretUUIDInUse", timeout=60)
        assert secret_uuid in cond["message"] and vmhost.address in cond["message"]
        assert platform.get("rbds", name)["status"]["libvirtSecretUUID"] == secret_uuid
        assert other_uuid not in host_sh(vmhost, "virsh -q -c qemu:///system secret-list")
        assert patch(secret_uuid).returncode == 0
        platform.wait_condition("rbds", name, "True", timeout=60)

        after = ceph_dump(platform, ceph, pool), host_dump(vmhost, secret_uuid)
        ceph_before, host_before = before
        ceph_after, host_after = after
        # Ownership markers: allowed, and present.
        assert ceph_after.pop("pool_markers_seen")["rbd"].keys() == {"rbd-operator.owner", "rbd-operator.cluster"}
        assert ceph_before.pop("pool_markers_seen") == {"rbd": {}}
        assert json.loads(platform.ceph_cli("config-key", "get", "rbd-operator.io/clients/client.vmmgr"))["owners"]
        for path in (CONF, KEYRING):
            content = host_after["files"][path]["content"]
            assert content.startswith(ADOPTED), content
            host_after["files"][path]["content"] = content[len(ADOPTED):]
        assert ceph_after == ceph_before
        assert host_after == host_before
    finally:
        for doc in reversed([d for d in yaml.safe_load_all(locals().get("out") or "") if d]):
            meta = doc["metadata"]
            platform.delete(doc["kind"].lower(), meta["name"], meta.get("namespace"), wait=True)
        platform.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        platform.ceph_cli("osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it", check=False)
        platform.ceph_cli("auth", "del", "client.vmmgr", check=False)
        platform.ceph_cli("config-key", "rm", "rbd-operator.io/clients/client.vmmgr", check=False)


# -- hostile inputs -----------------------------------------------------------------------------------------------
HOSTILE = ["$(touch /tmp/pwned)", "a;b`c`", "dïsk-ünïcode", "x" * 200, "-rf", "a\nb"]


def test_discover_refuses_names_it_cannot_express_and_prints_nothing(platform, ceph, uniq):
    pool = f"hostile-{uniq}"
    platform.ceph_cli("osd", "pool", "create", pool, "8", "8")
    platform.ceph_cli("osd", "pool", "application", "enable", pool, "rbd")
    platform.ceph_cli("auth", "get-or-create", f"client.h{uniq}", "mon", "allow r", "osd", f"allow rwx pool={pool}")
    try:
        with ceph.open_ioctx(pool) as ioctx:
            rbd.RBD().create(ioctx, "good-disk", 1 << 20)
            for name in HOSTILE:
                try:
                    rbd.RBD().create(ioctx, name, 1 << 20)
                except (rbd.Error, ValueError):
                    pass  # some names librbd itself refuses
            made = set(rbd.RBD().list(ioctx))
        assert len(made) > 2, made
        result = discover(platform, "--pool", pool, "--client", f"h{uniq}", "--namespace", "vms", check=False)
        assert result.returncode == 2 and result.stdout == "", result.stdout
        assert "cannot be expressed" in result.stderr and "--skip-unmappable" in result.stderr
        assert all(c.isascii() for c in result.stderr.split("RequestsDependencyWarning")[-1]), result.stderr
        assert not Path("/tmp/pwned").exists()
        # Left out on request: valid YAML, every document valid for the API server, the others listed.
        result = discover(platform, "--pool", pool, "--client", f"h{uniq}", "--namespace", "vms", "--skip-unmappable")
        docs = [d for d in yaml.safe_load_all(result.stdout) if d]
        assert sorted(d["spec"].get("name") for d in docs if d["kind"] == "RbdImage") == ["good-disk"]
        assert result.stdout.count("# left out: image") == len(made) - 1
        platform.kubectl("create", "namespace", "vms", check=False)
        platform.kubectl("apply", "--dry-run=server", "-f", "-", input=result.stdout)
    finally:
        platform.ceph_cli("osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it", check=False)
        platform.ceph_cli("auth", "del", f"client.h{uniq}", check=False)


@contextlib.contextmanager
def garbage_server():
    """A TCP listener that prints 64 KiB of random bytes (a banner, then garbage) to whoever connects."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)

    def serve() -> None:
        try:
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.sendall(b"SSH-2.0-garbage\r\n" + os.urandom(65536))
        except OSError:
            return

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_discover_refuses_a_host_with_garbage_and_an_unknown_host_key(platform, vmhost, uniq, tmp_path):
    known = tmp_path / "known_hosts"
    key = str(vmhost.run_dir / "id_ed25519")
    base = ("--namespace", "vms", "--host", vmhost.address, "--ssh-key", key, "--known-hosts", str(known))
    platform.ceph_cli("auth", "get-or-create", "client.vmmgr", "mon", "allow r")
    try:
        # No known_hosts entry: refused, nothing learnt.
        known.write_text("")
        result = discover(platform, *base, check=False)
        assert result.returncode == 2 and result.stdout == ""
        assert "never trusts a key on first use" in result.stderr
        # Another key pinned: refused before anything runs.
        other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GwJl"
        known.write_text(f"{vmhost.address} {other}\n")
        result = discover(platform, *base, check=False)
        assert result.returncode == 2 and "HostKeyMismatch" not in result.stdout and "presented" in result.stderr
        # The host's secret store holds garbage: a clear error naming the file, no output.
        known.write_text(f"{vmhost.address} {vmhost.host_key}\n")
        bad = "deadbeef-0000-4000-8000-000000000000"
        host_sh(vmhost, f"mkdir -p /etc/libvirt/secrets && cat > /etc/libvirt/secrets/{bad}.xml",
                "<secret><uuid>$(reboot)</uuid>\x01<usage")
        try:
            result = discover(platform, *base, check=False)
        finally:
            host_sh(vmhost, f"rm -f /etc/libvirt/secrets/{bad}.xml")
        assert result.returncode == 2 and result.stdout == "", result.stdout
        assert f"{bad}.xml is not XML" in result.stderr, result.stderr
        # A "host" that answers the SSH port with garbage: a clear error, no output.
        with garbage_server() as port:
            known.write_text(f"[127.0.0.1]:{port} {vmhost.host_key}\n")
            result = discover(platform, "--namespace", "vms", "--host", "127.0.0.1", "--ssh-port", str(port),
                              "--ssh-key", key, "--known-hosts", str(known), check=False)
        assert result.returncode == 2 and result.stdout == "", result.stdout
        assert "host '127.0.0.1'" in result.stderr and "handshake" in result.stderr, result.stderr
    finally:
        platform.ceph_cli("auth", "del", "client.vmmgr", check=False)


def test_discover_works_with_the_caps_docs_migrate_lists(platform, operator, ceph, uniq, tmp_path):
    """docs/migrate.md's identity for discover: mon 'allow r' + the commands `auth get` and `config-key get`,
    osd 'profile rbd-read-only'. It reads images, snapshots and clones, and --diff, with nothing more."""
    pool, entity = f"caps-{uniq}", f"client.discover-{uniq}"
    platform.ceph_cli("osd", "pool", "create", pool, "8", "8")
    platform.ceph_cli("osd", "pool", "application", "enable", pool, "rbd")
    platform.ceph_cli("auth", "get-or-create", "client.vmmgr", "mon", "allow r", "osd", f"allow rwx pool={pool}")
    keyring = tmp_path / "discover.keyring"
    platform.ceph_cli("auth", "get-or-create", entity, "mon",
                      'allow r, allow command "auth get", allow command "config-key get"',
                      "osd", "profile rbd-read-only", "-o", str(keyring))
    try:
        platform.rbd_cli("create", "--size", "4M", f"{pool}/base")
        platform.rbd_cli("snap", "create", f"{pool}/base@s1")
        platform.rbd_cli("snap", "protect", f"{pool}/base@s1")
        platform.rbd_cli("clone", f"{pool}/base@s1", f"{pool}/child")
        argv = [DISCOVER, "discover", "--ceph-conf", str(platform.ceph_conf), "--keyring", str(keyring),
                "--pool", pool, "--namespace", "vms"]
        env = {**os.environ, "KUBECONFIG": str(platform.kubeconfig)}
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0, result.stderr
        docs = [d for d in yaml.safe_load_all(result.stdout) if d]
        assert sorted(d["kind"] for d in docs) == ["RbdImage", "RbdImage", "RbdSnapshot", "RbdStorage"]
        result = subprocess.run(argv + ["--diff"], capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 1 and "change:" not in result.stdout, result.stdout + result.stderr
    finally:
        platform.ceph_cli("osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it", check=False)
        platform.ceph_cli("auth", "del", entity, check=False)
        platform.ceph_cli("auth", "del", "client.vmmgr", check=False)
