"""Names and the rules they follow: Kubernetes object names and namespaces (one definition here), and the
names that reach Ceph (pools, images, cephx clients).

The Ceph rules are stricter than Ceph's own: these names also end up in shell commands on hypervisors,
in file names and in libvirt XML.
"""

from __future__ import annotations

import re

from .errors import SpecError
from .reasons import Reason

# Kubernetes: a DNS subdomain (object names: Secrets, RbdSnapshots, ...) and a DNS label (namespaces).
K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")
K8S_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")


def is_k8s_name(value: object) -> bool:
    return isinstance(value, str) and bool(K8S_NAME.fullmatch(value))


def is_k8s_label(value: object) -> bool:
    return isinstance(value, str) and bool(K8S_LABEL.fullmatch(value))


POOL_NAME_MAX = 63
IMAGE_NAME_MAX = 96
CLIENT_NAME_MAX = 63

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


def check_name(field: str, value: object, max_length: int) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(field, "must be a non-empty string", reason=Reason.INVALID_NAME)
    if len(value) > max_length:
        raise SpecError(field, f"{value[:20]!r}… is longer than {max_length} characters", reason=Reason.INVALID_NAME)
    if not _SAFE.fullmatch(value):
        raise SpecError(
            field,
            f"{value!r} may only contain letters, digits, '_', '.', '-' and must start with a letter or digit "
            "(no '/', '@', whitespace)",
            reason=Reason.INVALID_NAME,
        )
    return value


# The operator's own names in Ceph: staging pools and images (`rbdop-new-<hash>`, reconcile/ownership.py) and
# the fast-path probe image (`rbdop-probe-<hex>`, adapters/ceph/rbd_raw.py). A spec may not name one: a tenant
# must not reach another object's staged image, nor make an image the stray-probe cleanup would look at.
RESERVED_PREFIX = "rbdop-"


def check_pool_name(field: str, value: object) -> str:
    return _not_reserved(field, check_name(field, value, POOL_NAME_MAX))


def check_image_name(field: str, value: object) -> str:
    return _not_reserved(field, check_name(field, value, IMAGE_NAME_MAX))


def _not_reserved(field: str, value: str) -> str:
    if value.startswith(RESERVED_PREFIX):
        raise SpecError(field, f"{value[:40]!r}: names starting with {RESERVED_PREFIX!r} are the operator's own "
                        "(staging and probe names in Ceph)", reason=Reason.INVALID_NAME)
    return value


# Ceph's own privileged identities: client.admin and the bootstrap keys (create daemons' keys).
_RESERVED_CLIENT = re.compile(r"^(admin|bootstrap-.*)\Z")
# A name that itself spells an entity type (client.admin, osd.0, mon.a, ...).
_ENTITY_PREFIX = re.compile(r"^(client|osd|mon|mgr|mds|rgw)\.", re.IGNORECASE)


def check_client_name(field: str, value: object) -> str:
    name = check_name(field, value, CLIENT_NAME_MAX)
    if _RESERVED_CLIENT.match(name) or _ENTITY_PREFIX.match(name):
        raise SpecError(field, f"{name!r} names a privileged or non-client Ceph identity; the operator "
                        "manages only its own client.<name> users", reason=Reason.INVALID_NAME)
    return name
