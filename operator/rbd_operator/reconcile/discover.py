"""`rbd-operator discover`, pure part: facts read from a Ceph cluster and its hosts -> the manifests that bring
them under management without changing anything (pool, client, images, snapshots adopted as they are; hosts
with their pinned host key, host files adopted, `deletionPolicy: Retain` everywhere).

No I/O here: adapters/discover.py reads the facts, cli.py prints. Every document is checked with the api
layer's own parsers before it is printed, and every name that cannot be expressed is refused with a message
naming it (or left out, listed, with `skip_unmappable`): the output is valid YAML for any input.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from ..api.errors import SpecError
from ..api.hypervisor import parse_host
from ..api.image import USER_FEATURES, check_features, parse_image
from ..api.names import K8S_LABEL, K8S_NAME, check_client_name, check_image_name, check_pool_name
from ..api.snapshot import parse_snapshot
from ..api.storage import POOL_PARAMETERS, _caps, check_secret_uuid, parse_storage
from .storage_plan import POOL_FLAGS

API_VERSION = "rbd-operator.io/v1alpha1"
# HypervisorNodes discover writes carry this label; the storages select them by it (an empty selector selects none).
HOST_LABEL = "rbd-operator.io/discovered"
STORAGE_NAME_MAX = 63   # the storage's name is a label value on its client Secret
OBJECT_NAME_MAX = 253


class DiscoverError(Exception):
    """Nothing can be printed: the message says what and why."""


@dataclass(frozen=True)
class ImageFacts:
    name: str
    size: int
    features: tuple[str, ...]                 # librbd feature names as found
    data_pool: str | None = None
    parent: tuple[str, str, str] | None = None  # (pool, image, snapshot) of a clone
    snapshots: tuple[str, ...] = ()
    old_format: bool = False                  # format 1: the operator manages format 2 images only


@dataclass(frozen=True)
class PoolFacts:
    name: str
    pg_num: int
    size: int
    quota_max_bytes: int
    quota_max_objects: int
    applications: tuple[str, ...]
    settings: Mapping[str, str]               # ObservedPool.settings: options, min_size, autoscale mode, flags
    options: tuple[str, ...] = ()             # keys set explicitly in the pool's options
    images: tuple[ImageFacts, ...] = ()


@dataclass(frozen=True)
class HostSecret:
    uuid: str
    usage_type: str
    usage_name: str


@dataclass(frozen=True)
class HostFacts:
    address: str
    port: int
    user: str
    host_key: str                             # "type base64", as pinned (verified against known_hosts)
    files: tuple[str, ...] = ()               # /etc/ceph files found
    secrets: tuple[HostSecret, ...] = ()
    conf_fsid: str | None = None              # the fsid its ceph.conf names (None: none, or no ceph.conf)


@dataclass(frozen=True)
class ClusterFacts:
    fsid: str
    monitors: tuple[str, ...]
    client: str                               # cephx user name without "client."
    caps: Mapping[str, str]
    pools: tuple[PoolFacts, ...]
    hosts: tuple[HostFacts, ...] = ()


@dataclass(frozen=True)
class Options:
    namespace: str                            # RbdImages/RbdSnapshots go here; the storages grant it adoption
    admin_secret: str = "ceph-admin"          # in the operator's namespace
    ssh_key_secret: str = "hypervisor-ssh"    # in the operator's namespace
    secret_uuid: str | None = None            # --libvirt-secret-uuid: overrides what the hosts say
    skip_unmappable: bool = False


@dataclass(frozen=True)
class Document:
    body: Mapping[str, Any]
    comments: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return self.body["kind"]

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]


@dataclass
class Result:
    documents: list[Document] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # what was left out, and why
    notes: list[str] = field(default_factory=list)     # printed as comments at the top


# -- names -------------------------------------------------------------------------------------------------
def k8s_name(raw: str, max_len: int = OBJECT_NAME_MAX) -> str:
    """A Kubernetes object name for a Ceph name: the name itself where it is one, otherwise a deterministic
    mapping (lower case, runs of other characters as '-') with 8 hex digits of the name's SHA-256 appended,
    so that two Ceph names never map to one object name."""
    pattern = K8S_LABEL if max_len <= 63 else K8S_NAME
    if pattern.fullmatch(raw) and len(raw) <= max_len:
        return raw
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    base = re.sub(r"[^a-z0-9-]+" if max_len <= 63 else r"[^a-z0-9.-]+", "-", raw.lower())
    base = re.sub(r"[-.]{2,}", "-", base).strip("-.")[:max_len - 9].rstrip("-.")
    return f"{base}-{digest}" if base else f"x-{digest}"


def shown(value: object) -> str:
    """A value for a message or a YAML comment: one line, printable ASCII, bounded."""
    text = ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."


def printable(text: str) -> str:
    """A message for a terminal: non-ASCII and control characters escaped."""
    return text.encode("ascii", "backslashreplace").decode().replace("\n", "\\n").replace("\r", "\\r")


def _checked(check, what: str, value: str) -> str | None:
    try:
        check(what, value)
        return None
    except SpecError as exc:
        return f"{what} {shown(value)}: {printable(exc.message.split(': ', 1)[-1])}"


# -- the mapping ---------------------------------------------------------------------------------------------
def discover(facts: ClusterFacts, opts: Options) -> Result:
    """Facts -> documents. Raises DiscoverError when something cannot be expressed (unless skip_unmappable)."""
    if not K8S_LABEL.fullmatch(opts.namespace or ""):
        raise DiscoverError(f"--namespace {shown(opts.namespace)} is not a namespace name")
    problem = _checked(check_client_name, "client name", facts.client)
    if problem:
        raise DiscoverError(problem)
    result = Result()
    hosts = [_host(h, facts.fsid, opts, result) for h in facts.hosts]
    for pool in facts.pools:
        _pool(facts, pool, opts, result, has_hosts=any(hosts))
    result.documents += [h for h in hosts if h is not None]
    _unique(result.documents)
    for doc in result.documents:
        _validate(doc)
    if result.skipped and not opts.skip_unmappable:
        raise DiscoverError("cannot be expressed as manifests (nothing printed; --skip-unmappable leaves them "
                            "out):\n  " + "\n  ".join(result.skipped))
    return result


def _meta(kind: str, name: str, namespace: str | None = None, labels: Mapping[str, str] | None = None) -> dict:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": meta}


def _pool(facts: ClusterFacts, pool: PoolFacts, opts: Options, result: Result, has_hosts: bool) -> None:
    problem = _checked(check_pool_name, "pool", pool.name)
    if problem:
        result.skipped.append(problem + " (the pool and its images are left out)")
        return
    name = k8s_name(pool.name, STORAGE_NAME_MAX)
    comments: list[str] = [f"pool {pool.name} of cluster {facts.fsid}: {len(pool.images)} image(s)"]
    spec: dict[str, Any] = {
        "cluster": {"monitors": list(facts.monitors), "adminSecretRef": {"name": opts.admin_secret}},
        "pool": _pool_spec(pool, comments),
        "client": _client_spec(facts, name, comments),
        "adoption": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": opts.namespace}}},
        "deletionPolicy": "Retain",
    }
    uuid = _secret_uuid(facts, pool, opts, comments)
    hypervisors: dict[str, Any] = {}
    if has_hosts:
        hypervisors["nodeSelector"] = {"matchLabels": {HOST_LABEL: "true"}}
    else:
        comments.append("no --host given: the storage selects no HypervisorNode (spec.hypervisors.nodeSelector)")
    if uuid:
        hypervisors["libvirtSecretUUID"] = uuid
    if hypervisors:
        spec["hypervisors"] = hypervisors
    images = _images(pool, name, opts, result)
    data_pools = sorted({i.data_pool for i in pool.images if i.data_pool})
    if data_pools:
        spec["imageLimits"] = {"dataPools": data_pools}
    result.documents.append(Document({**_meta("RbdStorage", name), "spec": spec}, tuple(comments)))
    result.documents += images


def _pool_spec(pool: PoolFacts, comments: list[str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": pool.name, "adopt": True, "replicas": pool.size,
                            "quota": {"maxBytes": pool.quota_max_bytes, "maxObjects": pool.quota_max_objects}}
    autoscale = pool.settings.get("pg_autoscale_mode")
    if autoscale == "off":
        spec["pgNum"] = pool.pg_num
    else:
        comments.append(f"pgNum left out: the PG autoscaler is {shown(autoscale or 'unknown')} for this pool "
                        f"(pg_num {pool.pg_num} now)")
    parameters = {}
    for key, value in sorted(pool.settings.items()):
        wanted = key in pool.options or key in ("min_size", "pg_autoscale_mode") or \
            (key in POOL_FLAGS and value == "true")
        if wanted and key in POOL_PARAMETERS:
            parameters[key] = value
        elif key in pool.options and key not in POOL_PARAMETERS:
            comments.append(f"pool option {shown(key)} is not one the operator manages: left as it is")
    if parameters:
        spec["parameters"] = parameters
    if "rbd" not in pool.applications:
        comments.append("the pool has no rbd application: the operator will enable it (rbd pool init), "
                        "the one change applying this makes")
    return spec


def _client_spec(facts: ClusterFacts, storage: str, comments: list[str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": facts.client, "adopt": True, "secretName": k8s_name(f"{storage}-client")}
    try:
        spec["caps"] = _caps(dict(facts.caps)) if facts.caps else None
    except SpecError as exc:
        comments.append(f"caps of client.{facts.client} left to the adopted client (the CRD does not accept "
                        f"them: {shown(exc.message)})")
        spec.pop("caps", None)
    if spec.get("caps") is None:
        spec.pop("caps", None)
    return spec


def _secret_uuid(facts: ClusterFacts, pool: PoolFacts, opts: Options, comments: list[str]) -> str | None:
    """The libvirt secret the hosts hold for the client (usage type ceph, usage name naming the client)."""
    if opts.secret_uuid:
        return check_secret_uuid(opts.secret_uuid, "--libvirt-secret-uuid")
    entity = f"client.{facts.client}"
    found: dict[str, set[str]] = {}
    for host in facts.hosts:
        for secret in host.secrets:
            words = set(re.split(r"[\s/:,]+", secret.usage_name))
            if secret.usage_type == "ceph" and (entity in words or facts.client in words):
                found.setdefault(secret.uuid, set()).add(host.address)
    if len(found) > 1:  # one per pool: the one whose usage also names the pool
        named = {s.uuid for h in facts.hosts for s in h.secrets if s.uuid in found
                 and pool.name in set(re.split(r"[\s/:,]+", s.usage_name))}
        if len(named) == 1:
            found = {u: found[u] for u in named}
    if not found:
        if facts.hosts:
            comments.append(f"no host holds a libvirt secret for {entity}: the operator defines one (derived UUID)")
        return None
    if len(found) > 1:
        raise DiscoverError(f"the hosts hold {len(found)} libvirt secrets for {entity} ("
                            + ", ".join(f"{u} on {', '.join(sorted(a))}" for u, a in sorted(found.items()))
                            + "): pass --libvirt-secret-uuid with the one the domains use")
    uuid, where = next(iter(found.items()))
    missing = sorted({h.address for h in facts.hosts} - where)
    comments.append(f"libvirt secret {uuid} adopted (found on {len(where)} host(s)"
                    + (f"; the operator defines it on {', '.join(missing)})" if missing else ")"))
    return check_secret_uuid(uuid, "libvirt secret UUID found on a host")


def _images(pool: PoolFacts, storage: str, opts: Options, result: Result) -> list[Document]:
    docs: list[Document] = []
    names = {i.name: k8s_name(i.name) for i in pool.images}
    for image in sorted(pool.images, key=lambda i: i.name):
        problem = _checked(check_image_name, f"image in pool {pool.name}:", image.name)
        if problem:
            result.skipped.append(problem)
            continue
        spec, comments = _image_spec(pool, image, storage, result)
        if spec is None:
            continue
        docs.append(Document({**_meta("RbdImage", names[image.name], opts.namespace), "spec": spec}, comments))
        for snap in image.snapshots:
            problem = _checked(check_image_name, f"snapshot of image {pool.name}/{image.name}:", snap)
            if problem:
                result.skipped.append(problem)
                continue
            body = {**_meta("RbdSnapshot", k8s_name(f"{names[image.name]}-{snap}"), opts.namespace),
                    "spec": {"image": names[image.name], "name": snap, "adopt": True, "deletionPolicy": "Retain"}}
            docs.append(Document(body))
    return docs


def _image_spec(pool: PoolFacts, image: ImageFacts, storage: str,
                result: Result) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    where = f"image {pool.name}/{image.name}"
    if image.old_format:
        result.skipped.append(f"{where}: an old-format (format 1) image; the operator manages format 2 images only "
                              "(`rbd migration prepare` converts it)")
        return None, ()
    features = [f for f in image.features if f in USER_FEATURES]
    try:
        check_features(features)
    except SpecError as exc:
        result.skipped.append(f"{where}: features {shown(features)}: {exc.message}")
        return None, ()
    spec: dict[str, Any] = {"storage": storage, "name": image.name, "adopt": True, "size": image.size,
                            "features": features, "deletionPolicy": "Retain"}
    if image.data_pool:
        spec["dataPool"] = image.data_pool
    comments: tuple[str, ...] = ()
    if image.parent:
        parent_pool, parent_image, parent_snap = image.parent
        if parent_pool != pool.name:
            result.skipped.append(f"{where}: a clone of {shown(parent_pool)}/{shown(parent_image)}@"
                                  f"{shown(parent_snap)}, another pool (a clone's source is in its own storage)")
            return None, ()
        spec["source"] = {"image": parent_image, "snapshot": parent_snap}
        comments = (f"a clone of {parent_image}@{parent_snap}",)
    return spec, comments


def _host(host: HostFacts, fsid: str, opts: Options, result: Result) -> Document | None:
    spec = {"address": host.address, "port": host.port, "user": host.user,
            "sshKeySecretRef": {"name": opts.ssh_key_secret}, "hostKey": host.host_key, "hostKeyPolicy": "Pinned",
            "deletionPolicy": "Retain", "adopt": True, "packages": {"profile": "none"}}
    try:
        parse_host(host.address, spec)
    except SpecError as exc:
        result.skipped.append(f"host {shown(host.address)}: {exc.message}")
        return None
    files = ", ".join(host.files) or "none"
    comments = [f"host {host.address}: /etc/ceph files found: {files}; packages are not managed (profile none)"]
    if host.conf_fsid is not None and host.conf_fsid != fsid:
        comments.append(f"its ceph.conf names another cluster (fsid {shown(host.conf_fsid)}): adopting it sets fsid "
                        f"and mon_host to this cluster's, a change")
    elif "/etc/ceph/ceph.conf" in host.files and host.conf_fsid is None:
        comments.append("its ceph.conf names no fsid: adopting it adds fsid and mon_host")
    return Document({**_meta("HypervisorNode", k8s_name(host.address), labels={HOST_LABEL: "true"}), "spec": spec},
                    tuple(comments))


def _unique(docs: list[Document]) -> None:
    seen: dict[tuple, int] = {}
    for doc in docs:
        key = (doc.kind, doc.body["metadata"].get("namespace"), doc.name)
        if key in seen:
            raise DiscoverError(f"two {doc.kind}s would be named {doc.name}; nothing printed")
        seen[key] = 1


def _validate(doc: Document) -> None:
    """The operator's own parsers accept every document (a failure here is a bug of this module)."""
    spec = doc.body["spec"]
    try:
        if doc.kind == "RbdStorage":
            parse_storage(doc.name, spec)
        elif doc.kind == "RbdImage":
            parse_image(doc.name, spec)
        elif doc.kind == "RbdSnapshot":
            parse_snapshot(doc.name, spec)
        elif doc.kind == "HypervisorNode":
            parse_host(doc.name, spec)
    except SpecError as exc:
        raise DiscoverError(f"{doc.kind} {doc.name}: {exc.message}") from None
    if not K8S_NAME.fullmatch(doc.name):
        raise DiscoverError(f"{doc.kind} {shown(doc.name)} is not an object name")


# -- output --------------------------------------------------------------------------------------------------
def _comment(text: str) -> str:
    return "# " + re.sub(r"[^\x20-\x7e]", "?", text) + "\n"


def render(result: Result, header: list[str] = ()) -> str:
    """Multi-document YAML: comments first, each document after `---`; strings quoted by the emitter."""
    out = [_comment(line) for line in [*header, *result.notes]]
    out += [_comment(f"left out: {line}") for line in result.skipped]
    for doc in result.documents:
        out.append("---\n")
        out += [_comment(line) for line in doc.comments]
        out.append(yaml.safe_dump(_plain(doc.body), sort_keys=False, allow_unicode=False, width=1000))
    return "".join(out)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- --diff: what applying the documents would change ---------------------------------------------------------
def spec_differences(want: Any, live: Any, path: str = "spec") -> list[str]:
    """Where the live object's spec differs from the document's (fields the document leaves out are not
    compared: `kubectl apply` keeps them; lists are compared whole)."""
    if isinstance(want, Mapping) and isinstance(live, Mapping):
        out: list[str] = []
        for key, value in want.items():
            out += spec_differences(value, live.get(key), f"{path}.{key}")
        return out
    if _same_value(want, live):
        return []
    return [f"{path}: {shown(live)} -> {shown(want)}"]


def _same_value(want: Any, live: Any) -> bool:
    if isinstance(want, (list, tuple)) and isinstance(live, (list, tuple)):
        return len(want) == len(live) and all(_same_value(a, b) for a, b in zip(want, live))
    if isinstance(want, int) and not isinstance(want, bool) and isinstance(live, str):
        from ..api.quantity import parse_quantity  # noqa: PLC0415 - sizes may be written as quantities
        try:
            return parse_quantity(live) == want
        except ValueError:
            return False
    return want == live


def ceph_plan(doc: Document, pools: Mapping[str, Any], have_caps: Mapping[str, str] | None, owners: list[str],
              me: str, cluster: str | None) -> tuple[list[str], list[str]]:
    """The storage's pool and client steps as the operator would plan them now (reconcile/storage_plan.py,
    fed the document's spec and the cluster as observed): (ownership markers, changes)."""
    from ..api.errors import OperatorError  # noqa: PLC0415
    from .actions import ClaimPool, RecordClientOwners  # noqa: PLC0415
    from .caps import caps_for  # noqa: PLC0415
    from .storage_plan import plan_client, plan_pool  # noqa: PLC0415

    spec = parse_storage(doc.name, doc.body["spec"])
    alive = {me}.__contains__
    try:
        steps = plan_pool(spec, pools.get(spec.pool.name), pools, me, alive, cluster)
        adopted_keeps = spec.client.adopt and not spec.client.caps_stated and have_caps is not None
        want_caps = None if adopted_keeps else caps_for(spec.client, spec.pool.name)
        steps += plan_client(spec.client.entity, want_caps, have_caps, owners, me, spec.client.adopt, alive, cluster)
    except OperatorError as exc:
        return [], [f"refused: {exc.message}"]
    markers = [s.describe() for s in steps if isinstance(s, (ClaimPool, RecordClientOwners))]
    changes = [s.describe() for s in steps if not isinstance(s, (ClaimPool, RecordClientOwners))]
    return markers, changes
