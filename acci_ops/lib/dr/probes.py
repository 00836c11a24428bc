"""Verifying a running ACCI Framework: ``/health`` answers 2xx, ``/metrics`` is Prometheus text.

The guide's step 3 is ``curl -f /health`` and ``curl -f /metrics``. Here health is retried with
backoff until a deadline (an app that was just deployed or restored needs a moment), and metrics
must parse as exposition format and carry the metric names ops declare as required.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from acci_ops.lib.core.errors import AcciOpsError, ConfigError

Log = Callable[[str], None]


@dataclass(frozen=True)
class HealthResult:
    url: str
    status: int
    attempts: int
    seconds: float
    body: str


@dataclass(frozen=True)
class MetricsResult:
    url: str
    status: int
    families: int
    samples: int
    names: list[str] = field(default_factory=list)
    sample_text: str = ""


def check_base_url(url: str) -> str:
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"app URL {url!r} must look like http(s)://host[:port]")
    return url.rstrip("/")


def _get(url: str, timeout: float) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"User-Agent": "acci_ops-probe"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(1 << 20).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(2048).decode(errors="replace") if exc.fp else ""


def wait_for_health(base_url: str, *, deadline_seconds: float = 120, timeout: float = 5, first_delay: float = 0.5,
                    max_delay: float = 10, log: Log = print) -> HealthResult:
    """Poll ``/health`` until it answers 2xx; on the deadline, fail naming the last answer."""
    url = check_base_url(base_url) + "/health"
    started, delay, attempts, last = time.monotonic(), first_delay, 0, "no answer"
    while True:
        attempts += 1
        try:
            status, body = _get(url, timeout)
            if 200 <= status < 300:
                return HealthResult(url, status, attempts, round(time.monotonic() - started, 3), body[:500])
            last = f"HTTP {status} {body.strip()[:200]}".strip()
        except (urllib.error.URLError, OSError) as exc:
            last = f"unreachable ({getattr(exc, 'reason', exc)})"
        except http.client.HTTPException as exc:  # an answer that is not HTTP (BadStatusLine, ...)
            last = f"not an HTTP answer ({type(exc).__name__})"
        elapsed = time.monotonic() - started
        if elapsed + delay > deadline_seconds:
            raise AcciOpsError(f"{url} did not answer 2xx within {deadline_seconds:.0f} s "
                               f"({attempts} attempts); last: {last}")
        log(f"health not ready yet ({last}); retrying in {delay:.1f} s")
        time.sleep(delay)
        delay = min(delay * 2, max_delay)


def check_metrics(base_url: str, required: Sequence[str] = (), *, timeout: float = 10) -> MetricsResult:
    """Fetch ``/metrics``, parse it as Prometheus text, and require the named metric families."""
    url = check_base_url(base_url) + "/metrics"
    try:
        status, body = _get(url, timeout)
    except (urllib.error.URLError, OSError) as exc:
        raise AcciOpsError(f"{url} is unreachable: {getattr(exc, 'reason', exc)}") from None
    except http.client.HTTPException as exc:
        raise AcciOpsError(f"{url} did not answer HTTP ({type(exc).__name__})") from None
    if not 200 <= status < 300:
        raise AcciOpsError(f"{url} answered HTTP {status}")
    try:
        families = list(text_string_to_metric_families(body))
    except (ValueError, TypeError, IndexError) as exc:
        raise AcciOpsError(f"{url} is not Prometheus exposition format: {exc}") from None
    if not families:
        raise AcciOpsError(f"{url} answered but exposes no metrics")
    names = sorted({f.name for f in families} | {s.name for f in families for s in f.samples})
    missing = [name for name in required if name not in names]
    if missing:
        raise AcciOpsError(f"{url} lacks required metrics: {', '.join(missing)}")
    samples = sum(len(f.samples) for f in families)
    text = "\n".join(line for line in body.splitlines() if line and not line.startswith("#"))[:800]
    return MetricsResult(url, status, len(families), samples, names, text)
