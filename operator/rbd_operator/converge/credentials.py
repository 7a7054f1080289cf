"""Credentials the operator reads from Secrets, only in its own namespace: the Ceph admin credentials a
storage names, the SSH key a HypervisorNode names."""

from __future__ import annotations

import re

from kubernetes.client.rest import ApiException

from ..adapters import kube
from ..adapters.blocking import Pool, run_blocking
from ..adapters.ceph import CephError, Credentials, valid_cephx_key
from ..adapters.ssh import SshError
from ..api.hypervisor import HostSpec
from ..api.reasons import Reason
from ..api.storage import SecretRef

_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")


async def admin_credentials(monitors: tuple[str, ...], ref: SecretRef) -> Credentials:
    """Credentials from the admin Secret the spec references (keys userID, userKey).

    Only a Secret in the operator's namespace is read: Refused(SecretOutsideNamespace) otherwise.
    """
    ref = SecretRef(ref.name, kube.check_secret_namespace(ref.namespace, ref.name))
    hit, data = kube.cached_secret(ref.namespace, ref.name)
    try:
        if not hit:
            data = await run_blocking(kube.read_secret, ref.namespace, ref.name, timeout=30, pool=Pool.KUBE)
    except ApiException as exc:
        raise CephError(Reason.AUTH_FAILED, f"cannot read admin Secret {ref.namespace}/{ref.name}: "
                        f"HTTP {exc.status} {exc.reason}") from None
    if data is None:
        raise CephError(Reason.AUTH_FAILED, f"admin Secret {ref.namespace}/{ref.name} does not exist")
    key = data.get("userKey")
    if not key:
        raise CephError(Reason.AUTH_FAILED, f"admin Secret {ref.namespace}/{ref.name} has no userKey")
    if not valid_cephx_key(key.strip()):
        raise CephError(Reason.AUTH_FAILED, f"admin Secret {ref.namespace}/{ref.name}: userKey is not a cephx key")
    user = data.get("userID") or "admin"
    if not _USER.match(user):
        raise CephError(Reason.AUTH_FAILED, f"admin Secret {ref.namespace}/{ref.name}: userID is not a cephx user "
                        "name")
    return Credentials(monitors, user, key.strip())


def ssh_key(spec: HostSpec) -> str:
    """The private key from the Secret a HypervisorNode names (only in the operator's namespace). Blocking:
    called in a worker thread."""
    ref = spec.ssh_key
    namespace = kube.check_secret_namespace(ref.namespace, ref.name)
    try:
        data = kube.read_secret(namespace, ref.name, fresh=True)  # a replaced key works at once
    except ApiException as exc:
        raise SshError(Reason.AUTHENTICATION_FAILED, f"cannot read Secret {namespace}/{ref.name}: "
                       f"HTTP {exc.status} {exc.reason}") from None
    if not data or not data.get("ssh-privatekey"):
        raise SshError(Reason.AUTHENTICATION_FAILED, f"Secret {namespace}/{ref.name} has no ssh-privatekey")
    return data["ssh-privatekey"]
