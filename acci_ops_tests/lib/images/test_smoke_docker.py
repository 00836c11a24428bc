"""smoke_test with ACCI_CONTAINER_ENGINE=docker against a real, private dockerd (Debian's docker.io).

The image gets into the engine from the staged OCI layout with skopeo (docker-daemon transport, no
registry), runs with ``--network none`` and the other confinement options (probed inside its own
network namespace: no bridge is needed), and the container and the loaded image are gone afterwards.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from acci_ops.defs.images.resources import images_resource
from acci_ops.dev.dockerd import DockerDaemon, start_dockerd
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.core.net import free_port
from acci_ops.lib.images.engines import DEFAULT_DOCKER_HOST, DockerEngine, PodmanEngine
from acci_ops.lib.images.smoke import SmokeConfig, smoke_test
from acci_ops.lib.images.tools import ContainerTools
from acci_ops.settings import load_settings
from acci_ops_tests.fixtures.oci_images import BASE, HEALTHY_WWW, build_oci

DB_PASSWORD = "Dock3r-db-PW-51q-SECRET"
DB_URL = f"postgresql://acci:{DB_PASSWORD}@127.0.0.1:5/acci"


@pytest.fixture(scope="session")
def dockerd() -> Iterator[DockerDaemon]:
    """A private dockerd and containerd (sockets, data and exec roots under a short /tmp directory,
    no bridge, no iptables), stopped at the end of the session with nothing left running."""
    daemon = start_dockerd()
    yield daemon
    daemon.stop()
    assert daemon.dockerd.poll() is not None and daemon.containerd.poll() is not None
    assert not daemon.base.exists()


@pytest.fixture
def docker(dockerd: DockerDaemon, container_tools: ContainerTools) -> DockerEngine:
    return DockerEngine(container_tools, dockerd.host)


def engine_state(engine: DockerEngine) -> list[str]:
    """Every container and image the engine holds."""
    containers = engine.cli("ps", "-a", "--format", "container {{.Names}}").tail
    images = engine.cli("images", "-a", "--format", "image {{.ID}} {{.Repository}}:{{.Tag}}").tail
    return sorted([*containers, *images])


@pytest.fixture
def unchanged(docker: DockerEngine) -> Callable[[], list[str]]:
    """After the test: what changed in the engine (nothing, when everything was removed)."""
    before = engine_state(docker)
    return lambda: [f"new {s}" for s in engine_state(docker) if s not in before] + [
        f"lost {s}" for s in before if s not in engine_state(docker)]


def test_fixture_app_good_version_passes_with_docker(docker: DockerEngine, fixture_builds,  # noqa: ANN001
                                                     unchanged: Callable[[], list[str]]) -> None:
    lines: list[str] = []
    cfg = SmokeConfig(required_metrics=("acci_up", "acci_build_info"))  # its own CMD: 8080, no PORT read
    outcome = smoke_test(docker, fixture_builds("v1.0.0").oci_dir, cfg, log=lines.append)
    assert outcome.passed, outcome.description
    assert outcome.description.startswith("linux/amd64 image answered /health in ")
    assert outcome.description.endswith(" s and /metrics has acci_up, acci_build_info")
    assert (outcome.metadata["engine"], outcome.metadata["cleanup"]) == ("docker", "container removed")
    assert any(line.startswith("smoke test: docker container acci-smoke-") for line in lines)
    assert unchanged() == []


def test_health_failing_version_blocked_and_removed(docker: DockerEngine, fixture_builds,  # noqa: ANN001
                                                    unchanged: Callable[[], list[str]]) -> None:
    outcome = smoke_test(docker, fixture_builds("v1.2.0").oci_dir, SmokeConfig(timeout_seconds=2))
    assert (outcome.passed, outcome.severity, outcome.description) == (False, "ERROR", "/health answered 404 after 2 s")
    assert outcome.metadata["cleanup"] == "container removed"
    assert unchanged() == []


def test_exited_container_named_with_its_last_line(docker: DockerEngine, fixture_builds,  # noqa: ANN001
                                                   unchanged: Callable[[], list[str]]) -> None:
    # (Not port 1: docker lets any user of a container's own network namespace bind low ports.)
    outcome = smoke_test(docker, fixture_builds("v1.0.0").oci_dir, SmokeConfig(command=("-p", "127.0.0.1:99999")))
    assert outcome.description == "container exited with code 1: httpd: bad port '99999'"
    assert unchanged() == []


def test_image_the_engine_already_held_is_run_and_kept(docker: DockerEngine, fixture_builds,  # noqa: ANN001
                                                       unchanged: Callable[[], list[str]]) -> None:
    oci_dir = fixture_builds("v1.0.0").oci_dir
    docker.tools.skopeo("copy", "-q", "--override-arch", "amd64", "--override-os", "linux", "--dest-daemon-host",
                        docker.endpoint, f"oci:{oci_dir}", "docker-daemon:operator/kept:1")
    try:
        lines: list[str] = []
        outcome = smoke_test(docker, oci_dir, SmokeConfig(), log=lines.append)
        assert outcome.passed, outcome.description
        assert any("docker engine already holds sha256:" in line for line in lines)
        assert [s.split()[-1] for s in unchanged()] == ["operator/kept:1"]  # the operator's image, untouched
    finally:
        docker.cli("rmi", "operator/kept:1", check=False)
    assert unchanged() == []


def test_database_url_reaches_the_app_only_through_the_docker_environment(
        docker: DockerEngine, container_tools: ContainerTools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        unchanged: Callable[[], list[str]]) -> None:
    # busybox as entrypoint: `env` prints what the container received, then exits 0.
    image = build_oci(container_tools, tmp_path / "env", BASE + "COPY httpd /usr/local/bin/busybox\nUSER 65532\n"
                      'ENTRYPOINT ["/usr/local/bin/busybox"]\n', HEALTHY_WWW)
    argvs: list[list[str]] = []
    real_popen = subprocess.Popen

    class RecordingPopen(real_popen):  # type: ignore[misc, valid-type]
        def __init__(self, args, *rest, **kwargs):  # noqa: ANN001, ANN002, ANN003
            argvs.append([str(a) for a in args])
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    lines: list[str] = []
    cfg = SmokeConfig(command=("env",), database_url=DB_URL, redis_url="redis://127.0.0.1:6/0")
    outcome = smoke_test(docker, image, cfg, log=lines.append)
    assert outcome.description.startswith("container exited with code 0: ")
    assert "container output: DATABASE_URL=postgresql://acci:***@127.0.0.1:5/acci" in lines
    assert "container output: REDIS_URL=redis://127.0.0.1:6/0" in lines
    run = next(a for a in argvs if "run" in a)
    assert run[run.index("run") + 1:][:5] == ["-d", "--name", outcome.metadata["container"], "--network", "none"]
    for option in (["--cap-drop", "ALL"], ["--security-opt", "no-new-privileges"], ["--read-only"],
                   ["--pids-limit", "256"], ["--memory", "512m"], ["--label", "io.acci-ops.smoke=1"]):
        assert option[0] in run and run[run.index(option[0]):run.index(option[0]) + len(option)] == option
    assert ["--env", "DATABASE_URL"] == run[run.index("DATABASE_URL") - 1:run.index("DATABASE_URL") + 1]
    for text in [json.dumps(argvs), json.dumps(outcome.metadata), outcome.description, *lines]:
        assert DB_PASSWORD not in text
    assert unchanged() == []


# The image under test, hostile (a static busybox of the host's platform in a FROM-scratch root, as
# root): it must neither reach $TARGET nor find itself unconfined, else it exits naming the breach.
CONFINEMENT = """\
if busybox nc -w 2 "${TARGET%:*}" "${TARGET##*:}" </dev/null >/dev/null 2>&1; then echo "reached $TARGET"; exit 3; fi
busybox grep -q '^CapEff:[[:space:]]*0000000000000000$' /proc/self/status || { echo "has capabilities"; exit 4; }
busybox grep -q '^NoNewPrivs:[[:space:]]*1$' /proc/self/status || { echo "may gain privileges"; exit 5; }
if busybox touch /probe 2>/dev/null; then echo "the root file system is writable"; exit 6; fi
busybox touch /tmp/probe || { echo "/tmp is not writable"; exit 7; }
if busybox env | busybox grep -qi 'proxy='; then echo "proxy variables reached the container"; exit 8; fi
exec busybox httpd -f -p 8080 -h /srv/www
"""


def test_docker_container_reaches_nothing_and_is_confined(docker: DockerEngine, container_tools: ContainerTools,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          unchanged: Callable[[], list[str]]) -> None:
    """Under docker too: a server on this machine's 127.0.0.1 records no connection, and the
    container has no capabilities, no-new-privileges, a read-only root with a writable /tmp and no
    proxy variable, although the docker client configuration names a proxy ("proxies" in
    config.json, which the docker CLI adds to a container's environment)."""
    image = build_oci(container_tools, tmp_path / "confined",
                      "FROM scratch\nCOPY httpd /bin/busybox\nCOPY entry.sh /entry.sh\nCOPY www/ /srv/www/\n"
                      'ENTRYPOINT ["/bin/busybox", "sh", "/entry.sh"]\n',
                      {**HEALTHY_WWW, "entry.sh": CONFINEMENT.encode()})
    client = tmp_path / "docker-config"
    client.mkdir()
    (client / "config.json").write_text(json.dumps({"proxies": {"default": {"httpProxy": "http://127.0.0.1:3128"}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(client))
    peers: list[object] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.settimeout(0.1)
        outcome = smoke_test(docker, image, SmokeConfig(extra_env={"TARGET": f"127.0.0.1:{server.getsockname()[1]}"}))
        try:
            peers.append(server.accept()[1])
        except TimeoutError:
            pass
    assert outcome.passed, outcome.description
    assert peers == []
    assert unchanged() == []


def test_unreachable_engine_is_one_line(container_tools: ContainerTools, fixture_builds) -> None:  # noqa: ANN001
    oci_dir = fixture_builds("v1.0.0").oci_dir
    short = Path(tempfile.mkdtemp(prefix="acci-nodk-", dir="/tmp"))
    try:
        missing = f"unix://{short}/docker.sock"
        outcome = smoke_test(DockerEngine(container_tools, missing), oci_dir, SmokeConfig())
        assert (outcome.passed, outcome.description) == (
            False, f"docker engine at {missing} is not reachable: No such file or directory; "
                   "start dockerd or set ACCI_DOCKER_HOST")
        assert outcome.metadata["cleanup"] == "nothing was started"
        dead = short / "dead.sock"  # a socket file nobody listens on: a dockerd that died
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(dead))
        outcome = smoke_test(DockerEngine(container_tools, f"unix://{dead}"), oci_dir)
        assert outcome.description == (f"docker engine at unix://{dead} is not reachable: Connection refused; "
                                       "start dockerd or set ACCI_DOCKER_HOST")
        port = free_port()
        outcome = smoke_test(DockerEngine(container_tools, f"tcp://127.0.0.1:{port}"), oci_dir)
        assert outcome.description == (f"docker engine at tcp://127.0.0.1:{port} is not reachable: Connection "
                                       "refused; start dockerd or set ACCI_DOCKER_HOST")
    finally:
        subprocess.run(["rm", "-rf", str(short)], check=True)


def test_settings_pick_the_engine(tmp_path: Path) -> None:
    tools = ContainerTools(tmp_path / "t")
    images = load_settings({}).images
    assert (images.container_engine, images.docker_host) == ("podman", None)
    assert isinstance(images_resource(images).engine(tools), PodmanEngine)
    engine = images_resource(load_settings({"ACCI_CONTAINER_ENGINE": "docker"}).images).engine(tools)
    assert isinstance(engine, DockerEngine) and engine.endpoint == DEFAULT_DOCKER_HOST
    env = {"ACCI_CONTAINER_ENGINE": "docker", "ACCI_DOCKER_HOST": "unix:///run/other/docker.sock"}
    engine = images_resource(load_settings(env).images).engine(tools)
    assert isinstance(engine, DockerEngine) and engine.endpoint == "unix:///run/other/docker.sock"
    with pytest.raises(ConfigError) as bad:
        load_settings({"ACCI_DOCKER_HOST": "/var/run/docker.sock"})
    assert str(bad.value) == ("ACCI_DOCKER_HOST '/var/run/docker.sock' is not a Docker endpoint; use "
                              "unix:///path/docker.sock or tcp://host:port")
