"""A private Docker engine (Debian's ``docker.io`` 20.10 dockerd) with its own containerd, for tests.

Everything lives under one short directory of ours: containerd's root, state and sockets, dockerd's
data root, exec root, pid file and API socket (unix socket paths must stay under 108 bytes, so the
directory is made under /tmp, not under pytest's long temp paths). containerd is started by us, not
by dockerd, so this engine never attaches to a system containerd at /run/containerd/containerd.sock
(dockerd would silently use one if it were running) and never shares one with another engine.
No bridge and no iptables rules: none is needed, the smoke test runs its containers with
``--network none`` and probes them inside their own network namespace. dockerd still writes
``/run/docker/plugins``, ``/etc/docker/key.json`` and containerd's shim sockets under
``/run/containerd/s``; stopping it leaves its ``netns/default`` mount behind, which ``stop`` unmounts.

    python -m acci_ops.dev.dockerd   # run in the foreground until Ctrl-C, printing DOCKER_HOST
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from acci_ops.dev.servers import remove_tree_unmounting, require

PACKAGE = "apt-get install -y docker.io"


@dataclass
class DockerDaemon:
    """A running dockerd; ``host`` is its ``unix://`` DOCKER_HOST."""

    base: Path
    dockerd: subprocess.Popen
    containerd: subprocess.Popen
    logs: list[Path] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.base / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def stop(self) -> None:
        """Stop dockerd, then containerd (SIGTERM, SIGKILL after 20 s), unmount what dockerd left
        mounted under ``base`` and delete it."""
        for proc in (self.dockerd, self.containerd):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        remove_tree_unmounting(self.base)


def _containerd_config(base: Path) -> str:
    # What dockerd writes for the containerd it manages itself: no CRI plugin, everything under base.
    return (f'version = 2\nroot = "{base}/containerd/root"\nstate = "{base}/containerd/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{base}/containerd.sock"\n'
            f'[debug]\n  address = "{base}/containerd-debug.sock"\n  level = "warn"\n')


def _wait_for(ready: Callable[[], bool], proc: subprocess.Popen, what: str, log: Path, deadline: float) -> None:
    while not ready():
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise RuntimeError(f"{what} exited with code {proc.returncode}: {tail[0]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready within 30 s (its log: {log})")
        time.sleep(0.02)


def start_dockerd(base: Path | None = None) -> DockerDaemon:
    """Start containerd and dockerd under ``base`` (default: a new short /tmp directory); return once
    the Docker API answers. Must run as root (dockerd needs it)."""
    dockerd_bin = require("dockerd", PACKAGE)
    containerd_bin = require("containerd", PACKAGE)
    base = Path(base or tempfile.mkdtemp(prefix="acci-dk-", dir="/tmp")).resolve()
    base.mkdir(parents=True, exist_ok=True)
    if len(str(base / "exec" / "containerd" / "containerd.sock.ttrpc")) >= 100:
        raise ValueError(f"{base} is too long for unix socket paths (keep it under ~60 characters)")
    config = base / "containerd.toml"
    config.write_text(_containerd_config(base))
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(base),
           "TMPDIR": str(base)}
    deadline = time.monotonic() + 30
    containerd_log, dockerd_log = base / "containerd.log", base / "dockerd.log"
    with open(containerd_log, "wb") as out:
        containerd = subprocess.Popen([containerd_bin, "--config", str(config)], stdout=out,
                                      stderr=subprocess.STDOUT, env=env, start_new_session=True)
    daemon = None
    try:
        _wait_for((base / "containerd.sock").exists, containerd, "containerd", containerd_log, deadline)
        with open(dockerd_log, "wb") as out:
            dockerd = subprocess.Popen(
                [dockerd_bin, "--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
                 "--pidfile", str(base / "dockerd.pid"), "-H", f"unix://{base}/docker.sock",
                 "--containerd", str(base / "containerd.sock"), "--iptables=false", "--ip6tables=false",
                 "--bridge=none", "--storage-driver", "overlay2"],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        daemon = DockerDaemon(base, dockerd, containerd, [containerd_log, dockerd_log])
        _wait_for(lambda: b"API listen on" in dockerd_log.read_bytes(), dockerd, "dockerd", dockerd_log, deadline)
        return daemon
    except BaseException:
        if daemon:
            daemon.stop()
        else:
            containerd.kill()
            containerd.wait()
            shutil.rmtree(base, ignore_errors=True)
        raise


def main() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    daemon = start_dockerd(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    print(f"DOCKER_HOST={daemon.host}", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
