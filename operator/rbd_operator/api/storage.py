"""RbdStorage: a Ceph pool plus a cephx client (spec contract in crds/rbdstorages.yaml)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .enums import DeletionPolicy
from .errors import SpecError
from .names import check_client_name, check_pool_name, is_k8s_label, is_k8s_name
from .quantity import parse_quantity
from .urls import UrlRefused, check_prefix, redact

DEFAULT_STALL_TIMEOUT = 120   # spec.imports.stallTimeout's default (2m)
MIN_STALL_TIMEOUT = 5
MAX_STALL_TIMEOUT = 3600


def parse_qos(raw: Any, path: str) -> Any:
    from .image import parse_qos as parse  # noqa: PLC0415 - image imports this module
    return parse(raw, path)

CAPS_PROFILES = ("rbd", "legacy")
DELETION_POLICIES = tuple(DeletionPolicy)
CAPS_SERVICES = ("mon", "osd", "mgr")

# Pool settings a user may put in pool.parameters. size, pg_num and pgp_num
# have fields of their own; anything else is refused before Ceph is touched.
POOL_PARAMETERS = frozenset({
    "compression_mode", "compression_algorithm", "compression_required_ratio",
    "compression_min_blob_size", "compression_max_blob_size",
    "min_size", "pg_autoscale_mode", "target_size_ratio", "target_size_bytes",
    "noscrub", "nodeep-scrub", "nodelete", "nopgchange", "nosizechange",
    "csum_type", "csum_min_block", "csum_max_block", "fast_read",
    "scrub_min_interval", "scrub_max_interval", "deep_scrub_interval",
    "recovery_priority", "recovery_op_priority", "pg_num_min", "pg_num_max",
})
# Values Ceph accepts, checked before Ceph is touched (a value Ceph refuses after the pool was
# created would leave a half-converged pool behind a refused spec).
_PARAM_ENUMS = {
    "compression_mode": {"none", "passive", "aggressive", "force"},
    "compression_algorithm": {"none", "snappy", "zlib", "zstd", "lz4"},
    "pg_autoscale_mode": {"on", "off", "warn"},
    "csum_type": {"none", "crc32c", "crc32c_16", "crc32c_8", "xxhash32", "xxhash64"},
}
_PARAM_BOOLS = {"noscrub", "nodeep-scrub", "nodelete", "nopgchange", "nosizechange", "fast_read"}
_PARAM_RATIOS = {"compression_required_ratio", "target_size_ratio"}
_PARAM_FLOATS = {"scrub_min_interval", "scrub_max_interval", "deep_scrub_interval"}
_PARAM_RANGES = {"min_size": (1, 10), "recovery_priority": (-10, 10), "recovery_op_priority": (1, 63),
                 "pg_num_min": (1, 32768), "pg_num_max": (1, 32768)}


def _valid_parameter(key: str, text: str) -> bool:
    if key in _PARAM_ENUMS:
        return text in _PARAM_ENUMS[key]
    if key in _PARAM_BOOLS:
        return text in ("true", "false", "1", "0")
    try:
        number = float(text)
    except ValueError:
        return False
    if key in _PARAM_RATIOS:
        return 0.0 <= number <= 1.0
    if key in _PARAM_FLOATS:
        return 0.0 <= number < 2 ** 31
    if not number.is_integer():
        return False
    low, high = _PARAM_RANGES.get(key, (0, 2 ** 62))
    return low <= number <= high


_PARAM_VALUE = re.compile(r"^[A-Za-z0-9_.:+-]{1,64}\Z")
_MONITOR = re.compile(r"^(v[12]:)?([A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:]+\]):[0-9]{1,5}\Z")
_CAP = re.compile(r"^[A-Za-z0-9 _.,=*'\"-]{1,512}\Z")


@dataclass(frozen=True)
class SecretRef:
    """A Secret the operator reads. `namespace` None means the operator's own namespace."""
    name: str
    namespace: str | None = None

    def resolve(self, operator_namespace: str) -> "SecretRef":
        return SecretRef(self.name, self.namespace or operator_namespace)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def secret_ref(raw: Any, path: str) -> SecretRef:
    if not isinstance(raw, Mapping) or not raw.get("name"):
        raise SpecError(path, "needs name (and optionally namespace)")
    name, namespace = raw.get("name"), raw.get("namespace")
    if not is_k8s_name(name):
        raise SpecError(f"{path}.name", f"{name!r} is not a Secret name")
    if namespace is not None and not is_k8s_label(namespace):
        raise SpecError(f"{path}.namespace", f"{namespace!r} is not a namespace name")
    return SecretRef(name, namespace or None)


DEFAULT_PG_NUM = 128
DEFAULT_CAPS_PROFILE = "rbd"


@dataclass(frozen=True)
class PoolSpec:
    """None means "not stated": the default applies to a pool the operator creates, while an
    adopted pool keeps what it has."""
    name: str
    pg_num: int | None = None
    replicas: int | None = None
    quota_max_bytes: int | None = None
    quota_max_objects: int | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)
    application: str = "rbd"
    adopt: bool = False

    @property
    def pg_num_or_default(self) -> int:
        return self.pg_num if self.pg_num is not None else DEFAULT_PG_NUM


@dataclass(frozen=True)
class ClientSpec:
    name: str = "vmmgr"
    caps_profile: str | None = None  # None: not stated (rbd for a client the operator creates)
    caps: Mapping[str, str] | None = None
    cache_pool: str | None = None
    secret_name: str = ""
    adopt: bool = False
    rotate_key_generation: int = 0

    @property
    def entity(self) -> str:
        return f"client.{self.name}"

    @property
    def caps_stated(self) -> bool:
        return self.caps is not None or self.caps_profile is not None


@dataclass(frozen=True)
class NamespaceLimits:
    """imageLimits.perNamespace: per namespace, over the images of this storage (provisioned sizes summed)."""
    max_images: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True)
class ImageLimits:
    """spec.imageLimits: what the storage's admin lets tenants ask for (None: no limit)."""
    max_size: int | None = None
    min_trash_retention_seconds: int | None = None
    qos: Mapping[str, int] = field(default_factory=dict)  # librbd setting -> ceiling (absent: no ceiling)
    data_pools: tuple[str, ...] = ()  # the only pools an RbdImage may name as dataPool (absent: none)
    per_namespace: NamespaceLimits = NamespaceLimits()


@dataclass(frozen=True)
class StorageSpec:
    monitors: tuple[str, ...]
    admin_secret: SecretRef
    pool: PoolSpec
    client: ClientSpec
    node_selector: Mapping[str, Any] = field(default_factory=dict)
    deletion_policy: DeletionPolicy = DeletionPolicy.RETAIN
    image_namespaces: Mapping[str, Any] | None = None  # label selector over namespaces; None: all
    image_qos: Mapping[str, int] | None = None  # imageDefaults.qos: librbd setting -> value
    import_prefixes: tuple[str, ...] = ()  # imports.allowedURLPrefixes; empty: no imports
    import_stall_timeout: int = DEFAULT_STALL_TIMEOUT  # imports.stallTimeout, seconds
    adoption_namespaces: Mapping[str, Any] | None = None  # adoption.namespaces; None: no namespace may adopt
    image_limits: ImageLimits = ImageLimits()
    libvirt_secret_uuid: str | None = None  # hypervisors.libvirtSecretUUID; None: derived (fsid, client, pool)


def _mapping(spec: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = spec.get(key) or {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{path}.{key}", "must be an object")
    return value


def _positive_int(value: Any, path: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"{value!r} is not an integer")
    if value < 0 or (value == 0 and not allow_zero):
        raise SpecError(path, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def parse_storage(name: str, spec: Mapping[str, Any]) -> StorageSpec:
    """Validate an RbdStorage spec and fill in defaults. Raises SpecError."""
    cluster = _mapping(spec, "cluster", "spec")
    policy = spec.get("deletionPolicy") or DeletionPolicy.RETAIN
    if policy not in DELETION_POLICIES:
        raise SpecError("spec.deletionPolicy", f"{policy!r} is not one of {', '.join(DELETION_POLICIES)}")
    return StorageSpec(
        monitors=_monitors(cluster),
        admin_secret=secret_ref(cluster.get("adminSecretRef"), "spec.cluster.adminSecretRef"),
        pool=_pool(name, _mapping(spec, "pool", "spec")),
        client=_client(name, _mapping(spec, "client", "spec")),
        node_selector=dict(_mapping(_mapping(spec, "hypervisors", "spec"), "nodeSelector", "spec.hypervisors")),
        libvirt_secret_uuid=check_secret_uuid(_mapping(spec, "hypervisors", "spec").get("libvirtSecretUUID")),
        deletion_policy=DeletionPolicy(policy),
        image_namespaces=_selector(spec.get("imageNamespaces"), "spec.imageNamespaces"),
        import_prefixes=_prefixes(_mapping(spec, "imports", "spec").get("allowedURLPrefixes")),
        import_stall_timeout=_stall_timeout(_mapping(spec, "imports", "spec").get("stallTimeout")),
        image_qos=parse_qos((_mapping(spec, "imageDefaults", "spec")).get("qos"), "spec.imageDefaults.qos"),
        adoption_namespaces=_selector(_mapping(spec, "adoption", "spec").get("namespaces"), "spec.adoption.namespaces"),
        image_limits=parse_image_limits(_mapping(spec, "imageLimits", "spec")),
    )


_SECRET_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def check_secret_uuid(raw: Any, path: str = "spec.hypervisors.libvirtSecretUUID") -> str | None:
    """An existing libvirt secret's UUID to adopt (lower-case 8-4-4-4-12 hex, as libvirt prints it)."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not _SECRET_UUID.fullmatch(raw):
        raise SpecError(path, f"{str(raw)[:64]!r} is not a UUID in libvirt's form (lower-case "
                        "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    return raw


def _monitors(cluster: Mapping[str, Any]) -> tuple[str, ...]:
    monitors = cluster.get("monitors") or []
    if not isinstance(monitors, list) or not monitors:
        raise SpecError("spec.cluster.monitors", "must list at least one monitor as host:port")
    for i, mon in enumerate(monitors):
        if not isinstance(mon, str) or not _MONITOR.match(mon) or not 0 < int(mon.rsplit(":", 1)[1]) < 65536:
            raise SpecError(f"spec.cluster.monitors[{i}]", f"{mon!r} is not host:port")
    return tuple(monitors)


def _selector(raw: Any, path: str) -> dict[str, Any] | None:
    return None if raw is None else dict(check_selector(raw, path))


def _bounded(pool: Mapping[str, Any], key: str, most: int) -> int | None:
    value = pool.get(key)
    if value is None:
        return None
    value = _positive_int(value, f"spec.pool.{key}")
    if value > most:
        raise SpecError(f"spec.pool.{key}", f"{value} is more than {most}")
    return value


def _pool(name: str, pool: Mapping[str, Any]) -> PoolSpec:
    quota = _mapping(pool, "quota", "spec.pool")
    max_bytes = quota.get("maxBytes")
    if max_bytes is not None:
        max_bytes = _quantity(max_bytes, "spec.pool.quota.maxBytes")
    max_objects = quota.get("maxObjects")
    if max_objects is not None:
        max_objects = _positive_int(max_objects, "spec.pool.quota.maxObjects", allow_zero=True)
    application = pool.get("application") or "rbd"
    if not isinstance(application, str) or not re.match(r"^[a-z][a-z0-9_-]{0,31}\Z", application):
        raise SpecError("spec.pool.application", f"{application!r} is not an application name")
    return PoolSpec(check_pool_name("spec.pool.name", pool.get("name") or name), _bounded(pool, "pgNum", 32768),
                    _bounded(pool, "replicas", 10), max_bytes, max_objects, _parameters(pool), application,
                    adopt=_flag(pool, "adopt", "spec.pool"))


def _parameters(pool: Mapping[str, Any]) -> dict[str, str]:
    parameters: dict[str, str] = {}
    for key, value in _mapping(pool, "parameters", "spec.pool").items():
        if key not in POOL_PARAMETERS:
            raise SpecError(f"spec.pool.parameters.{key}", "is not a pool setting the operator manages "
                            f"(allowed: {', '.join(sorted(POOL_PARAMETERS))})")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if not _PARAM_VALUE.match(text) or not _valid_parameter(key, text):
            raise SpecError(f"spec.pool.parameters.{key}", f"{text!r} is not a valid value for {key}")
        parameters[key] = text
    return parameters


def _client(name: str, client: Mapping[str, Any]) -> ClientSpec:
    profile = client.get("capsProfile")
    if profile is not None and profile not in CAPS_PROFILES:
        raise SpecError("spec.client.capsProfile", f"{profile!r} is not one of {', '.join(CAPS_PROFILES)}")
    cache_pool = client.get("cachePool")
    if cache_pool is not None:
        cache_pool = check_pool_name("spec.client.cachePool", cache_pool)
    secret_name = client.get("secretName") or f"{name}-client"
    if not is_k8s_name(secret_name):
        raise SpecError("spec.client.secretName", f"{secret_name!r} is not a valid Secret name")
    return ClientSpec(check_client_name("spec.client.name", client.get("name") or "vmmgr"), profile,
                      _caps(client.get("caps")), cache_pool, secret_name, adopt=_flag(client, "adopt", "spec.client"),
                      rotate_key_generation=_positive_int(client.get("rotateKeyGeneration", 0),
                                                          "spec.client.rotateKeyGeneration", allow_zero=True))


def _caps(caps: Any) -> dict[str, str] | None:
    if caps is None:
        return None
    if not isinstance(caps, Mapping) or not caps:
        raise SpecError("spec.client.caps", "must map services (mon, osd, mgr) to caps")
    for service, cap in caps.items():
        if service not in CAPS_SERVICES:
            raise SpecError(f"spec.client.caps.{service}", f"unknown service (allowed: {', '.join(CAPS_SERVICES)})")
        if not isinstance(cap, str) or not _CAP.match(cap):
            raise SpecError(f"spec.client.caps.{service}", f"{cap!r} is not a caps string")
    broad = privileged_grants(caps)
    if broad:
        raise SpecError("spec.client.caps", "grants privileges beyond RBD use of named pools: " + "; ".join(broad))
    return dict(caps)


def parse_image_limits(raw: Mapping[str, Any]) -> ImageLimits:
    """spec.imageLimits (the CRD's CEL rules check the same; this is the operator's own check)."""
    from .image import parse_duration  # noqa: PLC0415 - image imports this module

    path = "spec.imageLimits"
    max_size = raw.get("maxSize")
    if max_size is not None:
        max_size = _quantity(max_size, f"{path}.maxSize", positive=True)
    retention = raw.get("minTrashRetention")
    if retention is not None:
        if not isinstance(retention, str):
            raise SpecError(f"{path}.minTrashRetention", "must be a duration such as 1h")
        retention = parse_duration(retention, f"{path}.minTrashRetention")
    qos = parse_qos(raw.get("qos"), f"{path}.qos") or {}
    for setting, ceiling in qos.items():
        if ceiling <= 0:
            raise SpecError(f"{path}.qos", f"a ceiling must be greater than zero ({setting} is 0, which Ceph reads "
                            "as unlimited)")
    pools = raw.get("dataPools")
    data_pools: tuple[str, ...] = ()
    if pools is not None:
        if not isinstance(pools, list) or len(pools) > 64:
            raise SpecError(f"{path}.dataPools", "must be a list of at most 64 pool names")
        data_pools = tuple(dict.fromkeys(check_pool_name(f"{path}.dataPools[{i}]", p) for i, p in enumerate(pools)))
    per_ns = _mapping(raw, "perNamespace", path)
    max_images = per_ns.get("maxImages")
    if max_images is not None:
        max_images = _positive_int(max_images, f"{path}.perNamespace.maxImages", allow_zero=True)
    max_bytes = per_ns.get("maxBytes")
    if max_bytes is not None:
        max_bytes = _quantity(max_bytes, f"{path}.perNamespace.maxBytes")
    return ImageLimits(max_size, retention, qos, data_pools, NamespaceLimits(max_images, max_bytes))


def _quantity(value: Any, path: str, *, positive: bool = False) -> int:
    try:
        number = parse_quantity(value)
    except ValueError as exc:
        raise SpecError(path, str(exc)) from None
    if number < 0 or (positive and number == 0):
        raise SpecError(path, f"must be {'greater than zero' if positive else 'zero or more'}, got {value!r}")
    return number


_MON_OK = re.compile(r'^(allow r|profile rbd(-read-only)?|allow command "?osd (blocklist|blacklist)"?( .*)?)\Z')
_MGR_OK = re.compile(r"^(allow r|profile rbd(-read-only)?( pool=\S+)?( namespace=\S+)?)\Z")
_OSD_SCOPED = re.compile(r"(^| )(pool|namespace)=\S+")


def privileged_grants(caps: Mapping[str, str]) -> list[str]:
    """Grants in explicit caps that reach beyond RBD use of named pools (mon writes, all pools, admin).

    Such a client would lend whoever holds its key (a host, a Secret reader) more than storage access.
    """
    bad = []
    for service, cap in caps.items():
        for grant in (" ".join(g.split()).lower() for g in str(cap).split(",") if g.strip()):
            if service == "mon" and not _MON_OK.match(grant):
                bad.append(f"mon '{grant}'")
            elif service == "mgr" and not _MGR_OK.match(grant):
                bad.append(f"mgr '{grant}'")
            elif service == "osd":
                rbd_children = grant == "allow class-read object_prefix rbd_children"
                profile_ok = not grant.startswith("profile") or grant.split()[1] in ("rbd", "rbd-read-only")
                if not rbd_children and (not _OSD_SCOPED.search(grant) or "*" in grant or not profile_ok):
                    bad.append(f"osd '{grant}'")
    return bad


_URL_PREFIX = re.compile(r"^https?://[A-Za-z0-9._~:/?#@!$&()*+,;=%\[\]-]+\Z")


def _prefixes(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError("spec.imports.allowedURLPrefixes", "must be a list of http(s) URL prefixes")
    for i, prefix in enumerate(raw):
        # A prefix ends at a path boundary, so that https://a.example does not allow https://a.example.evil.
        if not isinstance(prefix, str) or not _URL_PREFIX.fullmatch(prefix) or prefix.count("/") < 3:
            raise SpecError(f"spec.imports.allowedURLPrefixes[{i}]", f"{redact(str(prefix))!r} is not an http(s) "
                            "URL prefix ending in a path (such as https://images.example.com/templates/)")
        try:  # in the form a server reads it, as URLs are checked against it (api/urls.py)
            check_prefix(prefix, "the prefix")
        except UrlRefused as exc:
            raise SpecError(f"spec.imports.allowedURLPrefixes[{i}]", str(exc)) from None
    return tuple(raw)


def _stall_timeout(raw: Any) -> int:
    """spec.imports.stallTimeout: a download moving less than 64 KiB in this window ends (ImportStalled)."""
    from .image import parse_duration  # noqa: PLC0415 - image imports this module

    if raw is None:
        return DEFAULT_STALL_TIMEOUT
    if not isinstance(raw, str):
        raise SpecError("spec.imports.stallTimeout", "must be a duration such as 2m")
    seconds = parse_duration(raw, "spec.imports.stallTimeout")
    if not MIN_STALL_TIMEOUT <= seconds <= MAX_STALL_TIMEOUT:
        raise SpecError("spec.imports.stallTimeout", f"must be between {MIN_STALL_TIMEOUT}s and "
                        f"{MAX_STALL_TIMEOUT // 3600}h, got {raw}")
    return seconds


def _flag(spec: Mapping[str, Any], key: str, path: str) -> bool:
    value = spec.get(key, False)
    if not isinstance(value, bool):
        raise SpecError(f"{path}.{key}", f"{value!r} is not true or false")
    return value


_SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def check_selector(raw: Any, path: str) -> Mapping[str, Any]:
    """A Kubernetes label selector (matchLabels, matchExpressions)."""
    if not isinstance(raw, Mapping):
        raise SpecError(path, "must be a label selector (matchLabels, matchExpressions)")
    labels = raw.get("matchLabels") or {}
    if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in labels.items()):
        raise SpecError(f"{path}.matchLabels", "must map label keys to string values")
    for i, expr in enumerate(raw.get("matchExpressions") or []):
        if not isinstance(expr, Mapping) or not isinstance(expr.get("key"), str) \
                or expr.get("operator") not in _SELECTOR_OPERATORS:
            raise SpecError(f"{path}.matchExpressions[{i}]",
                            f"needs key and operator ({', '.join(_SELECTOR_OPERATORS)})")
        values = expr.get("values") or []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SpecError(f"{path}.matchExpressions[{i}].values", "must be a list of strings")
        if expr["operator"] in ("In", "NotIn") and not values:
            raise SpecError(f"{path}.matchExpressions[{i}].values", f"{expr['operator']} needs values")
    return raw
