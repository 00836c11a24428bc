"""Posting alerts to a Slack-compatible incoming webhook (``{"text": ...}``).

An alert must never stop what it reports on (a DR run, a backup) and never leak the webhook's
secrets: every failure to post, whatever raised it, becomes one ``AcciOpsError`` line that names
only the scheme, host and port (the path and query hold Slack's token, the userinfo a password),
and the whole post, from connecting to reading the answer, has one deadline.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
import urllib.error
import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit

from acci_ops.lib.core.errors import AcciOpsError

MAX_ANSWER_BYTES = 64 * 1024


def slack_escape(text: str) -> str:
    """Slack's three control characters, escaped as Slack documents (``&`` first), so
    operator-supplied text such as ``<!channel>`` or ``<@U123>`` is shown, never acted on."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def webhook_host(url: str) -> str:
    """Webhook URLs embed their secret in the path; messages name the scheme, host and port only."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "?", parts.port
    except ValueError:
        return "(malformed URL)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def _prepare(url: str) -> tuple[str, dict[str, str], str]:
    """The URL without userinfo (sent as Basic auth instead: urllib would take ``user:pw@host``
    for a host with port ``pw@host`` and quote it in its error), extra headers, the shown host."""
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise AcciOpsError("alert webhook URL is malformed (its port or host does not parse)") from None
    if parts.scheme not in ("http", "https"):
        raise AcciOpsError("alert webhook URL must be http:// or https://")
    if not host:
        raise AcciOpsError("alert webhook URL is malformed (it names no host)")
    headers = {"Content-Type": "application/json"}
    if parts.username is not None or parts.password is not None:
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), headers, webhook_host(url)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirected POST would be replayed as a GET without the alert: report the 3xx instead."""

    def redirect_request(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        return None


def _opener(connections: list[http.client.HTTPConnection]) -> urllib.request.OpenerDirector:
    """urllib (so HTTPS_PROXY and friends still apply) with every connection it opens recorded,
    so the deadline can shut their sockets and end a read that a dripping server keeps alive."""

    def tracked(cls: type) -> type:
        def factory(host: str, **kwargs: object) -> http.client.HTTPConnection:
            conn = cls(host, **kwargs)
            connections.append(conn)
            return conn

        return factory

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(tracked(http.client.HTTPConnection), req)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(tracked(http.client.HTTPSConnection), req, context=self._context)

    return urllib.request.build_opener(HTTP(), HTTPS(), _NoRedirect())


def _why(exc: BaseException, host: str) -> str:
    """One line from what went wrong, built from the exception's type and OS error text, never
    from its message (http.client quotes the netloc, which may carry the userinfo)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"alert webhook at {host} answered HTTP {exc.code}"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, http.client.RemoteDisconnected):
        return f"alert webhook at {host} closed the connection without answering"
    if isinstance(reason, http.client.HTTPException):
        return f"alert webhook at {host} answered with something that is not HTTP ({type(reason).__name__})"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"cannot reach alert webhook at {host}: timed out"
    if isinstance(reason, ssl.SSLError):
        return f"cannot reach alert webhook at {host}: TLS error ({reason.reason or type(reason).__name__})"
    if isinstance(reason, OSError):
        return f"cannot reach alert webhook at {host}: {(reason.strerror or type(reason).__name__).lower()}"
    return f"cannot reach alert webhook at {host}: {type(reason).__name__}"


def _scrub(message: str, url: str) -> str:
    """Belt and braces: whatever a message says, the URL's secret parts are not in it."""
    try:
        parts = urlsplit(url)
        secrets = [parts.password, parts.query, parts.path if parts.path != "/" else None]
    except ValueError:
        secrets = [url]
    for secret in sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


def post_webhook(url: str, text: str, *, timeout: float = 10.0, extra: dict | None = None) -> None:
    """POST ``{"text": text}`` (Slack-escaped) within ``timeout`` seconds in total.

    Raises only ``AcciOpsError``, with one secret-free line: callers catch that and carry on. The
    post runs on a daemon thread joined with the deadline; at the deadline its sockets are shut,
    so a server that drips bytes cannot hold the caller (each read alone would stay in time)."""
    target, headers, host = _prepare(url)
    body = json.dumps({"text": slack_escape(text), **(extra or {})}).encode()
    request = urllib.request.Request(target, data=body, headers=headers, method="POST")
    connections: list[http.client.HTTPConnection] = []
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            with _opener(connections).open(request, timeout=timeout) as response:
                response.read(MAX_ANSWER_BYTES)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes one line below
            outcome.append(exc)

    worker = threading.Thread(target=attempt, name="acci-alert-webhook", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive() or not outcome:
        for conn in connections:
            sock = getattr(conn, "sock", None)
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass
        raise AcciOpsError(f"alert webhook at {host} did not answer within {timeout:g} s")
    if outcome[0] is not None:
        raise AcciOpsError(_scrub(_why(outcome[0], host), url)) from None
