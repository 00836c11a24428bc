"""smoke_test with real podman (runc, ``--network none``, probed inside the container's network
namespace) over tiny images shaped like the fixture app, which listens on 8080 and reads no PORT."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import acci_ops.lib.images.smoke as smoke_module
from acci_ops.lib.images.smoke import SmokeConfig, missing_metrics, smoke_test, tcp_opener
from acci_ops.lib.images.tools import ContainerTools
from acci_ops_tests.fixtures.oci_images import BASE, CLEAN_DOCKERFILE, ENTRY, HEALTHY_WWW, build_oci

DB_PASSWORD = "Smoke-db-PW-77x-SECRET"
DB_URL = f"postgresql://acci:{DB_PASSWORD}@127.0.0.1:5/acci"


# Runs containers: integration, like every test using the session's container tools.
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def podman_tools() -> Iterator[ContainerTools]:
    """podman refuses a run root longer than 50 characters, which pytest's tmp paths are: this
    module's tools live under a short /tmp directory instead of the session's."""
    tools = ContainerTools(Path(tempfile.mkdtemp(prefix="i10b-", dir="/tmp")))
    yield tools
    tools.remove_storage()


@pytest.fixture(scope="module")
def images(podman_tools: ContainerTools, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "good": build_oci(podman_tools, tmp_path_factory.mktemp("smoke-good"), CLEAN_DOCKERFILE, HEALTHY_WWW),
        "no_health": build_oci(podman_tools, tmp_path_factory.mktemp("smoke-nohealth"), CLEAN_DOCKERFILE,
                               {"www/metrics": HEALTHY_WWW["www/metrics"]}),
        # busybox as entrypoint: `env` shows what the container received, then exits 0.
        "env": build_oci(podman_tools, tmp_path_factory.mktemp("smoke-env"),
                         BASE + "COPY httpd /usr/local/bin/busybox\nUSER 65532\n"
                         'ENTRYPOINT ["/usr/local/bin/busybox"]\n', HEALTHY_WWW),
        # Declares another port than 8080 and listens there (its CMD), as an image may.
        "on_9090": build_oci(podman_tools, tmp_path_factory.mktemp("smoke-9090"),
                             BASE + "USER 65532:65532\nEXPOSE 9090\n" + ENTRY.replace('"8080"', '"9090"'), HEALTHY_WWW),
        "two_ports": build_oci(podman_tools, tmp_path_factory.mktemp("smoke-2ports"),
                               BASE + "USER 65532:65532\nEXPOSE 9090 9443/tcp 53/udp\n" + ENTRY, HEALTHY_WWW),
    }


def containers(tools: ContainerTools) -> list[str]:
    return list(tools.podman("ps", "-a", "--format", "{{.Names}}").tail)


def image_names(tools: ContainerTools) -> list[str]:
    return sorted(tools.podman("images", "-a", "--format", "{{.ID}} {{.Names}}").tail)


@pytest.fixture
def leftovers(podman_tools: ContainerTools, images: dict[str, Path]):  # noqa: ANN201
    """After the test: what it left behind in podman (no container, images and names as before)."""
    before = image_names(podman_tools)
    return lambda tools: containers(tools) + [f"new image {i}" for i in image_names(tools) if i not in before] + [
        f"lost image {i}" for i in before if i not in image_names(tools)]


def test_good_image_listening_on_8080_and_ignoring_port_passes(podman_tools: ContainerTools, images: dict[str, Path],
                                                               leftovers) -> None:  # noqa: ANN001
    """An image run as built (its own CMD: busybox httpd on 8080, no PORT read) passes: the probe
    goes to its port inside its own network namespace, and it gets no PORT variable."""
    lines: list[str] = []
    outcome = smoke_test(podman_tools, images["good"], SmokeConfig(), log=lines.append)
    assert outcome.passed, outcome.description
    assert outcome.description.startswith("linux/amd64 image answered /health in ")
    assert outcome.description.endswith(" s and /metrics has acci_up")
    assert (outcome.metadata["port"], outcome.metadata["env"]) == (8080, [])
    assert outcome.metadata["cleanup"] == "container removed"
    assert leftovers(podman_tools) == []


def test_the_exposed_port_is_probed_and_a_setting_overrides_it(podman_tools: ContainerTools,
                                                              images: dict[str, Path]) -> None:
    """EXPOSE 9090 (and a server there): probed on 9090; ACCI_IMAGE_SMOKE_PORT's value wins over
    EXPOSE; several exposed ports without 8080 among them are refused with one line."""
    outcome = smoke_test(podman_tools, images["on_9090"], SmokeConfig())
    assert (outcome.passed, outcome.metadata["port"]) == (True, 9090), outcome.description
    outcome = smoke_test(podman_tools, images["on_9090"], SmokeConfig(port=8080, timeout_seconds=1))
    assert outcome.description == "/health did not answer after 1 s: [Errno 111] Connection refused"
    outcome = smoke_test(podman_tools, images["two_ports"], SmokeConfig())
    assert outcome.description == ("the image exposes 9090/tcp, 9443/tcp: set ACCI_IMAGE_SMOKE_PORT to the one "
                                   "serving /health")
    assert outcome.metadata["cleanup"] == "nothing was started"
    outcome = smoke_test(podman_tools, images["two_ports"], SmokeConfig(port=8080))
    assert outcome.passed, outcome.description


def test_health_failing_image_blocked_and_removed(podman_tools: ContainerTools, images: dict[str, Path],
                                                  leftovers) -> None:  # noqa: ANN001
    outcome = smoke_test(podman_tools, images["no_health"], SmokeConfig(timeout_seconds=2))
    assert (outcome.passed, outcome.severity) == (False, "ERROR")
    assert outcome.description == "/health answered 404 after 2 s"
    assert leftovers(podman_tools) == []


def test_missing_metric_named(podman_tools: ContainerTools, images: dict[str, Path]) -> None:
    cfg = SmokeConfig(required_metrics=("acci_up", "acci_db_up"))
    outcome = smoke_test(podman_tools, images["good"], cfg)
    assert outcome.description == "/metrics lacks acci_db_up"


def test_exited_container_named_with_its_last_line(podman_tools: ContainerTools, images: dict[str, Path],
                                                   leftovers) -> None:  # noqa: ANN001
    outcome = smoke_test(podman_tools, images["good"], SmokeConfig(command=("-p", "127.0.0.1:1")))
    # A non-root user may not bind port 1: busybox httpd says so and exits 1.
    assert outcome.description == "container exited with code 1: httpd: bind: Permission denied"
    assert leftovers(podman_tools) == []


def test_timeout_removes_the_container(podman_tools: ContainerTools, images: dict[str, Path],
                                       leftovers) -> None:  # noqa: ANN001
    # The app listens on another port than the one probed: nothing answers.
    outcome = smoke_test(podman_tools, images["good"], SmokeConfig(command=("-p", "127.0.0.1:9999"),
                                                                   timeout_seconds=1.5))
    assert outcome.description == "/health did not answer after 1.5 s: [Errno 111] Connection refused"
    assert leftovers(podman_tools) == []


def test_exception_still_removes_the_container(podman_tools: ContainerTools, images: dict[str, Path],
                                               monkeypatch: pytest.MonkeyPatch, leftovers) -> None:  # noqa: ANN001
    def boom(*args: object, **kwargs: object) -> float:
        assert any(n.startswith("acci-smoke-") for n in podman_tools.podman("ps", "-a", "--format",
                                                                               "{{.Names}}").tail)
        raise KeyboardInterrupt

    monkeypatch.setattr(smoke_module, "_wait_healthy", boom)
    with pytest.raises(KeyboardInterrupt):
        smoke_test(podman_tools, images["good"], SmokeConfig())
    assert leftovers(podman_tools) == []


def test_database_url_reaches_the_app_but_never_argv_logs_or_outcome(
        podman_tools: ContainerTools, images: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        leftovers) -> None:  # noqa: ANN001
    argvs: list[list[str]] = []
    real_popen = subprocess.Popen

    class RecordingPopen(real_popen):  # type: ignore[misc, valid-type]
        def __init__(self, args, *rest, **kwargs):  # noqa: ANN001, ANN002, ANN003
            argvs.append([str(a) for a in args])
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    lines: list[str] = []
    cfg = SmokeConfig(command=("env",), database_url=DB_URL, redis_url="redis://127.0.0.1:6/0")
    outcome = smoke_test(podman_tools, images["env"], cfg, log=lines.append)
    # The app printed its environment and exited: the values arrived, and are redacted here.
    assert outcome.description.startswith("container exited with code 0: ")
    assert "container output: DATABASE_URL=postgresql://acci:***@127.0.0.1:5/acci" in lines
    assert "container output: REDIS_URL=redis://127.0.0.1:6/0" in lines
    assert outcome.metadata["env"] == ["DATABASE_URL", "REDIS_URL"]
    run = next(a for a in argvs if "run" in a)
    assert "DATABASE_URL" in run and "REDIS_URL" in run
    for text in [json.dumps(argvs), json.dumps(outcome.metadata), outcome.description, *lines]:
        assert DB_PASSWORD not in text
    assert leftovers(podman_tools) == []


def test_missing_platform_and_bad_layout(podman_tools: ContainerTools, images: dict[str, Path],
                                         tmp_path: Path) -> None:
    outcome = smoke_test(podman_tools, images["good"], SmokeConfig(platform="linux/s390x"))
    assert outcome.description == "the image has no linux/s390x variant to run on this machine"
    outcome = smoke_test(podman_tools, tmp_path)
    assert outcome.description == f"could not run the image: {tmp_path} is not an OCI layout (no index.json)"


def test_missing_metrics_parses_prometheus_text() -> None:
    text = "# TYPE acci_requests counter\nacci_requests_total 3\nacci_up 1\n"
    assert missing_metrics(text, ["acci_up", "acci_requests_total", "acci_requests", "acci_db_up"]) == ["acci_db_up"]
    with pytest.raises(ValueError):
        missing_metrics("<html>not metrics</html>\n", ["acci_up"])


def test_fixture_app_versions(podman_tools: ContainerTools, fixture_builds, leftovers) -> None:  # noqa: ANN001
    """The ACCI-shaped fixture app as built by build.py, run with its own command (8080, no PORT): a
    good version passes, v1.2.0 is blocked."""
    cfg = SmokeConfig(required_metrics=("acci_up", "acci_build_info"))
    good = smoke_test(podman_tools, fixture_builds("v1.0.0").oci_dir, cfg)
    assert good.passed, good.description
    # 6 s: the container must start and answer within the deadline even on a loaded machine (2 s was cut
    # off mid-answer there); the 404 is reported once the deadline passed.
    bad = smoke_test(podman_tools, fixture_builds("v1.2.0").oci_dir, SmokeConfig(timeout_seconds=6))
    assert (bad.passed, bad.description) == (False, "/health answered 404 after 6 s")
    assert leftovers(podman_tools) == []


def test_an_endless_answer_from_the_image_is_cut_off():
    """The image under test is not trusted: /metrics streaming without end must not fill memory."""
    import http.server
    import threading

    class Endless(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(smoke_module.MAX_BODY_BYTES // 65536 + 8):
                    self.wfile.write(b"acci_up 1\n" * 6553)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        deadline = time.monotonic() + 20
        status, body, error = smoke_module.http_get(tcp_opener("127.0.0.1", server.server_port), "/metrics", deadline)
        assert (status, body, error) == (200, b"", "answered more than 8 MiB")
    finally:
        server.shutdown()
