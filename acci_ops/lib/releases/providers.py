"""Where an analysis gets its numbers: the app's ``/health``, its ``/metrics`` scraped directly, or a
PromQL query; plus the bounded load generator that gives a fresh deployment some traffic to measure.

Each provider answers one ``Reading`` per measurement: a value, *no data* (the app was quiet, the query
matched nothing: inconclusive, never a pass) or an *error* (refused, timed out, not HTTP, not parsable).
Counters only mean something as deltas, so the scrape providers keep the previous scrape: the first
measurement is a baseline, and a series that appears later started at zero (Prometheus client libraries
create a labelled series on its first increment, e.g. ``code="500"`` on the first 5xx).
"""

from __future__ import annotations

import http.client
import json
import math
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.dr.probes import check_base_url

USER_AGENT = "acci_ops-release-analysis"
MAX_BODY = 8 << 20  # a /metrics page or a query answer larger than this is not what we asked for

LabelKey = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Reading:
    """One provider's answer for one measurement. ``outcome``: value, no_data, error or baseline."""

    outcome: str
    value: float | None = None
    detail: str = ""

    @classmethod
    def of(cls, value: float, detail: str = "") -> Reading:
        return cls("value", float(value), detail)

    @classmethod
    def no_data(cls, why: str) -> Reading:
        return cls("no_data", None, why)

    @classmethod
    def error(cls, why: str) -> Reading:
        return cls("error", None, " ".join(why.split()))

    @classmethod
    def baseline(cls, detail: str) -> Reading:
        return cls("baseline", None, detail)


class ProbeError(Exception):
    """A request that got no usable answer; its text is the Reading's detail."""


def check_http_url(url: str, what: str) -> str:
    """``url`` without a trailing slash, or a ConfigError: http(s) with a host, and no credentials
    (a secret in a URL would end up in every reason and log line)."""
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} {url!r} must look like http(s)://host[:port][/path]")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{what} must not carry credentials (user:password@)")
    return url.rstrip("/")


def _describe(exc: BaseException, timeout: float) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"timed out after {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "closed the connection without an answer"
    if isinstance(reason, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, http.client.HTTPException):
        return f"not an HTTP answer ({type(exc).__name__})"
    return f"unreachable ({reason})"


def http_get(url: str, timeout: float) -> tuple[int, str]:
    """(status, body) of a GET; any answer with a status is returned (4xx/5xx included); no answer, a
    timeout or something that is not HTTP raises ProbeError naming which."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(MAX_BODY).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(MAX_BODY).decode(errors="replace") if exc.fp else ""
        except (OSError, http.client.HTTPException):
            body = ""
        return exc.code, body
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise ProbeError(_describe(exc, timeout)) from None


def _snippet(body: str) -> str:
    text = " ".join(body.split())
    return text[:120] + ("…" if len(text) > 120 else "")


# --- health -------------------------------------------------------------------------------------

def probe_health(app_url: str, timeout: float) -> Reading:
    """1.0 when ``/health`` answers 2xx, 0.0 for any other HTTP status; no answer is an error."""
    try:
        status, body = http_get(check_base_url(app_url) + "/health", timeout)
    except ProbeError as exc:
        return Reading.error(f"/health {exc}")
    if 200 <= status < 300:
        return Reading.of(1.0, f"HTTP {status}")
    return Reading.of(0.0, f"HTTP {status} {_snippet(body)}".strip())


# --- direct scrape --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    family: str
    kind: str  # the family's TYPE: counter, histogram, gauge, untyped, ...
    name: str
    labels: LabelKey
    value: float


@dataclass(frozen=True)
class Scrape:
    """One parsed ``/metrics`` page."""

    url: str
    samples: tuple[Sample, ...]
    names: frozenset[str]  # family and sample names: what "this metric is exposed" means


def scrape(url: str, timeout: float) -> Scrape:
    """Fetch and parse Prometheus exposition text, or raise ProbeError naming what went wrong."""
    status, body = http_get(url, timeout)
    if not 200 <= status < 300:
        raise ProbeError(f"{url} answered HTTP {status} {_snippet(body)}".strip())
    try:
        families = list(text_string_to_metric_families(body))
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise ProbeError(f"{url} is not Prometheus exposition format: {exc}") from None
    if not families:
        raise ProbeError(f"{url} answered but exposes no metrics")
    samples = tuple(Sample(f.name, f.type, s.name, tuple(sorted(s.labels.items())), float(s.value))
                    for f in families for s in f.samples)
    names = frozenset({f.name for f in families} | {s.name for s in samples})
    return Scrape(url, samples, names)


_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


@dataclass(frozen=True)
class Selector:
    """PromQL-style label matchers (``server="srv0", handler!="/metrics"``) that pick the series an
    analysis counts: e.g. to leave the scraper's own ``/metrics`` requests out of the error ratio."""

    text: str = ""
    matchers: tuple[tuple[str, str, str], ...] = ()

    def matches(self, labels: LabelKey) -> bool:
        values = dict(labels)
        for label, op, expected in self.matchers:
            actual = values.get(label, "")
            if op == "=" and actual != expected or op == "!=" and actual == expected:
                return False
            if op in ("=~", "!~") and bool(re.fullmatch(expected, actual)) != (op == "=~"):
                return False
        return True


def parse_selector(text: str, what: str) -> Selector:
    body = (text or "").strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    matchers, pos = [], 0
    while pos < len(body.rstrip()):
        match = _MATCHER.match(body, pos)
        if not match:
            raise ConfigError(f'{what}: cannot read label matchers at {body[pos:]!r}; write e.g. server="srv0"')
        label, op, value = match.group(1), match.group(2), re.sub(r"\\(.)", r"\1", match.group(3))
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise ConfigError(f"{what}: {value!r} is not a regular expression ({exc})") from None
        matchers.append((label, op, value))
        pos = match.end()
    return Selector(text or "", tuple(matchers))


def _series(scrape_: Scrape, metric: str, suffix: str, selector: Selector) -> list[Sample]:
    """Samples of ``metric`` as a sample name, or of the family ``metric`` with ``suffix``
    (``http_requests`` -> ``http_requests_total``, a histogram -> ``_count`` / ``_bucket``)."""
    return [s for s in scrape_.samples
            if (s.name == metric or (s.family == metric and s.name == metric + suffix)) and selector.matches(s.labels)]


def _deltas(current: Mapping[LabelKey, float], previous: Mapping[LabelKey, float]) -> dict[LabelKey, float]:
    """Per-series increase; a series new since the last scrape started at 0, a smaller value means the
    counter was reset (the process restarted) and counts from 0 again, as Prometheus's rate() does."""
    out = {}
    for key, value in current.items():
        before = previous.get(key, 0.0)
        out[key] = value - before if value >= before else value
    return out


class ErrorRatio:
    """The share of 5xx among the requests counted between two scrapes, from a counter with a status-code
    label (``http_requests_total{code=...}``) or a histogram's ``_count`` (caddy's
    ``caddy_http_request_duration_seconds_count{code=...}``). No requests in between is no data."""

    def __init__(self, metric: str, label: str | None, selector: Selector) -> None:
        self.metric, self.label, self.selector = metric, label, selector
        self.previous: dict[LabelKey, float] | None = None

    def measure(self, scrape_: Scrape) -> Reading:
        series = [s for s in _series(scrape_, self.metric, "_total", self.selector)
                  if s.kind not in ("histogram", "summary") or s.name.endswith("_count")]
        if not series:  # histograms: the family name means its _count
            series = _series(scrape_, self.metric, "_count", self.selector)
        label = self.label
        if series:
            present = set().union(*(dict(s.labels) for s in series))
            if label is None:
                label = next((name for name in ("code", "status") if name in present), None)
            if label is None or label not in present:
                wanted = f"label {label!r}" if label else "'code' or 'status' label"
                labels = ", ".join(sorted(present)) or "none"
                return Reading.error(f"{self.metric} has no {wanted} (its labels: {labels}); "
                                     "set 'label' to the status-code label")
        current = {s.labels: s.value for s in series}
        if self.previous is None:
            self.previous = current
            if not series:
                return Reading.baseline(f"baseline: {self.metric} not exposed yet (counters start at 0)")
            return Reading.baseline(f"baseline: {sum(current.values()):g} requests so far")
        deltas = _deltas(current, self.previous)
        self.previous = current
        if not series:
            return Reading.no_data(f"{self.metric} is not in {scrape_.url} (no requests yet, or another name)")
        total = sum(deltas.values())
        if total <= 0:
            return Reading.no_data("no requests between scrapes (no traffic)")
        errors = sum(delta for key, delta in deltas.items() if dict(key).get(label, "").startswith("5"))
        return Reading.of(errors / total, f"{errors:g} of {total:g} requests 5xx")


def bucket_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """Prometheus's ``histogram_quantile`` for cumulative (upper bound, count) buckets: linear
    interpolation inside the bucket holding the rank; NaN without observations or a +Inf bucket."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: dict[float, float] = {}
    for bound, count in buckets:
        merged[bound] = merged.get(bound, 0.0) + count
    ordered = sorted(merged.items())
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return math.nan
    counts, highest = [], 0.0
    for _, count in ordered:  # ensureMonotonic: scrape skew can make a bucket smaller than the one below
        highest = max(highest, count)
        counts.append(highest)
    observations = counts[-1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next(i for i in range(len(ordered) - 1) if counts[i] >= rank) if counts[-2] >= rank else len(ordered) - 1
    if b == len(ordered) - 1:
        return ordered[-2][0]
    if b == 0 and ordered[0][0] <= 0:
        return ordered[0][0]
    start, end, count = 0.0, ordered[b][0], counts[b]
    if b > 0:
        start, count, rank = ordered[b - 1][0], count - counts[b - 1], rank - counts[b - 1]
    if count == 0:  # only for q == 0 on an empty first bucket; Prometheus's 0/0
        return math.nan
    return start + (end - start) * (rank / count)


class LatencyQuantile:
    """A quantile (e.g. p95) of the requests observed between two scrapes, from a histogram's bucket
    deltas summed over the selected series: ``histogram_quantile(q, sum by (le) (increase(..._bucket)))``."""

    def __init__(self, metric: str, quantile: float, selector: Selector) -> None:
        self.metric = metric.removesuffix("_bucket")
        self.quantile, self.selector = quantile, selector
        self.previous: dict[LabelKey, float] | None = None

    def measure(self, scrape_: Scrape) -> Reading:
        series = [s for s in scrape_.samples if s.name == self.metric + "_bucket" and self.selector.matches(s.labels)]
        if any("le" not in dict(s.labels) for s in series):
            return Reading.error(f"{self.metric}_bucket has samples without an 'le' label: not a histogram")
        current = {s.labels: s.value for s in series}
        if self.previous is None:
            self.previous = current
            return Reading.baseline("baseline: histogram buckets so far" if series else
                                    f"baseline: {self.metric} not exposed yet (histograms start empty)")
        deltas = _deltas(current, self.previous)
        self.previous = current
        if not series:
            return Reading.no_data(f"{self.metric}_bucket is not in {scrape_.url} (no requests yet, or another name)")
        by_le: dict[float, float] = {}
        for key, delta in deltas.items():
            bound = float(dict(key)["le"])
            by_le[bound] = by_le.get(bound, 0.0) + delta
        if math.inf not in by_le:
            return Reading.error(f"{self.metric}_bucket has no le=\"+Inf\" bucket")
        observations = by_le[math.inf]
        if observations <= 0:
            return Reading.no_data("no requests observed between scrapes (no traffic)")
        value = bucket_quantile(self.quantile, by_le.items())
        if math.isnan(value):
            return Reading.no_data(f"p{self.quantile * 100:g} is undefined for these buckets")
        return Reading.of(value, f"p{self.quantile * 100:g} of {observations:g} requests")


def required_names(scrape_: Scrape, names: Sequence[str]) -> Reading:
    """1.0 when every name is exposed (as a family or a sample), else 0.0 with the missing ones."""
    missing = [name for name in names if name not in scrape_.names]
    if missing:
        return Reading.of(0.0, f"missing: {', '.join(missing)}")
    return Reading.of(1.0, f"all {len(names)} present")


# --- Prometheus -----------------------------------------------------------------------------------

class PrometheusClient:
    """Instant queries over the Prometheus HTTP API (``GET /api/v1/query``), urllib only, no credentials."""

    def __init__(self, base_url: str, *, timeout: float = 10) -> None:
        self.base_url = check_http_url(base_url, "Prometheus URL")
        self.timeout = timeout

    def query(self, promql: str) -> dict:
        """The ``data`` of a successful answer; an AcciOpsError carries Prometheus's own error text."""
        url = f"{self.base_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            status, body = http_get(url, self.timeout)
        except ProbeError as exc:
            raise AcciOpsError(f"Prometheus at {self.base_url}: {exc}") from None
        try:
            answer = json.loads(body)
        except ValueError:
            raise AcciOpsError(f"Prometheus at {self.base_url} answered HTTP {status}, not JSON: "
                               f"{_snippet(body)}") from None
        if not isinstance(answer, dict) or answer.get("status") != "success":
            kind = answer.get("errorType", "error") if isinstance(answer, dict) else "error"
            text = answer.get("error", _snippet(body)) if isinstance(answer, dict) else _snippet(body)
            raise AcciOpsError(f"Prometheus rejected the query (HTTP {status}, {kind}): {text}")
        data = answer.get("data")
        if not isinstance(data, dict):
            raise AcciOpsError(f"Prometheus at {self.base_url} answered without data")
        return data

    def instant_value(self, promql: str) -> Reading:
        """One number from a scalar or a one-element vector. Empty vector or NaN: no data (the query
        matched nothing, or divided 0 by 0 because there was no traffic); several series: an error."""
        try:
            data = self.query(promql)
        except AcciOpsError as exc:
            return Reading.error(str(exc))
        kind, result = data.get("resultType"), data.get("result")
        try:
            if kind == "scalar":
                value, labels = float(result[1]), ""
            elif kind == "vector":
                if not result:
                    return Reading.no_data("query returned an empty vector (no matching series)")
                if len(result) > 1:
                    return Reading.error(f"query returned {len(result)} series; the condition needs one "
                                         "(aggregate it, e.g. with sum())")
                value = float(result[0]["value"][1])
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(result[0].get("metric", {}).items()))
            else:
                return Reading.error(f"query returned a {kind}; the condition needs a scalar or one-element vector")
        except (TypeError, ValueError, KeyError, IndexError):
            return Reading.error(f"Prometheus answered a {kind} that cannot be read")
        if math.isnan(value):
            return Reading.no_data("query returned NaN (e.g. 0/0: no traffic in the range)")
        return Reading.of(value, f"{{{labels}}}" if labels else "")


# --- load -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadSpec:
    """Flagger's load-tester idea, bounded: at most ``requests`` GETs, at most ``rate`` per second,
    round-robin over ``paths`` of the app itself, during the analysis window."""

    requests: int = 60
    rate: float = 10.0
    paths: tuple[str, ...] = ("/", "/health")
    timeout_seconds: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.requests, bool) or not isinstance(self.requests, int) or self.requests < 1:
            raise ConfigError(f"load requests must be a whole number >= 1, not {self.requests!r}")
        if isinstance(self.rate, bool) or not isinstance(self.rate, int | float) or not 0 < self.rate <= 1000:
            raise ConfigError(f"load rate must be a number of requests per second in (0, 1000], not {self.rate!r}")
        if isinstance(self.timeout_seconds, bool) or not isinstance(self.timeout_seconds, int | float) \
                or self.timeout_seconds <= 0:
            raise ConfigError(f"load timeout_seconds must be a positive number, not {self.timeout_seconds!r}")
        if isinstance(self.paths, str) or not self.paths:
            raise ConfigError("load paths must be a non-empty list of paths such as '/health'")
        object.__setattr__(self, "paths", tuple(self.paths))
        for path in self.paths:
            if not isinstance(path, str) or not path.startswith("/") or path.startswith("//") or "://" in path:
                raise ConfigError(f"load path {path!r} must be a path of the app starting with '/' (no host)")


@dataclass(frozen=True)
class LoadResult:
    sent: int
    by_class: dict[str, int] = field(default_factory=dict)  # "2xx" ... "5xx", "error"
    seconds: float = 0.0


class LoadGenerator:
    """Sends the load of a LoadSpec to one app in a background thread; ``stop()`` returns the counts.
    Only ever requests ``app_url`` + one of the spec's paths."""

    def __init__(self, app_url: str, spec: LoadSpec, *, log: Callable[[str], None] | None = None) -> None:
        self.base = check_base_url(app_url)
        self.urls = []
        for path in spec.paths:
            url = self.base + path
            if urlsplit(url).netloc != urlsplit(self.base).netloc:
                raise ConfigError(f"load path {path!r} leaves the app {self.base}")
            self.urls.append(url)
        self.spec, self.log = spec, log
        self.counts: dict[str, int] = {}
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._lock = threading.Lock()

    def start(self) -> LoadGenerator:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="release-load", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        for i in range(self.spec.requests):
            due = self._started + i / self.spec.rate
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            try:
                status, _ = http_get(self.urls[i % len(self.urls)], self.spec.timeout_seconds)
                kind = f"{status // 100}xx"
            except ProbeError:
                kind = "error"
            with self._lock:
                self.sent += 1
                self.counts[kind] = self.counts.get(kind, 0) + 1

    def stop(self) -> LoadResult:
        """Stop sending (a request in flight finishes) and return what was sent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.spec.timeout_seconds + 5)
        with self._lock:
            result = LoadResult(self.sent, dict(sorted(self.counts.items())),
                                round(time.monotonic() - self._started, 3))
        if self.log:
            self.log(f"load: {result.sent} requests to {self.base} ({_classes(result.by_class)})")
        return result

    def wait(self) -> LoadResult:
        """Let the whole load run (tests and warm-ups), then return the counts."""
        if self._thread is not None:
            self._thread.join()
        return self.stop()

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _classes(by_class: Mapping[str, int]) -> str:
    return ", ".join(f"{kind}: {n}" for kind, n in by_class.items()) or "no answers"
