"""`python -m trainforge_operator`: run the operator (kopf) with its health and metrics endpoints."""

from __future__ import annotations

import argparse
import os
import random
from typing import Any

HEALTH_PATH = "/healthz"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m trainforge_operator",
                                     description="Reconcile TrainingJobs into KubeRay RayJob attempts.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=None,
                       help="watch this namespace (repeatable; default: TRAINFORGE_WATCH_NAMESPACES, else all)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    ha = parser.add_mutually_exclusive_group()
    ha.add_argument("--standalone", action="store_true", help="no peering: the only operator instance")
    ha.add_argument("--peering", default=env.get("TRAINFORGE_PEERING"),
                    help="kopf peering object shared by replicas (only the highest priority one acts)")
    parser.add_argument("--priority", type=int, default=int(env["TRAINFORGE_PRIORITY"]) if env.get(
        "TRAINFORGE_PRIORITY") else None, help="peering priority (default: random, so that replicas of one "
        "Deployment differ: kopf freezes peers of equal priority)")
    parser.add_argument("--health-port", type=int, default=int(env.get("TRAINFORGE_HEALTH_PORT", "8080")),
                        help=f"liveness endpoint http://ADDRESS:PORT{HEALTH_PATH} (0: off)")
    parser.add_argument("--health-address", default=env.get("TRAINFORGE_HEALTH_ADDRESS", "0.0.0.0"),
                        help="address the liveness endpoint listens on (default 0.0.0.0: the kubelet probes "
                        "the pod's IP; 127.0.0.1 keeps it to the pod)")
    parser.add_argument("--metrics-port", type=int, default=int(env.get("TRAINFORGE_METRICS_PORT", "8081")),
                        help="Prometheus /metrics (0: off)")
    parser.add_argument("--metrics-address", default=env.get("TRAINFORGE_METRICS_ADDRESS", "0.0.0.0"),
                        help="address /metrics listens on (default 0.0.0.0, for a scraper on the pod's IP)")
    parser.add_argument("--log-format", choices=["json", "plain", "full"],
                        default=env.get("TRAINFORGE_LOG_FORMAT", "json"))
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def run_kwargs(args: argparse.Namespace, watch_env: str = "") -> dict[str, Any]:
    """kopf.run's arguments for these options."""
    namespaces = args.namespace or [n.strip() for n in watch_env.split(",") if n.strip()]
    kwargs: dict[str, Any] = {"clusterwide": args.all_namespaces or not namespaces,
                              "namespaces": [] if args.all_namespaces else namespaces}
    if args.standalone or not args.peering:
        kwargs["standalone"] = True
    else:
        priority = args.priority if args.priority is not None else random.randint(1, 2**31 - 1)
        kwargs.update(peering_name=args.peering, priority=priority)
    if args.health_port:
        kwargs["liveness_endpoint"] = f"http://{url_host(args.health_address)}:{args.health_port}{HEALTH_PATH}"
    return kwargs


def url_host(address: str) -> str:
    """An address as a URL's host: an IPv6 one in brackets."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def main(argv: list[str] | None = None) -> None:
    import kopf

    args = parse_args(argv)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat[args.log_format.upper()])
    from . import handlers, metrics  # noqa: F401  (registers the handlers)

    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_address)
    kopf.run(**run_kwargs(args, os.environ.get("TRAINFORGE_WATCH_NAMESPACES", "")))


if __name__ == "__main__":
    main()
