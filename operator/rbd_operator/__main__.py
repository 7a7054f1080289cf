"""`rbd-operator` / `python -m rbd_operator`: run the kopf handlers out of cluster or in a pod."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rbd-operator", description=__doc__)
    parser.add_argument("--kubeconfig", help="kubeconfig to use (default: in-cluster, then $KUBECONFIG)")
    parser.add_argument("--namespace", help="namespace for the client Secrets the operator publishes "
                        "(default: $RBD_OPERATOR_NAMESPACE, the pod's namespace, or rbd-operator)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                        help="kopf liveness endpoint (default: %(default)s; 'none' to disable)")
    parser.add_argument("--log-format", choices=("plain", "full", "json"), default="plain")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = os.path.abspath(args.kubeconfig)
    if args.namespace:
        os.environ["RBD_OPERATOR_NAMESPACE"] = args.namespace

    import kopf

    from . import handlers  # noqa: F401 - registers the handlers

    kopf.configure(verbose=args.verbose, debug=args.debug, log_format=kopf.LogFormat[args.log_format.upper()])
    if not args.debug:  # paramiko narrates every channel at INFO
        logging.getLogger("paramiko").setLevel(logging.WARNING)
    kopf.run(
        clusterwide=True,
        standalone=True,
        liveness_endpoint=None if args.liveness == "none" else args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
