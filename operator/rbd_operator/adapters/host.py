"""Operations on a hypervisor: facts, packages and files over an SshSession; libvirt (secrets, running
domains) through libvirt-python over a kept-open connection verified against the same pinned key
(adapters/libvirt_conn.py). Secret values go through libvirt's API: no key in a file on the host
outside libvirt's own store.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import libvirt

from ..api.enums import Family
from ..reconcile.host_plan import check_managed_path, check_uuid
from .blocking import check_cancelled
from .libvirt_conn import running_domains, wrap
from .ssh import SshError, SshSession, tail
from ..api.reasons import Reason


FACTS_SCRIPT = r"""
set +e
if [ -r /etc/os-release ]; then . /etc/os-release; fi
echo "osId=${ID:-}"
echo "osVersion=${VERSION_ID:-}"
echo "osLike=${ID_LIKE:-}"
echo "kernel=$(uname -r)"
echo "qemuVersion=$(qemu-img --version 2>/dev/null | sed -n '1s/.*version \([0-9][0-9.]*\).*/\1/p')"
rbd=false
if qemu-img --help 2>/dev/null | grep -qw rbd; then
  # Modular builds (Debian, recent RHEL) list rbd even without the module.
  found=; modular=
  for d in /usr/lib/*/qemu /usr/lib64/qemu /usr/lib64/qemu-kvm /usr/lib/qemu; do
    [ -e "$d/block-rbd.so" ] && found=1
    ls "$d"/block-*.so >/dev/null 2>&1 && modular=1
  done
  if [ -n "$found" ] || [ -z "$modular" ]; then rbd=true; fi
fi
echo "qemuRbd=$rbd"
lib=
if command -v dpkg-query >/dev/null 2>&1 && [ -d /var/lib/dpkg/info ]; then
  lib=$(dpkg-query -W -f '${Version}' librbd1 2>/dev/null)
fi
if [ -z "$lib" ] && command -v rpm >/dev/null 2>&1; then
  lib=$(rpm -q --qf '%{VERSION}' librbd1 2>/dev/null | grep -v 'not installed')
fi
echo "librbdVersion=$lib"
echo "libvirtVersion=$(virsh --version 2>/dev/null)"
if modinfo rbd >/dev/null 2>&1 || [ -d /sys/module/rbd ]; then echo krbd=true; else echo krbd=false; fi
command -v rbd >/dev/null 2>&1 && echo rbdCli=true || echo rbdCli=false
"""

INSTALLED_SCRIPT = r"""
if command -v dpkg-query >/dev/null 2>&1 && [ -d /var/lib/dpkg/info ]; then
  dpkg-query -W -f '${Package} ${db:Status-Abbrev}\n' "$@" 2>/dev/null | awk '$2 == "ii" {print $1}'
else
  rpm -q --qf '%{NAME}\n' "$@" 2>/dev/null | grep -v ' '
fi
exit 0
"""


PACKAGE_COMMANDS = {
    Family.DEBIAN: {"install": ["apt-get", "install", "-y", "--no-install-recommends",
                           "-o", "Dpkg::Options::=--force-confold"],
               "remove": ["apt-get", "remove", "-y"]},
    Family.RHEL: {"install": ["dnf", "-y", "install"], "remove": ["dnf", "-y", "remove"]},
}


@dataclass
class Facts:
    os_id: str
    os_version: str
    os_like: str
    kernel: str
    qemu_version: str
    qemu_rbd: bool
    librbd_version: str
    libvirt_version: str
    krbd: bool
    running_domains: int | None  # None: libvirt did not answer
    rbd_cli: bool

    def as_status(self, family: str | None) -> dict:
        return {"osId": self.os_id, "osVersion": self.os_version, "osFamily": family or "unknown",
                "kernel": self.kernel, "qemuVersion": self.qemu_version, "qemuRbd": self.qemu_rbd,
                "librbdVersion": self.librbd_version, "libvirtVersion": self.libvirt_version,
                "krbd": self.krbd, **({} if self.running_domains is None else {"runningDomains": self.running_domains})}


class PackageError(SshError):
    pass


# Every package transaction the operator runs on a host holds this lock (flock(1), util-linux) for as
# long as it runs, and its command inherits it: whether one is running can be asked of the host
# itself (PACKAGE_ACTIVITY_SCRIPT), by another replica too, after the one that started it is gone.
PACKAGE_LOCK = "/run/rbd-operator-packages.lock"
_LOCK_BUSY = 75  # flock's exit status when the lock is held (-E)


def locked(argv: list[str]) -> list[str]:
    """argv run under the operator's package lock; it fails at once (exit 75) while another holds it."""
    return ["flock", "-n", "-E", str(_LOCK_BUSY), PACKAGE_LOCK, *argv]


# Exit 0: no package transaction runs on the host; 3: one does (what, on stdout). Ours hold the lock;
# apt/dpkg/dnf/yum/rpm processes count too (apt-get closes inherited descriptors before it runs dpkg,
# so a dpkg left running by a killed apt-get holds no lock of ours), and so does dpkg's own lock.
PACKAGE_ACTIVITY_SCRIPT = r"""
if ! flock -n "$1" true; then echo "a package command of rbd-operator holds $1"; exit 3; fi
for p in /proc/[0-9]*; do
  c=$(cat "$p/comm" 2>/dev/null) || continue
  case "$c" in
    apt|apt-get|aptitude|dpkg|dnf|yum|rpm|unattended-upgr) echo "$c runs (pid ${p#/proc/})"; exit 3 ;;
  esac
done
exit 0
"""


REPAIR_DPKG_SCRIPT = r"""
if [ -n "$(ls -A /var/lib/dpkg/updates 2>/dev/null)" ] || [ -n "$(dpkg --audit 2>/dev/null)" ]; then
  DEBIAN_FRONTEND=noninteractive dpkg --configure -a --force-confold >/dev/null 2>&1 || exit 1
  echo repaired
fi
exit 0
"""


def dnf_removals(out: str, err: str) -> list[str]:
    """Package names under dnf's "Removing…" sections of a transaction table (--assumeno)."""
    if "Error" in err and "Operation aborted" not in out + err:
        raise PackageError(classify_package_failure(err + out), f"dnf could not resolve: {tail(err or out)}")
    names, removing = [], False
    for line in out.splitlines():
        if line.startswith("Transaction Summary"):
            break
        if line and not line.startswith(" "):
            removing = line.startswith("Removing")
            continue
        fields = line.split()
        if removing and len(fields) >= 4:
            names.append(fields[0])
    return names


def classify_package_failure(output: str) -> str:
    if re.search(r"Could not get lock|Unable to lock|Waiting for process with pid|another copy is running", output):
        return Reason.PACKAGE_MANAGER_BUSY
    if re.search(r"Unable to locate package|has no installation candidate|No match for argument|"
                 r"Unable to find a match", output):
        return Reason.PACKAGE_NOT_FOUND
    if re.search(r"Failed to fetch|Failed to download metadata|Cannot download repomd|Could not resolve|"
                 r"Connection refused|Could not connect|Cannot retrieve repository", output):
        return Reason.REPOSITORY_UNREACHABLE
    return Reason.PACKAGE_COMMAND_FAILED


class Host:
    def __init__(self, session: SshSession, virt: "libvirt.virConnect | None" = None) -> None:
        self.ssh = session
        self.virt = virt  # set once libvirt answers (see _converge_host)

    @property
    def _libvirt(self) -> "libvirt.virConnect":
        if self.virt is None:
            raise SshError(Reason.LIBVIRT_UNAVAILABLE, f"no libvirt connection to {self.ssh.address}")
        return self.virt

    def facts(self) -> Facts:
        result = self.ssh.script(FACTS_SCRIPT)
        values = dict(line.split("=", 1) for line in result.out.splitlines() if "=" in line)
        return Facts(
            os_id=values.get("osId", ""), os_version=values.get("osVersion", ""), os_like=values.get("osLike", ""),
            kernel=values.get("kernel", ""), qemu_version=values.get("qemuVersion", ""),
            qemu_rbd=values.get("qemuRbd") == "true", librbd_version=values.get("librbdVersion", ""),
            libvirt_version=values.get("libvirtVersion", ""), krbd=values.get("krbd") == "true",
            running_domains=None, rbd_cli=values.get("rbdCli") == "true",
        )

    # -- packages -----------------------------------------------------------
    def installed(self, packages: list[str]) -> set[str]:
        if not packages:
            return set()
        return set(self.ssh.script(INSTALLED_SCRIPT, *packages).out.split())

    def _package_command(self, argv: list[str], what: str, timeout: float = 900) -> None:
        check_cancelled(what)
        result = self.ssh.run(locked(argv), env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=timeout)
        if result.rc == _LOCK_BUSY:
            raise PackageError(Reason.PACKAGE_MANAGER_BUSY, f"{what}: another package command of rbd-operator still runs "
                               f"on the host ({PACKAGE_LOCK} is locked)")
        if result.rc != 0:
            output = result.err + "\n" + result.out
            raise PackageError(classify_package_failure(output), f"{what} failed: {tail(result.err or result.out)}")

    def package_activity(self) -> str | None:
        """What package transaction runs on the host now (None: none). Cannot tell: SshError."""
        result = self.ssh.run(["sh", "-s", "--", PACKAGE_LOCK], stdin=PACKAGE_ACTIVITY_SCRIPT.encode(), timeout=60)
        if result.rc == 0:
            return None
        if result.rc == 3:
            return tail(result.out, 200) or "a package transaction runs"
        raise SshError(Reason.COMMAND_FAILED, f"checking for package transactions failed (exit {result.rc}): "
                       f"{tail(result.err or result.out, 200)}")

    def simulate(self, family: str, install: list[str], remove: list[str]) -> list[str]:
        """The packages apt/dnf would remove for these changes (dependents and conflicts included),
        asked of the package manager itself without changing anything.

        apt: one transaction (`install A B-`), as apt may remove conflicting packages on install.
        dnf: the removal only — `dnf install` without --allowerasing never removes a package.
        """
        if family == Family.DEBIAN:
            if not install and not remove:
                return []
            argv = ["apt-get", "-s", "install", "-y", *install, *(f"{p}-" for p in remove)]
        else:
            if not remove:
                return []
            argv = ["dnf", "--assumeno", "remove", *remove]
        result = self.ssh.run(argv, env={"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}, timeout=300)
        if family == Family.DEBIAN:
            if result.rc != 0:
                raise PackageError(classify_package_failure(result.err + result.out),
                                   f"simulating the package changes failed: {tail(result.err or result.out)}")
            return [line.split()[1] for line in result.out.splitlines() if line.startswith("Remv ")]
        return dnf_removals(result.out, result.err)

    def repair_package_db(self, family: str) -> bool:
        """Finish a package transaction a lost connection or a crash left half-done (dpkg --configure -a)."""
        if family != Family.DEBIAN:
            return False
        result = self.ssh.run(locked(["sh", "-s"]), stdin=REPAIR_DPKG_SCRIPT.encode(), timeout=900)
        if result.rc == _LOCK_BUSY:
            raise PackageError(Reason.PACKAGE_MANAGER_BUSY, f"another package command of rbd-operator still runs on the "
                               f"host ({PACKAGE_LOCK} is locked)")
        if result.rc != 0:
            raise PackageError(Reason.PACKAGE_COMMAND_FAILED, f"dpkg --configure -a failed: {tail(result.err or result.out)}")
        return "repaired" in result.out

    def refresh_indexes(self, family: str) -> None:
        if family == Family.DEBIAN:
            self._package_command(["apt-get", "update", "--error-on=any"], "apt-get update")
        else:
            self._package_command(["dnf", "-y", "clean", "all"], "dnf clean all")

    def install(self, family: str, packages: list[str]) -> None:
        self._package_command(PACKAGE_COMMANDS[family]["install"] + packages, f"installing {' '.join(packages)}")

    def remove(self, family: str, packages: list[str]) -> None:
        self._package_command(PACKAGE_COMMANDS[family]["remove"] + packages, f"removing {' '.join(packages)}")

    def restore_rpmsave(self, path: str) -> bool:
        """After a package removal saved `path` as .rpmsave: put it back (once), as the seed does by hand."""
        saved = f"{path}.rpmsave"
        if self.ssh.read(saved) is None:
            return False
        self.ssh.run(["cp", "-p", saved, path], check=True)
        self.ssh.run(["mv", "-f", saved, f"{saved}.restored"], check=True)
        return True

    def restart_libvirtd(self) -> None:
        check_cancelled("restarting libvirtd")
        result = self.ssh.run(["systemctl", "restart", "libvirtd"], timeout=120)
        if result.rc != 0:
            self.ssh.run(["service", "libvirtd", "restart"], timeout=120, check=True)

    # -- files --------------------------------------------------------------
    def read_file(self, path: str) -> bytes | None:
        """A managed path's content (None: absent); bounded by the SSH layer's OUTPUT_LIMIT."""
        return self.ssh.read(check_managed_path(path))

    def write_file(self, path: str, data: bytes, mode: int) -> None:
        """Write one managed path (whether it may be written is decided by host_plan.plan_files)."""
        check_managed_path(path)
        check_cancelled(f"writing {path}")
        self.ssh.makedirs(path.rsplit("/", 1)[0])
        self.ssh.write(path, data, mode)

    def remove_file(self, path: str) -> bool:
        """Remove one of the operator's files (managed paths only)."""
        check_managed_path(path)
        check_cancelled(f"removing {path}")
        return self.ssh.remove(path)

    # -- libvirt secrets ----------------------------------------------------
    def secrets(self) -> set[str]:
        return {sec.UUIDString() for sec in wrap("listing libvirt secrets", self._libvirt.listAllSecrets)}

    def define_secret(self, uuid: str, xml: str) -> None:
        check_uuid(uuid)
        check_cancelled(f"defining libvirt secret {uuid}")
        wrap(f"defining libvirt secret {uuid}", self._libvirt.secretDefineXML, xml)

    def secret_value(self, uuid: str) -> str | None:
        """The secret's value (base64) as libvirt holds it, or None when it cannot be read back."""
        # Our secrets are private, so libvirt's API refuses to return them: root reads libvirt's own store.
        stored = self.ssh.read(f"/etc/libvirt/secrets/{check_uuid(uuid)}.base64")
        return stored.decode().strip() if stored is not None else None

    def set_secret_value(self, uuid: str, key: str) -> None:
        """Through libvirt's API: the key travels in the (verified, encrypted) libvirt connection only."""
        check_uuid(uuid)
        check_cancelled(f"setting libvirt secret {uuid}")
        secret = wrap(f"libvirt secret {uuid}", self._libvirt.secretLookupByUUIDString, uuid)
        wrap(f"setting libvirt secret {uuid}", secret.setValue, base64.b64decode(key))

    def undefine_secret(self, uuid: str) -> None:
        check_cancelled(f"undefining libvirt secret {uuid}")
        try:
            self._libvirt.secretLookupByUUIDString(check_uuid(uuid)).undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SECRET:
                raise SshError(Reason.LIBVIRT_UNAVAILABLE, f"undefining libvirt secret {uuid}: {exc}") from None

    def running_domains(self) -> int:
        return int(wrap("listing running domains", running_domains, self._libvirt))

    # -- probe --------------------------------------------------------------
    def probe(self, client: str, keyring_path: str, pool: str) -> str:
        check_managed_path(keyring_path)
        if keyring_path != f"/etc/ceph/ceph.client.{client}.keyring" or pool.startswith("-"):
            raise SshError(Reason.UNSAFE_VALUE, f"probe arguments for client {client!r} failed validation")
        result = self.ssh.run(["timeout", "30", "rbd", "--conf", "/etc/ceph/ceph.conf", "--id", client,
                               "--keyring", keyring_path, "ls", pool], timeout=60)
        if result.rc == 0:
            return f"ok: {len(result.out.split())} image(s) visible in {pool} as client.{client}"
        return f"failed: {tail(result.err or result.out, 200)}"
