"""`rbd-operator discover` (also `kubectl rbd discover`): print the manifests that bring an existing Ceph RBD
installation and its hypervisors under management without changing anything; `--diff` prints what applying
them would change. Reads only (see docs/migrate.md for the caps it needs); never prints a key."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .reconcile import discover as mapping

DIFF_CHANGES = 1   # exit status of --diff when applying would change something (as `kubectl diff`)
FAILED = 2


def parser(prog: str = "rbd-operator discover") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--ceph-conf", required=True, help="ceph.conf of the cluster (monitors)")
    p.add_argument("--keyring", required=True, help="keyring of the identity discover connects as")
    p.add_argument("--id", dest="entity", help="that identity (default: the keyring's first [client.NAME])")
    p.add_argument("--client", default="vmmgr", help="the cephx user the hypervisors use (default: %(default)s, "
                   "VMmanager's CephAuthUserName)")
    p.add_argument("--pool", help="only this pool (default: every RBD pool)")
    p.add_argument("--namespace", required=True, help="namespace of the RbdImages and RbdSnapshots; every storage "
                   "grants it adoption (spec.adoption)")
    p.add_argument("--admin-secret", default="ceph-admin", help="the admin Secret in the operator's namespace "
                   "(default: %(default)s)")
    p.add_argument("--host", action="append", default=[], metavar="ADDR", help="a hypervisor to read (repeat)")
    p.add_argument("--ssh-key", help="private key for --host")
    p.add_argument("--ssh-user", default="root")
    p.add_argument("--ssh-port", type=int, default=22)
    p.add_argument("--known-hosts", help="known_hosts file that pins the hosts' keys (required with --host; "
                   "a host without an entry is refused)")
    p.add_argument("--ssh-key-secret", default="hypervisor-ssh", help="Secret (operator's namespace) the "
                   "HypervisorNodes name for their SSH key (default: %(default)s)")
    p.add_argument("--libvirt-secret-uuid", help="the libvirt secret UUID the domains use (default: found on the hosts)")
    p.add_argument("--skip-unmappable", action="store_true", help="leave out (and list) what cannot be expressed "
                   "instead of printing nothing")
    p.add_argument("--diff", action="store_true", help="print what applying the output would change (Kubernetes "
                   "objects and the operator's Ceph plan) instead of the output")
    p.add_argument("--kubeconfig", help="for --diff (default: $KUBECONFIG)")
    return p


def discover_main(argv: list[str], prog: str = "rbd-operator discover") -> int:
    args = parser(prog).parse_args(argv)
    try:
        text, diff = _run(args)
    except mapping.DiscoverError as exc:
        text = "\n".join(mapping.printable(line) for line in str(exc).split("\n"))  # hosts' bytes are hostile
        print(f"{prog}: {text}", file=sys.stderr)
        return FAILED
    if args.diff:
        print("\n".join(diff.lines))
        return DIFF_CHANGES if diff.changes else 0
    sys.stdout.write(text)
    return 0


def _run(args: argparse.Namespace) -> tuple[str, Any]:
    from .adapters import discover as reader  # noqa: PLC0415 - librados only when it runs

    if args.host and not (args.ssh_key and args.known_hosts):
        raise mapping.DiscoverError("--host needs --ssh-key and --known-hosts (host keys are pinned, never learnt)")
    cluster = reader.connect(args.ceph_conf, args.keyring, args.entity)
    try:
        facts = reader.read_cluster(cluster, args.client, args.pool)
        hosts = _hosts(args, reader)
        facts = mapping.ClusterFacts(**{**facts.__dict__, "hosts": tuple(hosts)})
        opts = mapping.Options(namespace=args.namespace, admin_secret=args.admin_secret,
                               ssh_key_secret=args.ssh_key_secret, secret_uuid=args.libvirt_secret_uuid,
                               skip_unmappable=args.skip_unmappable)
        result = mapping.discover(facts, opts)
        header = [f"rbd-operator discover: cluster {facts.fsid}, client.{facts.client}, "
                  f"{len(facts.pools)} pool(s), {len(hosts)} host(s); kubectl apply -f this file"]
        diff = _diff(args, result, cluster, facts) if args.diff else None
    finally:
        cluster.shutdown()
    return mapping.render(result, header), diff


def _hosts(args: argparse.Namespace, reader: Any) -> list[mapping.HostFacts]:
    if not args.host:
        return []
    try:
        with open(args.ssh_key, encoding="utf-8") as fh:
            private_key = fh.read()
    except OSError as exc:
        raise mapping.DiscoverError(f"--ssh-key {args.ssh_key}: {exc.strerror}") from None
    return [reader.read_host(addr, args.ssh_port, args.ssh_user, private_key,
                             reader.pinned_key(args.known_hosts, addr, args.ssh_port), args.client)
            for addr in args.host]


class Diff:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.changes = 0

    def add(self, line: str, change: bool) -> None:
        self.lines.append(line)
        self.changes += change


def _diff(args: argparse.Namespace, result: mapping.Result, cluster: Any, facts: mapping.ClusterFacts) -> Diff:
    """Kubernetes: each document absent (created), or present with a spec that differs (changed), or the same.
    Ceph: each storage's pool and client plan (reconcile/storage_plan.py) against the cluster as it is now;
    ownership markers (the owner records adoption writes) are listed apart from changes."""
    from .adapters.discover import ceph_observed  # noqa: PLC0415

    api, identity = _kube(args.kubeconfig)
    out = Diff()
    for doc in result.documents:
        live = _get(api, doc)
        namespace = doc.body["metadata"].get("namespace")
        where = f"{doc.kind} {namespace + '/' if namespace else ''}{doc.name}"
        if live is None:
            out.add(f"kube: {where}: does not exist (created)", True)
        else:
            differs = mapping.spec_differences(doc.body["spec"], live.get("spec") or {})
            out.add(f"kube: {where}: " + ("spec differs: " + "; ".join(differs) if differs else "unchanged"),
                    bool(differs))
        if doc.kind == "RbdStorage":
            pools, caps, owners = ceph_observed(cluster, f"client.{facts.client}")
            me = (live or {}).get("metadata", {}).get("uid") or "(new RbdStorage)"
            markers, changes = mapping.ceph_plan(doc, pools, caps, owners, me, identity)
            for marker in markers:
                out.add(f"ceph: {where}: ownership marker: {marker}", False)
            for change in changes:
                out.add(f"ceph: {where}: change: {change}", True)
            if not changes:
                out.add(f"ceph: {where}: pool and client unchanged", False)
    out.lines.append(f"# {out.changes} change(s)")
    return out


def _kube(kubeconfig: str | None) -> tuple[Any, str | None]:
    from kubernetes import client, config  # noqa: PLC0415
    from kubernetes.client.rest import ApiException  # noqa: PLC0415

    try:
        config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG") or None)
    except Exception as exc:  # noqa: BLE001 - reported, nothing done
        raise mapping.DiscoverError(f"--diff needs a cluster: {type(exc).__name__}: {mapping.shown(str(exc))}") from None
    api = client.ApiClient()
    try:
        identity = client.CoreV1Api(api).read_namespace("kube-system").metadata.uid
    except ApiException as exc:
        raise mapping.DiscoverError(f"--diff: reading namespace kube-system: HTTP {exc.status}") from None
    return api, identity


_PLURALS = {"RbdStorage": "rbdstorages", "RbdImage": "rbdimages", "RbdSnapshot": "rbdsnapshots",
            "HypervisorNode": "hypervisornodes"}


def _get(api: Any, doc: mapping.Document) -> dict | None:
    from kubernetes import client  # noqa: PLC0415
    from kubernetes.client.rest import ApiException  # noqa: PLC0415

    group, version = mapping.API_VERSION.split("/")
    custom = client.CustomObjectsApi(api)
    namespace = doc.body["metadata"].get("namespace")
    try:
        if namespace:
            return custom.get_namespaced_custom_object(group, version, namespace, _PLURALS[doc.kind], doc.name)
        return custom.get_cluster_custom_object(group, version, _PLURALS[doc.kind], doc.name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise mapping.DiscoverError(f"--diff: reading {doc.kind} {doc.name}: HTTP {exc.status}") from None


def kubectl_main() -> int:
    """`kubectl rbd discover ...` (the plugin binary kubectl-rbd)."""
    argv = sys.argv[1:]
    if not argv or argv[0] != "discover":
        print("usage: kubectl rbd discover --ceph-conf FILE --keyring FILE --namespace NS [...] "
              "(kubectl rbd discover --help)", file=sys.stderr)
        return FAILED
    return discover_main(argv[1:], prog="kubectl rbd discover")


