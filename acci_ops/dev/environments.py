"""The dev instance's two environments, staging then production, as an environments file.

Both are databases on the embedded PostgreSQL (``acci_staging`` and ``acci``), backed up to the dev
``file://`` store, drilled against the local stand-in of the app (``acci_ops.dev.fakeapp``, as DR in dev
always was) and released as containers: each has a Compose project of the release fixture app
(``acci_ops.dev.release_app``, caddy with live metrics) on the private podman service, named by its own
``releases.compose_files``. Staging takes every version whose image passed its checks by itself; production
only through the ``release`` job with ``confirm: production`` (or its promotion sensor, off by default).

The app's two ports per environment on 127.0.0.1: ``PORT`` (the app: ``/``, ``/health``, ``/version``) and
``PORT + 1`` (caddy's live Prometheus metrics, what the analysis scrapes). The analysis is the default
one (``count`` measurements, 5xx ratio and p95 latency from caddy's histogram, ``/health``) with a shorter
interval, so a release is judged in about half a minute; both environments send the small load step,
since nothing else sends the dev app traffic (without it every analysis would be inconclusive).

    python -m acci_ops.dev.environments DEV_DIR [--staging-port 8180] [--production-port 8190] [--interval 5]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from acci_ops.dev.release_stack import compose_file

ENVIRONMENTS = ("staging", "production")
HISTOGRAM = "caddy_http_request_duration_seconds"  # caddy's, by status code
COUNT = 6
LOAD_RATE = 5


def environments(dev_dir: Path, ports: dict[str, int], interval_seconds: float, app_command: str) -> dict:
    """The environments file's content. Every URL that holds a password is named by its variable, which
    ``./run dev`` exports (``ACCI_DEV_STAGING_DATABASE_URL``, ``ACCI_DATABASE_URL``, the Redis URLs)."""
    body: dict[str, dict] = {}
    for name in ENVIRONMENTS:
        port = ports[name]
        body[name] = {
            "database_url_env": "ACCI_DATABASE_URL" if name == "production" else "ACCI_DEV_STAGING_DATABASE_URL",
            "backup_url": f"file://{dev_dir / 'backups'}",
            "dr": {"platform": "local", "local_command": app_command,
                   "redis_url_env": "ACCI_REDIS_URL" if name == "production" else "ACCI_DEV_STAGING_REDIS_URL",
                   "drill_redis_url_env": "ACCI_DRILL_REDIS_URL", "required_metrics": ["acci_up"]},
            "releases": {
                "compose_files": [str(dev_dir / "release" / f"{name}.yml")],
                "compose_project": f"acci-dev-{name}",
                "app_url": f"http://127.0.0.1:{port}",
                "metrics_url": f"http://127.0.0.1:{port + 1}/metrics",
                "load": True,
                "timeout_seconds": 120,
                "analysis": {"interval_seconds": interval_seconds, "count": COUNT,
                             "default_metrics": {"error_metric": f"{HISTOGRAM}_count", "latency_metric": HISTOGRAM},
                             # 5 requests a second for the whole window: every measurement sees traffic.
                             "load": {"requests": int(LOAD_RATE * interval_seconds * (COUNT + 1)),
                                      "rate": LOAD_RATE, "paths": ["/", "/health"]}},
            },
        }
    return {"environments": body, "promotion_order": list(ENVIRONMENTS)}


def write(dev_dir: Path, ports: dict[str, int], interval_seconds: float, app_command: str) -> Path:
    """Write ``DEV_DIR/environments.yaml`` and each environment's Compose file under ``DEV_DIR/release``
    (rewritten at every start, so a changed port takes effect); return the environments file."""
    release = dev_dir / "release"
    release.mkdir(parents=True, exist_ok=True)
    for name in ENVIRONMENTS:
        (release / f"{name}.yml").write_text(compose_file(ports[name], ports[name] + 1))
    path = dev_dir / "environments.yaml"
    text = "# Written by ./run dev at every start (acci_ops/dev/environments.py); edits are lost.\n"
    path.write_text(text + yaml.safe_dump(environments(dev_dir, ports, interval_seconds, app_command),
                                          sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dev_dir", type=Path)
    parser.add_argument("--staging-port", type=int, default=8180)
    parser.add_argument("--production-port", type=int, default=8190)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between the analysis's measurements")
    parser.add_argument("--app-command", default=f"{sys.executable} -m acci_ops.dev.fakeapp",
                        help="DR's local stand-in of the app")
    args = parser.parse_args(argv)
    ports = {"staging": args.staging_port, "production": args.production_port}
    used = [p for port in ports.values() for p in (port, port + 1)]
    if len(set(used)) != len(used) or not all(0 < p < 65536 for p in used):
        parser.error(f"the staging and production ports and the ones after them must be four different ports, "
                     f"got {', '.join(map(str, used))}")
    print(write(Path(os.path.abspath(args.dev_dir)), ports, args.interval, args.app_command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
