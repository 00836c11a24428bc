"""Posting alerts to a Slack-compatible incoming webhook (``{"text": ...}``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from acci_ops.lib.errors import AcciOpsError


def webhook_host(url: str) -> str:
    """Webhook URLs embed their secret in the path; messages name the host only."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


def post_webhook(url: str, text: str, *, timeout: float = 10.0, extra: dict | None = None) -> None:
    """POST ``{"text": text}``; raise one line naming the host and the status on failure."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise AcciOpsError("alert webhook URL must be http:// or https://")
    body = json.dumps({"text": text, **(extra or {})}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise AcciOpsError(f"alert webhook at {webhook_host(url)} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AcciOpsError(f"cannot reach alert webhook at {webhook_host(url)}: {reason}") from None
