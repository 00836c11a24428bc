"""A stand-in for ACCI Framework (a Rust binary we cannot run here) with the same contract:
``/health`` is 200 only when its PostgreSQL has the app's tables and Redis answers; ``/metrics``
serves real Prometheus exposition text. Configured like the real app, through DATABASE_URL,
REDIS_URL and PORT. Used by the DR tests and by ``./run dev``'s drills.

    python -m acci_ops.dev.fakeapp [--pidfile PATH]

``--pidfile`` appends the process id to PATH, so a test stops exactly the apps it started (a
recovery never tears its app down) and no stand-in of another test or user.
"""

from __future__ import annotations

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

REQUIRED_TABLES = ("tenants", "users", "sessions")
REGISTRY = CollectorRegistry()
REQUESTS = Counter("acci_http_requests", "HTTP requests served", ["path", "status"], registry=REGISTRY)
USERS = Gauge("acci_users", "Users in the database", registry=REGISTRY)
UP = Gauge("acci_up", "1 when the app's dependencies answer", registry=REGISTRY)


def health() -> tuple[int, dict]:
    problems = []
    try:
        with psycopg.connect(os.environ["DATABASE_URL"], connect_timeout=3) as conn:
            present = {r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
            missing = [t for t in REQUIRED_TABLES if t not in present]
            if missing:
                problems.append(f"missing tables: {', '.join(missing)}")
            else:
                USERS.set(conn.execute("SELECT count(*) FROM users").fetchone()[0])
    except psycopg.Error as exc:
        problems.append(f"database: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    try:
        redis.Redis.from_url(os.environ["REDIS_URL"], socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        problems.append(f"redis: {exc}")
    UP.set(0 if problems else 1)
    return (503, {"status": "unhealthy", "problems": problems}) if problems else (200, {"status": "ok"})


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/health":
            status, body = health()
            payload, kind = json.dumps(body).encode(), "application/json"
        elif self.path == "/metrics":
            health()
            status, payload, kind = 200, generate_latest(REGISTRY), "text/plain; version=0.0.4"
        else:
            status, payload, kind = 404, b"not found", "text/plain"
        REQUESTS.labels(self.path, str(status)).inc()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description="stand-in for ACCI Framework")
    parser.add_argument("--pidfile", help="append this process's id to the file")
    args = parser.parse_args()
    if args.pidfile:
        with open(args.pidfile, "a") as handle:
            handle.write(f"{os.getpid()}\n")
    server = ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), Handler)
    print(f"fake ACCI Framework listening on {server.server_address}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
