"""The smoke test confines the image under test, with real podman, PostgreSQL and Redis.

The images here are hostile on purpose: a static busybox (the host's, so they run on the host's
platform only: no qemu here) in a FROM-scratch root with a shell script as entrypoint, which tries
to reach what it must not (servers on this machine's 127.0.0.1 and other address, the validation
scratch server, an outside address) and checks its own confinement before it serves /health; or
one whose /health drips one byte a second. Each test builds nothing of the build pipeline: the
image goes straight from an OCI layout to ``smoke_test``.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from acci_ops.lib.core.commands import CommandResult, LineSink
from acci_ops.lib.images.engines import NetworkNamespace, PodmanEngine
from acci_ops.lib.images.sandbox import private_services
from acci_ops.lib.images.smoke import SmokeConfig, smoke_test
from acci_ops.lib.images.tools import ContainerTools
from acci_ops.lib.postgres.scratch import create_scratch_database, drop_scratch_database, new_scratch_name
from acci_ops.lib.postgres.urls import parse_database_url
from acci_ops_tests.fixtures.oci_images import HEALTHY_WWW, build_oci
from acci_ops_tests.fixtures.servers import PgServer

# Runs containers and servers: integration.
pytestmark = pytest.mark.integration

HOSTILE = """\
# TARGETS: host:port pairs this image must not reach; CONFINED: also check its own confinement.
for target in $TARGETS; do
  if busybox nc -w 2 "${target%:*}" "${target##*:}" </dev/null >/dev/null 2>&1; then
    echo "reached $target"; exit 3
  fi
done
if [ -n "${CONFINED:-}" ]; then
  busybox grep -q '^CapEff:[[:space:]]*0000000000000000$' /proc/self/status || { echo "has capabilities"; exit 4; }
  busybox grep -q '^NoNewPrivs:[[:space:]]*1$' /proc/self/status || { echo "may gain privileges"; exit 5; }
  if busybox touch /probe 2>/dev/null; then echo "the root file system is writable"; exit 6; fi
  busybox touch /tmp/probe || { echo "/tmp is not writable"; exit 7; }
  if busybox env | busybox grep -qi 'proxy='; then echo "proxy variables reached the container"; exit 8; fi
  pids=$(busybox cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null)
  [ "$pids" = 256 ] || { echo "pids limit is $pids"; exit 9; }
  memory=$(busybox cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null)
  [ "$memory" = 536870912 ] || { echo "memory limit is $memory"; exit 10; }
fi
exec busybox httpd -f -p 8080 -h /srv/www
"""
# Runs as root (no USER): without --cap-drop ALL it would hold capabilities.
HOSTILE_DOCKERFILE = """\
FROM scratch
COPY httpd /bin/busybox
COPY entry.sh /entry.sh
COPY www/ /srv/www/
EXPOSE 8080
ENTRYPOINT ["/bin/busybox", "sh", "/entry.sh"]
"""
# One connection per request (busybox nc -ll -e); the path given as argument drips one byte a
# second for a minute, the other answers at once. The request is read whole before answering.
DRIP = """\
read -r method path version
while IFS= read -r line; do case "$line" in "$(printf '\\r')"|"") break;; esac; done
if [ "$path" = "$1" ]; then
  printf 'HTTP/1.0 200 OK\\r\\nX-Drip: '
  i=0
  while [ $i -lt 60 ]; do printf x; busybox sleep 1; i=$((i+1)); done
  printf '\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n'
elif [ "$path" = /health ]; then
  printf 'HTTP/1.0 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n'
else
  printf 'HTTP/1.0 200 OK\\r\\n\\r\\n# TYPE acci_up gauge\\nacci_up 1\\n'
fi
"""
DRIP_DOCKERFILE = """\
FROM scratch
COPY httpd /bin/busybox
COPY drip.sh /drip.sh
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/bin/busybox", "nc", "-ll", "-p", "8080", "-e", "/bin/busybox", "sh", "/drip.sh"]
CMD ["/health"]
"""


@pytest.fixture(scope="module")
def images(container_tools: ContainerTools, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "hostile": build_oci(container_tools, tmp_path_factory.mktemp("hostile"), HOSTILE_DOCKERFILE,
                             {**HEALTHY_WWW, "entry.sh": HOSTILE.encode()}),
        "drip": build_oci(container_tools, tmp_path_factory.mktemp("drip"), DRIP_DOCKERFILE,
                          {"drip.sh": DRIP.encode()}),
    }


class Recorder:
    """A TCP server that records every connection it accepts (and closes it at once)."""

    def __init__(self, bind: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((bind, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.peers: list[tuple[str, int]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer)
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def recorders() -> Iterator[Callable[[str], Recorder]]:
    started: list[Recorder] = []

    def start(bind: str) -> Recorder:
        started.append(Recorder(bind))
        return started[-1]

    yield start
    for recorder in started:
        recorder.close()


@pytest.fixture
def outside_pytest_tmp() -> Iterator[Path]:
    """A directory for the private servers outside pytest's temp root: every pytest session that
    starts makes that root 0700 again, which would lock the servers' user out midway."""
    path = Path(tempfile.mkdtemp(prefix="acci-smoke-test-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def host_address() -> str | None:
    """This machine's address on its default route (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # UDP: no packet is sent, only the route is chosen
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@dataclass
class WatchedPodman(PodmanEngine):
    """The real podman engine; records what ``run`` handed the container (argv options and the
    secret environment) and calls ``while_running`` with the container's name once it runs."""

    handed: dict[str, str] = field(default_factory=dict)
    options: list[str] = field(default_factory=list)
    while_running: Callable[[WatchedPodman, str], None] | None = None

    def run(self, name: str, image: str, options: list[str], command: list[str], *,
            env: Mapping[str, str], log: LineSink) -> CommandResult:
        self.handed.update(env)
        self.options[:] = options
        return super().run(name, image, options, command, env=env, log=log)

    def network_namespace(self, name: str) -> NetworkNamespace:
        if self.while_running:
            self.while_running(self, name)
        return super().network_namespace(name)

    def container_root(self, name: str) -> Path:
        """The container's root directory as this machine sees it (its first process's root)."""
        pid = self.cli("container", "inspect", "--format", "{{.State.Pid}}", name).last_line.strip()
        return Path(f"/proc/{pid}/root")


def test_entrypoint_reaches_nothing_on_this_machine_or_outside(container_tools: ContainerTools,
                                                               images: dict[str, Path], recorders) -> None:  # noqa: ANN001
    """The container has a network namespace of its own: servers on this machine's 127.0.0.1 and
    on its other address (bound to 0.0.0.0) record no connection, an outside address and the cloud
    metadata address are unreachable, and the image still passes (probed inside its namespace)."""
    loopback = recorders("127.0.0.1")
    anywhere = recorders("0.0.0.0")
    targets = [f"127.0.0.1:{loopback.port}", f"127.0.0.1:{anywhere.port}", "1.1.1.1:80", "169.254.169.254:80"]
    address = host_address()
    if address:
        targets.append(f"{address}:{anywhere.port}")
    outcome = smoke_test(container_tools, images["hostile"], SmokeConfig(extra_env={"TARGETS": " ".join(targets)}))
    assert outcome.passed, outcome.description
    assert (loopback.peers, anywhere.peers) == ([], [])
    assert outcome.metadata["network"].startswith("none")


def test_container_has_no_capabilities_writable_root_proxy_or_unlimited_resources(
        container_tools: ContainerTools, images: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as root in the image, the entrypoint finds no capabilities, no-new-privileges set, a
    read-only root with a writable /tmp, no proxy variable (though acci_ops's own environment has
    them, and podman would copy them in), a pids limit of 256 and 512 MiB of memory; the container
    is labelled io.acci-ops.smoke=1 and named acci-smoke-*."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:3128")
    seen: dict[str, str] = {}

    def look(engine: WatchedPodman, name: str) -> None:
        seen["label"] = engine.cli("container", "inspect", "--format", '{{index .Config.Labels "io.acci-ops.smoke"}}',
                                   name).last_line
        seen["name"] = name

    engine = WatchedPodman(container_tools, while_running=look)
    outcome = smoke_test(engine, images["hostile"], SmokeConfig(extra_env={"CONFINED": "1"}))
    assert outcome.passed, outcome.description
    assert seen["label"] == "1" and seen["name"].startswith("acci-smoke-")


@pytest.mark.parametrize("dripping, expected", [
    ("/health", "/health did not answer after 3 s: the answer was still incomplete when the time ran out"),
    ("/metrics", "/metrics did not answer within the smoke test's 3 s: the answer was still incomplete when the "
                 "time ran out"),
])
def test_a_dripping_answer_is_cut_off_at_the_one_deadline(container_tools: ContainerTools, images: dict[str, Path],
                                                          dripping: str, expected: str) -> None:
    """/health (or /metrics, after a quick /health) sending one byte a second: the check fails once
    the one deadline for the whole probe has passed, not after the minute the answer would take."""
    started = time.monotonic()
    outcome = smoke_test(container_tools, images["drip"], SmokeConfig(command=(dripping,), timeout_seconds=3))
    elapsed = time.monotonic() - started
    assert (outcome.passed, outcome.description) == (False, expected)
    assert outcome.metadata["cleanup"] == "container removed"
    # Cut off at the deadline, not after the answer's minute: the bound leaves room for starting and removing
    # the container on a loaded 2-core machine (8.7 s was seen there), and is still far below the minute.
    assert elapsed < 30, f"the check took {elapsed:.1f} s: the answer was not cut off at the 3 s deadline"


def test_runs_from_a_storage_path_with_a_dot_component_capitals_and_spaces(images: dict[str, Path],
                                                                           outside_pytest_tmp: Path) -> None:
    """An OCI layout and container storage under ``My Dir/.acci_dev/images`` (as ``./run dev``'s
    default .acci_dev): the image is loaded under a generated name and run by its id, and the
    private services live there too."""
    storage = outside_pytest_tmp / "My Dir" / ".acci_dev" / "images"
    tools = ContainerTools(storage)
    try:
        layout = storage / "build-Ab C" / "oci"
        shutil.copytree(images["hostile"], layout)
        with private_services(layout.parent, storage) as services:
            cfg = SmokeConfig(database_url=services.database_url, redis_url=services.redis_url, mounts=services.mounts)
            outcome = smoke_test(tools, layout, cfg)
        assert outcome.passed, outcome.description
        assert outcome.metadata["cleanup"] == "container removed"
        assert tools.podman("images", "-a", "--format", "{{.ID}}").tail == ()
    finally:
        tools.remove_storage()


def test_image_under_test_cannot_reach_the_scratch_server_and_its_login_opens_nothing_there(
        container_tools: ContainerTools, images: dict[str, Path], pg_server: PgServer, scratch_url: str,
        outside_pytest_tmp: Path) -> None:
    """A validation scratch database left in place (restored production data) on the scratch server:
    the image's start-up connection to that server fails; the login it was handed opens its own
    private database through the mounted socket and nothing on the scratch server (neither the
    scratch database nor ``postgres``); its password is in no argv, metadata, description or log
    line; the services say they were private and deleted; and other roles of the scratch server
    cannot open the scratch database (CONNECT revoked from PUBLIC)."""
    scratch = parse_database_url(scratch_url)
    leftover = new_scratch_name()
    create_scratch_database(scratch, leftover)
    try:
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(pg_server.url(leftover), connect_timeout=5).close()
        psycopg.connect(**dataclasses.replace(scratch, dbname=leftover).connect_kwargs()).close()  # its owner can
        inside: dict[str, object] = {}

        def use_the_private_services(engine: WatchedPodman, name: str) -> None:
            root = engine.container_root(name)
            handed = urllib.parse.urlsplit(engine.handed["DATABASE_URL"])
            host = urllib.parse.parse_qs(handed.query)["host"][0]
            with psycopg.connect(host=f"{root}{host}", user=handed.username, password=handed.password,
                                 dbname=handed.path.lstrip("/"), connect_timeout=5) as conn:
                inside["database"] = conn.execute("SELECT current_database(), rolsuper, rolcreatedb FROM pg_roles "
                                                  "WHERE rolname = current_user").fetchone()
            redis_path = urllib.parse.urlsplit(engine.handed["REDIS_URL"]).path
            with socket.socket(socket.AF_UNIX) as redis:
                redis.connect(f"{root}{redis_path}")
                redis.sendall(b"PING\r\n")
                inside["redis"] = redis.recv(16)

        engine = WatchedPodman(container_tools, while_running=use_the_private_services)
        lines: list[str] = []
        with private_services(outside_pytest_tmp / "build", outside_pytest_tmp / "storage") as services:
            cfg = SmokeConfig(database_url=services.database_url, redis_url=services.redis_url, mounts=services.mounts,
                              extra_env={"TARGETS": f"127.0.0.1:{pg_server.pg.port}"})
            outcome = smoke_test(engine, images["hostile"], cfg, log=lines.append)
            sockets = [Path(host_dir) for host_dir, _ in services.mounts]
        assert outcome.passed, outcome.description  # "reached 127.0.0.1:<port>" otherwise
        assert inside == {"database": ("acci", False, False), "redis": b"+PONG\r\n"}
        handed = urllib.parse.urlsplit(engine.handed["DATABASE_URL"])
        password = handed.password or ""
        assert len(password) >= 24 and handed.hostname is None  # a socket, no TCP address
        for dbname in (leftover, "postgres"):
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(host="127.0.0.1", port=pg_server.pg.port, user=handed.username, password=password,
                                dbname=dbname, connect_timeout=5).close()
        for text in [" ".join(engine.options), str(outcome.metadata), outcome.description, *lines]:
            assert password not in text
        assert "private PostgreSQL" in services.about["throwaway_database"]
        assert services.about["throwaway_database"].endswith("deleted after")
        assert services.about["throwaway_redis"].endswith("deleted after")
        assert not any(path.exists() for path in sockets)  # servers stopped, directories deleted
    finally:
        drop_scratch_database(scratch, leftover)
