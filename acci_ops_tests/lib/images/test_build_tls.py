"""ACCI_REGISTRY_TLS_VERIFY=false is for the target registry only: a base image on that (plain
http) registry still builds, a base image on any other plain-http registry is refused by buildah
with TLS on. Real buildah and two real docker-registry servers on 127.0.0.1."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from acci_ops.dev.registry import LocalRegistry, start_registry
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.images.build import BuildFailed, build_argv, build_index, configure_build
from acci_ops.lib.images.source import Checkout, checkout
from acci_ops.lib.images.tools import ContainerTools

HOST_PLATFORM = ("linux/amd64",)
BASE = "tls/base:1"


@pytest.fixture(scope="module")
def other_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A second plain-http registry: not the target, so never exempt from TLS."""
    server = start_registry(tmp_path_factory.mktemp("other-registry"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bases(container_tools: ContainerTools, registry: LocalRegistry, other_registry: LocalRegistry,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The same tiny base image (FROM scratch + a file) on the target registry and on the other one."""
    work = tmp_path_factory.mktemp("tls-base")
    (work / "base.txt").write_text("base\n")
    (work / "Dockerfile").write_text("FROM scratch\nCOPY base.txt /base.txt\n")
    local = "localhost/acci-tls-base:1"
    container_tools.buildah("build", "--isolation", "chroot", "--timestamp", "0", "-t", local, str(work))
    refs = {}
    for name, server in (("target", registry), ("other", other_registry)):
        refs[name] = f"{server.host}/{BASE}"
        container_tools.buildah("push", "--tls-verify=false", local, f"docker://{refs[name]}")
    container_tools.buildah("rmi", local, check=False)
    return refs


def app(path: Path, base: str) -> str:
    path.mkdir(parents=True)
    (path / "Dockerfile").write_text(f"FROM {base}\nCOPY hello.txt /hello.txt\n")
    (path / "hello.txt").write_text("hello\n")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "PATH": "/usr/bin:/bin", "HOME": str(path)}
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "."], ["git", "commit", "-q", "-m", "app"]):
        subprocess.run(argv, cwd=path, env=env, check=True, capture_output=True)
    return str(path)


def test_a_base_on_the_insecure_target_registry_still_builds(bases: dict[str, str], registry: LocalRegistry,
                                                             container_tools: ContainerTools, tmp_path: Path) -> None:
    source = checkout(app(tmp_path / "app", bases["target"]), "main", tmp_path / "src")
    local = build_index(container_tools, source, HOST_PLATFORM, workdir=tmp_path / "w", tls_verify=False,
                        registry_host=registry.host)
    assert list(local.base_image_digests) == [bases["target"]] and all(local.base_image_digests.values())


def test_a_base_on_another_plain_http_registry_is_refused(bases: dict[str, str], registry: LocalRegistry,
                                                          container_tools: ContainerTools, tmp_path: Path) -> None:
    source = checkout(app(tmp_path / "app", bases["other"]), "main", tmp_path / "src")
    with pytest.raises(BuildFailed) as err:
        build_index(container_tools, source, HOST_PLATFORM, workdir=tmp_path / "w", tls_verify=False,
                    registry_host=registry.host)
    assert str(err.value).startswith(f"build step 'FROM {bases['other']}' failed: ")
    assert "http: server gave HTTP response to HTTPS client" in str(err.value)


def test_tls_on_for_the_target_too_when_verification_is_on(bases: dict[str, str], registry: LocalRegistry,
                                                           container_tools: ContainerTools, tmp_path: Path) -> None:
    source = checkout(app(tmp_path / "app", bases["target"]), "main", tmp_path / "src")
    with pytest.raises(BuildFailed, match="server gave HTTP response to HTTPS client"):
        build_index(container_tools, source, HOST_PLATFORM, workdir=tmp_path / "w", tls_verify=True,
                    registry_host=registry.host)


def test_the_exception_is_one_registries_conf_entry_and_no_flag(tmp_path: Path) -> None:
    storage = ContainerTools(tmp_path / "t")
    configure_build(storage, None, "127.0.0.1:5000")
    assert storage.registries_conf.read_text() == ('unqualified-search-registries = []\n\n[[registry]]\n'
                                                   'location = "127.0.0.1:5000"\ninsecure = true\n')
    source = Checkout(tmp_path, "c" * 40, 0, "main", False, None, "r")
    argv = build_argv(storage, source, HOST_PLATFORM, list_name="l", dockerfile=tmp_path / "Dockerfile",
                      context=tmp_path, labels={})
    assert not [a for a in argv if a.startswith("--tls-verify")]
    with pytest.raises(ConfigError, match=r"""^registry host '127.0.0.1:5000"\\ninsecure' is not host\[:port\]$"""):
        configure_build(storage, None, '127.0.0.1:5000"\ninsecure')
