"""A private Docker-compatible API (``podman system service``) for tests and ``./run dev``.

docker-compose, the docker CLI and docker-py need a Docker engine; podman's API service is one that
needs no daemon of its own, no containerd and no ``/run/docker``. It runs with configuration and
storage of ours, all under one short directory (unix socket paths must stay under 108 bytes and
podman refuses a run root over 50 characters, so the directory is made under /tmp): containers.conf
(runtime runc; explicit ``default_ulimits``, without which runc cannot set RLIMIT_NOFILE here;
cgroupfs, as there is no systemd; events to a file), storage.conf (vfs graph root and run root) and
registries.conf (no unqualified search; the plain-HTTP registries named as insecure), handed to the
child as ``CONTAINERS_CONF`` / ``CONTAINERS_STORAGE_CONF`` / ``CONTAINERS_REGISTRIES_CONF``, so
/etc/containers is read for nothing but its signature policy and never changed. Networks are
configured under the directory too; what the kernel keeps for a container on a bridge (its netns,
iptables rules, CNI's address leases) is global and is released when the container is removed,
which ``stop`` does first.

    python -m acci_ops.dev.podman_service [DIR] [--insecure-registry HOST:PORT]   # prints DOCKER_HOST
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from acci_ops.dev.servers import remove_tree_unmounting, require

PACKAGE = "apt-get install -y podman runc containernetworking-plugins"
ULIMITS = ("nofile=20000:20000", "nproc=32768:32768")
START_TIMEOUT = 30.0


def _toml(value: object) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:]) or "(no output)"


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the service's unix socket (what DOCKER_HOST=unix://... clients speak)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass
class PodmanService:
    """A running ``podman system service``; ``docker_host`` is its ``unix://`` DOCKER_HOST."""

    base: Path
    process: subprocess.Popen
    log: Path

    @property
    def socket(self) -> Path:
        return self.base / "podman.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        """What a podman CLI needs to see this service's containers and images directly."""
        conf = self.base / "conf"
        return {"CONTAINERS_CONF": str(conf / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
                "CONTAINERS_REGISTRIES_CONF": str(conf / "registries.conf")}

    def api(self, method: str, path: str, timeout: float = 30) -> tuple[int, bytes]:
        """One request to the Docker-compatible API: (status, body)."""
        connection = _UnixConnection(str(self.socket), timeout)
        try:
            connection.request(method, path)
            answer = connection.getresponse()
            return answer.status, answer.read()
        finally:
            connection.close()

    def containers(self) -> list[dict]:
        """Every container of this service (running or not), as the Docker API lists them."""
        status, body = self.api("GET", "/containers/json?all=1")
        if status != 200:
            raise RuntimeError(f"podman service {self.docker_host}: listing containers answered HTTP {status}")
        return json.loads(body or b"[]")

    def remove_containers(self) -> list[str]:
        """Force-remove every container (with its anonymous volumes); the names removed."""
        removed = []
        for container in self.containers():
            quoted = urllib.parse.quote(container["Id"])
            status, body = self.api("DELETE", f"/containers/{quoted}?force=1&v=1", timeout=60)
            if status not in (204, 200, 404):
                raise RuntimeError(f"podman service: removing container {container['Id'][:12]} answered HTTP "
                                   f"{status}: {body[:200].decode(errors='replace')}")
            removed.extend(name.lstrip("/") for name in container.get("Names") or [container["Id"][:12]])
        return removed

    def stop(self, *, remove_containers: bool = True) -> None:
        """Remove the containers (they would otherwise keep their conmon, netns and iptables rules),
        stop the service (TERM, KILL after 10 s), unmount what is still mounted under ``base`` and
        delete it."""
        try:
            if remove_containers and self.process.poll() is None:
                self.remove_containers()
        finally:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            remove_tree_unmounting(self.base)


def write_configs(base: Path, insecure_registries: Sequence[str] = ()) -> Path:
    """containers.conf, storage.conf and registries.conf under ``base/conf``; returns that directory."""
    conf, storage, run = base / "conf", base / "storage", base / "run"
    for directory in (conf, storage, run, base / "tmp", conf / "networks"):
        directory.mkdir(parents=True, exist_ok=True)
    ulimits = ", ".join(_toml(u) for u in ULIMITS)
    (conf / "containers.conf").write_text(
        "[containers]\n"
        f"default_ulimits = [{ulimits}]\n"
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f"events_logfile_path = {_toml(run / 'events.log')}\n"
        f"tmp_dir = {_toml(run / 'libpod')}\n"
        f"static_dir = {_toml(storage / 'libpod')}\n"
        f"volume_path = {_toml(storage / 'volumes')}\n"
        "[network]\n"
        f"network_config_dir = {_toml(conf / 'networks')}\n")
    (conf / "storage.conf").write_text(
        "[storage]\n"
        'driver = "vfs"\n'
        f"runroot = {_toml(run / 'storage')}\n"
        f"graphroot = {_toml(storage)}\n")
    registries = ["unqualified-search-registries = []"]
    for host in insecure_registries:
        if not host or any(c in host for c in "\"\\\n/ "):
            raise ValueError(f"insecure registry {host!r} must be HOST or HOST:PORT")
        registries += ["", "[[registry]]", f"location = {_toml(host)}", "insecure = true"]
    (conf / "registries.conf").write_text("\n".join(registries) + "\n")
    return conf


def start_podman_service(base: Path | None = None, *, insecure_registries: Sequence[str] = (),
                         timeout: float = START_TIMEOUT) -> PodmanService:
    """Start ``podman system service --time=0`` on ``base/podman.sock`` (default: a new short /tmp
    directory) and return once ``GET /_ping`` answers. ``insecure_registries``: plain-HTTP registries
    (``127.0.0.1:PORT``) it may pull from. Must run as root (rootful podman: published ports, runc)."""
    podman = require("podman", PACKAGE)
    require("runc", PACKAGE)
    base = Path(base or tempfile.mkdtemp(prefix="acci-pd-", dir="/tmp")).resolve()
    base.mkdir(parents=True, exist_ok=True)
    if len(str(base / "run" / "storage")) > 48:
        raise ValueError(f"{base} is too long for podman's run root and the API socket (keep it under ~30 characters)")
    conf = write_configs(base, insecure_registries)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(base),
           "TMPDIR": str(base / "tmp"), "XDG_CONFIG_HOME": str(conf / "xdg"),
           "CONTAINERS_CONF": str(conf / "containers.conf"),
           "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
           "CONTAINERS_REGISTRIES_CONF": str(conf / "registries.conf")}
    log = base / "podman.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([podman, "system", "service", "--time=0", f"unix://{base / 'podman.sock'}"],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   start_new_session=True)
    service = PodmanService(base, process, log)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            tail = _tail(log)
            service.stop(remove_containers=False)
            raise RuntimeError(f"podman system service exited with code {process.returncode}: {tail}")
        try:
            if service.socket.exists() and service.api("GET", "/_ping", timeout=2)[0] == 200:
                return service
        except OSError:
            pass
        if time.monotonic() > deadline:
            tail = _tail(log)
            service.stop(remove_containers=False)
            raise RuntimeError(f"podman system service did not answer /_ping within {timeout:g} s: {tail}")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a private podman API service in the foreground.")
    parser.add_argument("base", type=Path, nargs="?", default=None, help="its directory (default: a new /tmp one)")
    parser.add_argument("--insecure-registry", action="append", default=[], help="HOST:PORT of a plain-HTTP registry")
    args = parser.parse_args()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    service = start_podman_service(args.base, insecure_registries=args.insecure_registry)
    print(f"DOCKER_HOST={service.docker_host}", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        service.stop()


if __name__ == "__main__":
    main()
