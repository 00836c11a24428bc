"""What a Dockerfile's RUN steps can reach: nothing by default, the host's network only when
ACCI_IMAGE_BUILD_NETWORK says so; and the settings that would otherwise fail only after a whole
build (a network buildah has no use for, a platform it cannot build) refused when they load.
Real buildah with runc, a real TCP server on the host's 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from acci_ops.dev.fixture_app import amd64_busybox
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.images.build import build_argv, build_index, check_build_network
from acci_ops.lib.images.source import Checkout, checkout
from acci_ops.lib.images.tools import ContainerTools
from acci_ops.settings import load_settings

HOST_PLATFORM = ("linux/amd64",)  # the static busybox is the host's (amd64); no qemu for other platforms


class Listener:
    """A TCP server on the host's 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.peers: list[tuple[str, int]] = []
        self._sentinel = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            if conn.recv(16) == b"sentinel":
                self._sentinel.set()
            else:
                self.peers.append(peer)
            conn.close()

    def settled(self) -> list[tuple[str, int]]:
        """The probes accepted so far: a sentinel connection made now is accepted after every
        connection already queued, so once it is seen nothing earlier is still pending."""
        self._sentinel.clear()
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(b"sentinel")
        assert self._sentinel.wait(10)
        return list(self.peers)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def probe_repo(path: Path, port: int) -> str:
    """``FROM scratch`` + the host's static busybox, a RUN step that connects to the host's
    127.0.0.1:<port> and prints whether it could (the step itself always succeeds)."""
    path.mkdir(parents=True)
    shutil.copyfile(amd64_busybox(), path / "busybox")
    (path / "busybox").chmod(0o755)
    script = f"/bin/busybox nc -w 2 127.0.0.1 {port} </dev/null; echo probe-exit-$?"
    (path / "Dockerfile").write_text(
        f"FROM scratch\nCOPY busybox /bin/busybox\nRUN {json.dumps(['/bin/busybox', 'sh', '-c', script])}\n")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "PATH": "/usr/bin:/bin", "HOME": str(path)}
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "."], ["git", "commit", "-q", "-m", "probe"]):
        subprocess.run(argv, cwd=path, env=env, check=True, capture_output=True)
    return str(path)


def test_run_steps_reach_no_host_service_by_default(listener: Listener, container_tools: ContainerTools,
                                                    tmp_path: Path) -> None:
    """Host platform only (the RUN step runs the host's amd64 busybox)."""
    source = checkout(probe_repo(tmp_path / "repo", listener.port), "main", tmp_path / "src")
    lines: list[str] = []
    build_index(container_tools, source, HOST_PLATFORM, workdir=tmp_path / "none", log=lines.append)
    assert any("probe-exit-" in line and "probe-exit-0" not in line for line in lines)  # the step ran, failed
    assert listener.settled() == []
    lines.clear()
    build_index(container_tools, source, HOST_PLATFORM, workdir=tmp_path / "host", log=lines.append, network="host")
    assert any("probe-exit-0" in line for line in lines)
    assert len(listener.settled()) == 1  # the same probe does reach it on the host's network


def test_a_named_network_must_be_defined_before_anything_is_built(container_tools: ContainerTools,
                                                                  tmp_path: Path, fixture_repo) -> None:  # noqa: ANN001
    source = checkout(fixture_repo.url, "v1.0.0", tmp_path / "src")
    defs = tmp_path / "networks"
    defs.mkdir()
    with pytest.raises(ConfigError) as err:
        build_index(container_tools, source, HOST_PLATFORM, workdir=tmp_path / "w", network="acci-fetch",
                    network_dirs=(defs,))
    assert str(err.value) == (f"ACCI_IMAGE_BUILD_NETWORK names podman network 'acci-fetch', which is not defined "
                              f"here (no definition named so in {defs})")
    assert not (tmp_path / "w").exists()
    (defs / "90-acci-fetch.conflist").write_text(json.dumps({"cniVersion": "0.4.0", "name": "acci-fetch",
                                                             "plugins": [{"type": "loopback"}]}))
    built = build_index(container_tools, source, HOST_PLATFORM, workdir=tmp_path / "w", network="acci-fetch",
                        network_dirs=(defs,))  # no RUN step: the network is configured, never started
    assert list(built.platforms) == list(HOST_PLATFORM)


def test_the_build_argv_isolates_run_steps(tmp_path: Path) -> None:
    storage = ContainerTools(tmp_path / "t")
    source = Checkout(tmp_path, "c" * 40, 0, "main", False, None, "r")
    argv = build_argv(storage, source, HOST_PLATFORM, list_name="l", dockerfile=tmp_path / "Dockerfile",
                      context=tmp_path, labels={})
    assert argv[:5] == ["build", "--isolation", "oci", "--network", "none"]
    assert build_argv(storage, source, HOST_PLATFORM, list_name="l", dockerfile=tmp_path / "Dockerfile",
                      context=tmp_path, labels={}, network="host")[3:5] == ["--network", "host"]


@pytest.mark.parametrize("value", ["ns:/proc/1/ns/net", "container:abc", "a b", "", "-net"])
def test_a_build_network_that_is_no_network_is_one_line(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_build_network(value)
    assert str(err.value) == (f"ACCI_IMAGE_BUILD_NETWORK {value.strip()!r} is not a network: use none (the "
                              "default: RUN steps get no network), host, or the name of a podman network")


def settings_with(**variables: str):  # noqa: ANN202
    return load_settings({"ACCI_DATABASE_URL": "postgresql://acci@db.example.com/acci", **variables})


def test_build_settings_are_checked_when_settings_load() -> None:
    assert settings_with().images.build_network == "none"
    assert settings_with(ACCI_IMAGE_BUILD_NETWORK="host").images.build_network == "host"
    with pytest.raises(ConfigError, match=r"^ACCI_IMAGE_BUILD_NETWORK 'ns:/x' is not a network"):
        settings_with(ACCI_IMAGE_BUILD_NETWORK="ns:/x")
    for platform in ("linux/arm/v6", "linux/386"):
        with pytest.raises(ConfigError) as err:
            settings_with(ACCI_IMAGE_PLATFORMS=f"linux/amd64,{platform}")
        assert str(err.value) == (f"unsupported platform '{platform}' in ACCI_IMAGE_PLATFORMS; supported: "
                                  "linux/amd64, linux/arm64, linux/arm/v7, linux/ppc64le, linux/s390x, linux/riscv64")
