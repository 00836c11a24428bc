"""The smoke test's refusals and limits that need no container: each names its cause in one line.

The HTTP probe is pointed at real servers on 127.0.0.1 through the same code path the container
probe takes (``http_get`` with an opener; only the socket's network namespace differs).
"""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from acci_ops.defs.images.resources import images_resource
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.images.engines import NamespaceUnavailable, open_network_namespace
from acci_ops.lib.images.sandbox import private_services
from acci_ops.lib.images.smoke import container_port, http_get, tcp_opener
from acci_ops.settings import load_settings


class Drip(http.server.BaseHTTPRequestHandler):
    """Answers 200 and then one header byte a second, for a minute."""

    def do_GET(self) -> None:  # noqa: N802
        try:
            self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Drip: ")
            for _ in range(60):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(1)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def dripping() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port
    server.shutdown()
    server.server_close()


def test_an_answer_dripping_one_byte_a_second_ends_at_the_deadline(dripping: int) -> None:
    """Every read gets only the time left: the minute-long answer is cut off at the 2 s deadline."""
    started = time.monotonic()
    status, body, error = http_get(tcp_opener("127.0.0.1", dripping), "/health", started + 2)
    assert (status, body, error) == (None, b"", "the answer was still incomplete when the time ran out")
    assert time.monotonic() - started < 2 + 5


def test_the_container_port_comes_from_expose_or_the_setting() -> None:
    def config(*ports: str) -> dict[str, object]:
        return {"config": {"ExposedPorts": {p: {} for p in ports}}}

    assert container_port({}) == 8080
    assert container_port(config("53/udp")) == 8080
    assert container_port(config("9090/tcp")) == 9090
    assert container_port(config("9090", "8080/tcp")) == 8080
    assert container_port(config("9090/tcp"), 7000) == 7000
    with pytest.raises(Exception, match=r"^the image exposes 80/tcp, 9090/tcp: set ACCI_IMAGE_SMOKE_PORT to the one "
                                        r"serving /health$"):
        container_port(config("9090/tcp", "80/tcp"))


def test_acci_image_smoke_port_is_checked() -> None:
    assert images_resource(load_settings({"ACCI_IMAGE_SMOKE_PORT": "9090"}).images).smoke_config().port == 9090
    assert images_resource(load_settings({}).images).smoke_config().port is None
    with pytest.raises(ConfigError, match=r"^ACCI_IMAGE_SMOKE_PORT=70000 is not a TCP port \(1-65535\)$"):
        images_resource(load_settings({"ACCI_IMAGE_SMOKE_PORT": "70000"}).images).smoke_config()
    with pytest.raises(ConfigError, match=r"^ACCI_IMAGE_SMOKE_PORT='0' must be at least 1$"):
        load_settings({"ACCI_IMAGE_SMOKE_PORT": "0"})
    with pytest.raises(ConfigError, match=r"^ACCI_IMAGE_SMOKE_PORT='http' must be a whole number$"):
        load_settings({"ACCI_IMAGE_SMOKE_PORT": "http"})


def test_a_namespace_that_is_not_the_containers_own_is_refused() -> None:
    """A pid an engine elsewhere reported (here: none such, or this very process, whose cgroup
    does not name the container) is never entered, nor this machine's own network namespace."""
    with pytest.raises(NamespaceUnavailable, match=r"^container c1 has no running process$"):
        open_network_namespace(0, "abc", "c1")
    missing = 4_194_304 + 17  # above Linux's pid_max
    with pytest.raises(NamespaceUnavailable, match=rf"^container c1's process {missing} is not on this machine: "
                                                   "the smoke test needs the container engine to run here$"):
        open_network_namespace(missing, "abc", "c1")
    with pytest.raises(NamespaceUnavailable, match=rf"^process {os.getpid()} is not container c1's on this machine"):
        open_network_namespace(os.getpid(), "f" * 64, "c1")
    # This process's own cgroup path names "/": the cgroup check passes, the namespace is ours.
    with pytest.raises(NamespaceUnavailable, match=r"^container c1 shares this machine's network namespace; refusing"):
        open_network_namespace(os.getpid(), "/", "c1")


def test_a_missing_redis_server_is_one_line_and_leaves_nothing(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(ConfigError, match=r"^redis-server not found on PATH; install it with `apt-get install -y "
                                          r"redis-server` \(./run test does this\)$"):
        with private_services(tmp_path / "build", tmp_path / "cache", database=False):
            pass
    assert list((tmp_path / "build").iterdir()) == []
