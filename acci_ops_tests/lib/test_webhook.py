"""The alert webhook against real local HTTP servers that misbehave: posting never raises anything
but a one-line AcciOpsError without the URL's secrets, and never takes longer than its deadline."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.core.webhook import post_webhook, slack_escape

TOKEN = "T000/B000/XyZsecretToken"


class RawServer:
    """A TCP server on loopback whose every connection is handled by ``behave(conn, stop)``."""

    def __init__(self, behave) -> None:
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.behave = behave
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            conn.recv(65536)
            self.behave(conn, self.stop)
        except OSError:
            pass
        finally:
            conn.close()

    def url(self, path: str = f"/services/{TOKEN}?token=q-secret") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def garbage(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")


def drip(conn: socket.socket, stop: threading.Event) -> None:
    """A valid status line, then headers one byte every 0.3 s: each read is within any per-read timeout."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    while not stop.is_set():
        conn.sendall(b"X")
        time.sleep(0.3)


def hang_up(conn: socket.socket, stop: threading.Event) -> None:
    conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def raw_server():
    servers: list[RawServer] = []

    def start(behave) -> RawServer:
        servers.append(RawServer(behave))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def assert_clean(error: AcciOpsError, url: str) -> str:
    message = str(error)
    assert "\n" not in message
    for secret in (TOKEN, "XyZsecretToken", "q-secret", "s3cretPw", "services"):
        assert secret not in message, message
    return message


def test_garbage_status_line_is_one_clean_error(raw_server):
    server = raw_server(garbage)
    with pytest.raises(AcciOpsError) as failure:
        post_webhook(server.url(), "x", timeout=5)
    message = assert_clean(failure.value, server.url())
    assert message == (f"alert webhook at http://127.0.0.1:{server.port} answered with something that is not "
                       "HTTP (BadStatusLine)")


def test_a_server_that_hangs_up_is_one_clean_error(raw_server):
    server = raw_server(hang_up)
    with pytest.raises(AcciOpsError) as failure:
        post_webhook(server.url(), "x", timeout=5)
    assert assert_clean(failure.value, server.url()).startswith(f"alert webhook at http://127.0.0.1:{server.port} ")


@pytest.mark.parametrize("deadline", [1.0, 2.0])
def test_a_dripping_server_cannot_hold_the_post_past_its_deadline(raw_server, deadline):
    server = raw_server(drip)
    started = time.monotonic()
    with pytest.raises(AcciOpsError) as failure:
        post_webhook(server.url(), "x", timeout=deadline)
    elapsed = time.monotonic() - started
    # The drip never ends: only the deadline ends the post (the bound is slack for a loaded machine).
    assert elapsed < deadline + 10, f"post took {elapsed:.1f} s with a {deadline} s deadline"
    assert assert_clean(failure.value, server.url()) == (
        f"alert webhook at http://127.0.0.1:{server.port} did not answer within {deadline:g} s")


def test_userinfo_without_a_port_never_shows_the_password():
    with pytest.raises(AcciOpsError) as failure:
        post_webhook(f"http://hook-user:s3cretPw@acci-no-such-host.invalid/services/{TOKEN}", "x", timeout=5)
    message = assert_clean(failure.value, "")
    assert message.startswith("cannot reach alert webhook at http://acci-no-such-host.invalid: ")
    assert "hook-user" not in message


def test_userinfo_is_sent_as_basic_auth_not_as_part_of_the_host():
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen.append({"auth": self.headers.get("Authorization"), "path": self.path,
                         "body": json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        post_webhook(f"http://hook-user:s3cretPw@127.0.0.1:{server.server_port}/services/{TOKEN}?a=1", "hi")
    finally:
        server.shutdown()
    assert seen == [{"auth": "Basic " + base64.b64encode(b"hook-user:s3cretPw").decode(),
                     "path": f"/services/{TOKEN}?a=1", "body": {"text": "hi"}}]


def test_slack_control_sequences_are_escaped():
    received: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"])
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        post_webhook(f"http://127.0.0.1:{server.server_port}/hook", "DR by <!channel> & <@U123> with a>b")
    finally:
        server.shutdown()
    assert received == ["DR by &lt;!channel&gt; &amp; &lt;@U123&gt; with a&gt;b"]
    assert slack_escape("&lt;") == "&amp;lt;"


@pytest.mark.parametrize("url,expected", [
    ("ftp://host/x", "alert webhook URL must be http:// or https://"),
    ("http://[::1/x", "alert webhook URL is malformed"),
    ("http://host:notaport/services/T/B/secret", "alert webhook URL is malformed"),
])
def test_bad_webhook_urls_are_refused_without_echoing_them(url, expected):
    with pytest.raises(AcciOpsError) as failure:
        post_webhook(url, "x", timeout=2)
    assert str(failure.value).startswith(expected)
    assert "secret" not in str(failure.value)
