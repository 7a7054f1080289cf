"""The chain VMmanager's and Eucalyptus's procedures exist for, proven by a guest: a QEMU (TCG) domain on a
converged host boots from an RbdImage with the storage's client and libvirt secret, and migrates live to
a second converged host (shared storage). (The RPM-family test host's qemu-kvm-rhev is a stand-in
package without a real rbd driver and librbd, so it cannot run the guest; see hack/testhosts.)"""

from __future__ import annotations

import time

import rbd

from .harness import sh, wait_for
from .labhosts import LABEL, TESTHOST, debian_packages, hypervisor
from .manifests import image, storage
from .vmproof import MARKER, boot_sector, domain_xml

VIRSH = "virsh -q -c qemu:///system"


def define_and_start(host, xml: str, name: str) -> None:
    sh(TESTHOST, "exec", host.name, "sh", "-c", f"{VIRSH} define /dev/stdin >/dev/null && {VIRSH} start {name}",
       input=xml)


def serial(host, path: str) -> str:
    return host.exec(f"cat {path} 2>/dev/null", check=False)


def running(host) -> list[str]:
    return host.exec(f"{VIRSH} list --state-running --name", check=False).split()


def capacity(host, name: str) -> int:
    """virDomainGetBlockInfo's capacity of the guest's disk, as virsh domblkinfo prints it."""
    out = host.exec(f"{VIRSH} domblkinfo {name} vda")
    return int(next(line.split()[1] for line in out.splitlines() if line.startswith("Capacity:")))


def domain_id(host, name: str) -> str:
    return host.exec(f"{VIRSH} domid {name}").strip()


def grow_live(platform, host, name: str, disk: str, size_mib: int) -> None:
    """Grow the image while the guest runs: within 10 s the guest's disk has the new size, same domain."""
    before = domain_id(host, name)
    assert capacity(host, name) < size_mib << 20
    platform.apply(image(disk, name, size=f"{size_mib}Mi"))
    started = time.monotonic()
    wait_for(lambda: capacity(host, name) == size_mib << 20, 10, interval=0.2,
             what=f"the guest's disk on {host.name} at {size_mib} MiB")
    took = time.monotonic() - started
    assert domain_id(host, name) == before, "the domain was not restarted"
    assert name in running(host), "the guest keeps running"
    events = wait_for(lambda: [e for e in platform.events(disk) if e.get("reason") == "GuestDiskResized"
                               and f"domain {name} on HypervisorNode {host.name}" in e.get("message", "")
                               and str(size_mib << 20) in e.get("message", "")], 10, what="GuestDiskResized")
    assert events
    print(f"guest disk on {host.name} grown to {size_mib} MiB in {took:.1f}s")


def migrate(src, dst, name: str) -> None:
    """`virsh migrate --live` over shared storage: src reaches dst's libvirtd over SSH (dst's host key
    pinned, dst's key given to src only for the call)."""
    key = (dst.run_dir / "id_ed25519").read_text()
    sh(TESTHOST, "exec", src.name, "sh", "-c",
       "umask 077; mkdir -p /root/.ssh && cat > /root/.ssh/id_migrate", input=key)
    try:
        sh(TESTHOST, "exec", src.name, "sh", "-c", "cat >> /root/.ssh/known_hosts",
           input=f"{dst.address} {dst.host_key}\n")
        src.exec(f"{VIRSH} migrate --live --persistent --undefinesource {name} "
                 f"'qemu+ssh://{dst.address}/system?keyfile=/root/.ssh/id_migrate' tcp://{dst.address}")
    finally:
        src.exec("rm -f /root/.ssh/id_migrate")  # the test's own key: not left where the leak scan looks


def used_by(platform, name: str) -> list[str]:
    return [u.get("node") for u in (platform.get("rbdimg", name, "default")["status"].get("usedBy") or [])]


def used_by_follows(platform, disk: str, nodes: list[str], what: str) -> None:
    """status.usedBy names `nodes` within 10 s of the domain's start, stop or migration (no one pokes the image)."""
    started = time.monotonic()
    wait_for(lambda: used_by(platform, disk) == nodes, 10, interval=0.2, what=what)
    print(f"usedBy {nodes} after {time.monotonic() - started:.1f}s: {what}")


def test_vm_boots_from_rbd_and_migrates_live(platform, operator, ceph, hosts, uniq):
    h1, h2 = hosts["t-h1"], hosts["t-h2"]
    name = f"vm-{uniq}"
    labels = {LABEL: name}
    platform.apply(storage(platform, name, client={"name": name}, deletionPolicy="Retain",
                           hypervisors={"nodeSelector": {"matchLabels": labels}}))
    platform.wait_condition("rbds", name, "True")
    for host in (h1, h2):
        platform.apply(hypervisor(host, labels, packages=debian_packages()))
    for host in (h1, h2):
        platform.wait_condition("hvn", host.name, "True", timeout=600)
    wait_for(lambda: platform.get("rbds", name)["status"]["hosts"]["current"] == 2, 120, what="2 hosts current")

    disk = f"disk-{uniq}"
    platform.apply(image(disk, name, size="16Mi"))
    platform.wait_condition("rbdimg", disk, "True", namespace="default")
    with ceph.open_ioctx(name) as ioctx, rbd.Image(ioctx, disk) as img:
        img.write(boot_sector(), 0)

    status = platform.get("rbds", name)["status"]
    v2 = status["monitors"][0]["v2"].rsplit(":", 1)
    log = f"/var/log/libvirt/qemu/{name}-serial.log"
    xml = domain_xml(name, name, disk, [(v2[0], int(v2[1]))], name, status["libvirtSecretUUID"], log)

    # 1. Boots on h1: QEMU read the image as client.<name> with the key from the libvirt secret.
    define_and_start(h1, xml, name)
    wait_for(lambda: MARKER.decode() in serial(h1, log), 120, what=f"the guest's marker on {h1.name}")
    # status.usedBy follows libvirt's lifecycle events: nobody touches the image.
    used_by_follows(platform, disk, [h1.name], "usedBy names the host")
    h1.exec(f"{VIRSH} destroy {name}")
    used_by_follows(platform, disk, [], "usedBy empty once the domain stopped")
    h1.exec(f"{VIRSH} start {name}")
    used_by_follows(platform, disk, [h1.name], "usedBy names the host again after a restart")

    # Online grow: the running guest's disk grows with the image (libvirt block resize), no restart.
    grow_live(platform, h1, name, disk, 80)

    # 2. Live migration to h2 over shared storage (h1 reaches h2's libvirtd over SSH, host key pinned).
    migrate(h1, h2, name)
    wait_for(lambda: name in running(h2) and name not in running(h1), 60, what="the domain running on h2")
    used_by_follows(platform, disk, [h2.name], "usedBy follows the migration")
    grow_live(platform, h2, name, disk, 144)  # on the migration target too

    # Lifecycle events keep the host's running-domain count current.
    wait_for(lambda: platform.get("hvn", h2.name)["status"]["facts"].get("runningDomains") == 1, 30,
             what="runningDomains on h2")

    # Key rotation under a running VM: the guest keeps its open image (its session was authenticated
    # with the old key); a migration after the rotation opens the image with the new key.
    platform.apply(storage(platform, name, client={"name": name, "rotateKeyGeneration": 1}, deletionPolicy="Retain",
                           hypervisors={"nodeSelector": {"matchLabels": labels}}))
    wait_for(lambda: platform.get("rbds", name)["status"].get("keyGeneration") == 1
             and platform.get("rbds", name)["status"]["hosts"]["current"] == 2, 120, what="rotated key on both hosts")
    time.sleep(15)
    assert name in running(h2), "the running guest survives the rotation"
    used_by_follows(platform, disk, [h2.name], "still open on h2 after the rotation")
    migrate(h2, h1, name)
    wait_for(lambda: name in running(h1) and name not in running(h2), 60, what="back on h1 with the new key")
    used_by_follows(platform, disk, [h1.name], "usedBy follows the second migration")

    # Deleting the image is refused while the VM uses it, naming the host.
    platform.delete("rbdimg", disk, "default")
    cond = platform.wait_condition("rbdimg", disk, "False", "InUse", namespace="default")
    assert f"HypervisorNode {h1.name}" in cond["message"]

    h1.exec(f"{VIRSH} destroy {name}; {VIRSH} undefine {name}", check=False)
    wait_for(lambda: platform.get("rbdimg", disk, "default") is None, 90, what="deleted once no VM uses it")
    platform.delete("rbds", name)
