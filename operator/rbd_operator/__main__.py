"""`rbd-operator` / `python -m rbd_operator`: run the kopf handlers out of cluster or in a pod."""

from __future__ import annotations

import argparse
import asyncio  # noqa: F401 - the annotation
import logging
import os
import secrets
import sys
import time


class RedactUrls(logging.Filter):
    """Query strings of URLs out of every log line and posted event (kopf's debug lines carry whole bodies,
    spec.source.url included: a presigned URL's token must not reach the log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from .api.urls import redact_text

        message = record.getMessage()
        if "://" in message:
            record.msg, record.args = redact_text(message), None
        return True


def install_redaction() -> None:
    redacting = RedactUrls()
    for logger in (logging.getLogger(), logging.getLogger("kopf.objects")):
        logger.addFilter(redacting)
        for handler in logger.handlers:
            handler.addFilter(redacting)


def _tune_gc() -> None:
    """kopf allocates thousands of short-lived containers per watch event: with Python's default
    thresholds the cyclic collector runs every 700 allocations and its full passes rescan every index
    entry of every object. Everything loaded so far is frozen out of its scans, and the young
    generation is collected every 20,000 allocations instead (RBD_OPERATOR_GC_THRESHOLD)."""
    import gc

    threshold = int(os.environ.get("RBD_OPERATOR_GC_THRESHOLD", "20000"))
    if threshold > 0:
        gc.collect()
        gc.freeze()
        _, second, third = gc.get_threshold()
        gc.set_threshold(threshold, second, third)


def _event_loop() -> "asyncio.AbstractEventLoop | None":
    """uvloop when installed (a dependency of the package; the image ships it): the event loop runs
    kopf's per-event work for every object, and uvloop's loop, transports and TLS cost less CPU per
    event than asyncio's. RBD_OPERATOR_EVENT_LOOP=asyncio picks the standard loop."""
    if os.environ.get("RBD_OPERATOR_EVENT_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop()


def main(argv: list[str] | None = None) -> int:
    """`rbd-operator [run] [options]` runs the operator (the default); `rbd-operator discover ...` prints the
    manifests of an existing installation (cli.py)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["discover"]:
        from .cli import discover_main

        return discover_main(argv[1:])
    return run(argv[1:] if argv[:1] == ["run"] else argv)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rbd-operator", description=__doc__)
    parser.add_argument("--kubeconfig", help="kubeconfig to use (default: in-cluster, then $KUBECONFIG)")
    parser.add_argument("--namespace", help="namespace for the client Secrets the operator publishes "
                        "(default: $RBD_OPERATOR_NAMESPACE, the pod's namespace, or rbd-operator)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                        help="kopf liveness endpoint (default: %(default)s; 'none' to disable)")
    parser.add_argument("--metrics", default=os.environ.get("RBD_OPERATOR_METRICS", "0.0.0.0:9090"),
                        help="address of the Prometheus /metrics endpoint (default: %(default)s; 'none' to disable)")
    parser.add_argument("--peering", default=os.environ.get("RBD_OPERATOR_PEERING", ""),
                        help="kopf peering name shared by the replicas (ClusterKopfPeering, deploy/peering.yaml); "
                        "default: none, this process runs alone")
    parser.add_argument("--shard", default=os.environ.get("RBD_OPERATOR_SHARD", ""),
                        help="handle only objects labelled rbd-operator.io/shard=SHARD; the peering name gets "
                        "'-SHARD' appended (docs/scaling.md); default: no shard, every object")
    parser.add_argument("--priority", type=int, default=None,
                        help="peering priority (default: from the start time: the oldest replica is the active one)")
    parser.add_argument("--log-format", choices=("plain", "full", "json"), default="plain")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = os.path.abspath(args.kubeconfig)
    if args.namespace:
        os.environ["RBD_OPERATOR_NAMESPACE"] = args.namespace
    os.environ["RBD_OPERATOR_METRICS"] = args.metrics
    from .reconcile.shard import ShardError, parse_shard, peering_name

    try:
        shard = parse_shard(args.shard)
    except ShardError as exc:
        parser.error(str(exc))
    os.environ["RBD_OPERATOR_SHARD"] = shard or ""  # read by adapters/shard.py when the handlers are imported
    peering = peering_name(args.peering, shard)

    import kopf

    from . import handlers  # noqa: F401 - registers the handlers
    from . import heapdump, kopf_fixes
    from .adapters import replica

    kopf.configure(verbose=args.verbose, debug=args.debug, log_format=kopf.LogFormat[args.log_format.upper()])
    if not args.debug:  # paramiko narrates every channel at INFO
        logging.getLogger("paramiko").setLevel(logging.WARNING)
    install_redaction()
    # The older replica keeps working: a restarted one comes back below it (kopf pauses a replica when
    # a higher priority appears, but does not stop the handlers it is running, so a newcomer must never
    # preempt a working replica). Microseconds make a tie (which kopf resolves by pausing all) unlikely;
    # the random low bits make it impossible in practice.
    priority = args.priority if args.priority is not None else \
        ((2**52 - time.time_ns() // 1000) << 8) | secrets.randbits(8)
    kopf_fixes.apply()
    _tune_gc()
    heapdump.install()
    kopf.run(
        loop=_event_loop(),
        clusterwide=True,
        standalone=not peering,
        peering_name=peering,
        priority=priority if peering else None,
        identity=replica.IDENTITY,  # the monitor of adapters/replica.py finds our peering entry by it
        liveness_endpoint=None if args.liveness == "none" else args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
