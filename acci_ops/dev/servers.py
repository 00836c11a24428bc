"""Throwaway local servers for development, benchmarks and tests: moto's S3 server and Redis.

They are started as the executables (``moto_server``, ``redis-server``) and spoken to over real
TCP, exactly as a deployment talks to S3 and Redis; nothing here imports moto, so the product does
not depend on it. A missing executable fails with one line naming the package to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from acci_ops.lib.core.net import free_port


def require(binary: str, package: str) -> str:
    """The path of ``binary`` on PATH, or a RuntimeError saying how to install it."""
    found = shutil.which(binary)
    if not found:
        raise RuntimeError(f"{binary} is missing: install it with `{package}` (./run test does this)")
    return found


def remove_tree_unmounting(base: Path) -> None:
    """Remove a container engine's directory: first every mount under it (overlay layers, a netns,
    deepest first, lazily), which ``rmtree`` could not remove and would descend into."""
    prefix = str(base) + "/"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        lines = []
    mounts = [parts[1] for parts in (line.split() for line in lines) if len(parts) > 1 and parts[1].startswith(prefix)]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def moto_server_executable() -> str:
    """``moto_server`` from PATH or next to this interpreter (the venv's bin is often not on PATH)."""
    moto = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    if not os.path.exists(moto):
        raise RuntimeError("moto_server is missing: pip install 'moto[server]' (./run test does this)")
    return moto


def stop_process(process: subprocess.Popen) -> None:
    """TERM, then KILL after 10 s: every server dev and the tests start is stopped this way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class S3Server:
    """A moto S3 server on 127.0.0.1; boto3 reaches it through ``endpoint_url`` (path-style)."""

    endpoint: str
    process: subprocess.Popen

    def stop(self) -> None:
        stop_process(self.process)


def start_moto(log_path: Path, *, env: Mapping[str, str] | None = None, ready_check: str = "http") -> S3Server:
    """Start ``moto_server`` on a free port, logging to ``log_path``; return once it answers.

    ``ready_check="tcp"`` only waits for the port to accept connections (for a server that counts
    every request, e.g. one with ``INITIAL_NO_AUTH_ACTION_COUNT``); ``env`` is the child's whole
    environment (None: inherit)."""
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([moto_server_executable(), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=None if env is None else dict(env))
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if ready_check == "tcp":
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            else:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            return S3Server(endpoint, proc)
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}; see {log_path}") from None
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"moto_server did not answer on {endpoint} within 30 s; see {log_path}")


@dataclass
class RedisServer:
    """A redis-server on 127.0.0.1 without persistence."""

    port: int
    process: subprocess.Popen

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        stop_process(self.process)


def start_redis(workdir: Path) -> RedisServer:
    """Start ``redis-server`` on a free port (no snapshots, no AOF, files in ``workdir``); return once it
    answers PING."""
    import redis

    binary = require("redis-server", "apt-get install -y redis-server")
    port = free_port()
    with open(workdir / "redis.log", "wb") as log:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                 "no", "--dir", str(workdir)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis(port=port, socket_connect_timeout=1).ping()
            return RedisServer(port, proc)
        except redis.RedisError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"redis-server did not start; see {workdir / 'redis.log'}") from None
            time.sleep(0.1)
