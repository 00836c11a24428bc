"""The release gate: measure a freshly deployed version over a window and decide passed, failed or
inconclusive, in the spirit of Argo Rollouts' AnalysisRun and Flagger's canary analysis.

A window is ``count`` measurements ``interval_seconds`` apart; each measurement takes every metric once.
A measured value fails when its failure condition holds (or, without one, when its success condition does
not). A metric fails when more than ``failure_limit`` values failed, when more than
``consecutive_error_limit`` measurements in a row errored, or when every measurement errored; it is
inconclusive when it got fewer than ``min_valid`` values because the app gave no data (no traffic, an
empty query). The analysis passes only when every metric passed: never without data. It stops as soon
as the verdict can only be failed, so a broken release is rolled back without waiting out the window.

The verdict's reason names the metric, the value and the condition ("error_ratio failed 2 of 6
measurements (limit 0): 0.134 >= 0.01 (13 of 97 requests 5xx) at 10:00:30"), because that line is
what an operator sees in the Dagster UI or an alert.
"""

from __future__ import annotations

import inspect
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.dr.probes import check_base_url
from acci_ops.lib.releases.conditions import Condition, format_value, parse_condition
from acci_ops.lib.releases.providers import (
    ErrorRatio,
    LatencyQuantile,
    LoadGenerator,
    LoadResult,
    LoadSpec,
    ProbeError,
    PrometheusClient,
    Reading,
    Scrape,
    Selector,
    check_http_url,
    parse_selector,
    probe_health,
    required_names,
    scrape,
)

Log = Callable[[str], None]

KINDS = {
    "health": "GET /health: 1 when it answers 2xx, else 0",
    "error_ratio": "share of 5xx among the requests between two scrapes of /metrics",
    "latency_quantile": "a quantile of request latency between two scrapes, from a histogram",
    "required_metrics": "1 when /metrics exposes every name in 'names', else 0",
    "prometheus": "a PromQL instant query returning one number",
}
DELTA_KINDS = frozenset({"error_ratio", "latency_quantile"})  # their first measurement is a baseline
SCRAPE_KINDS = DELTA_KINDS | {"required_metrics"}
_KIND_FIELDS = {
    "health": frozenset(),
    "error_ratio": frozenset({"metric", "label", "selector"}),
    "latency_quantile": frozenset({"metric", "quantile", "selector"}),
    "required_metrics": frozenset({"names"}),
    "prometheus": frozenset({"query"}),
}
_OPTIONAL = {"metric": None, "label": None, "quantile": None, "selector": "", "names": (), "query": None}
_COMMON = ("name", "kind", "success", "failure", "failure_limit", "consecutive_error_limit", "min_valid")
OUTCOMES = ("passed", "failed", "error", "no_data", "baseline")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _whole(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what} must be a whole number >= {minimum}, not {value!r}")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(f"{what} must be a number, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class MetricSpec:
    """One metric of an analysis. ``kind`` picks the provider (see KINDS); the kind's own fields are
    ``metric``/``label``/``selector`` (error_ratio), ``metric``/``quantile``/``selector``
    (latency_quantile), ``names`` (required_metrics), ``query`` (prometheus)."""

    name: str
    kind: str
    success: str | None = None
    failure: str | None = None
    failure_limit: int = 0
    consecutive_error_limit: int = 4
    min_valid: int | None = None
    metric: str | None = None
    label: str | None = None
    quantile: float | None = None
    selector: str = ""
    names: tuple[str, ...] = ()
    query: str | None = None
    _success: Condition | None = field(default=None, init=False, repr=False, compare=False)
    _failure: Condition | None = field(default=None, init=False, repr=False, compare=False)
    _selector: Selector = field(default=Selector(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(f"metric name {self.name!r} must be letters, digits and _ starting with a letter "
                              "(it names the report's metadata keys)")
        where = f"metric {self.name!r}"
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        for key, default in _OPTIONAL.items():
            if key not in _KIND_FIELDS[self.kind] and getattr(self, key) not in (default, None):
                raise ConfigError(f"{where}: {key!r} does not apply to kind {self.kind}")
        _whole(self.failure_limit, f"{where}: failure_limit", 0)
        _whole(self.consecutive_error_limit, f"{where}: consecutive_error_limit", 0)
        if self.min_valid is not None:
            _whole(self.min_valid, f"{where}: min_valid", 1)  # 0 would let a metric pass without any data
        if self.kind in DELTA_KINDS and (not isinstance(self.metric, str) or not self.metric.strip()):
            what = "counter or histogram _count" if self.kind == "error_ratio" else "histogram"
            raise ConfigError(f"{where}: kind {self.kind} needs 'metric', the {what} name on /metrics")
        if self.label is not None and (not isinstance(self.label, str) or not _NAME.fullmatch(self.label)):
            raise ConfigError(f"{where}: label {self.label!r} must be a label name such as 'code'")
        if self.kind == "latency_quantile":
            quantile = 0.95 if self.quantile is None else _number(self.quantile, f"{where}: quantile")
            if not 0 < quantile < 1:
                raise ConfigError(f"{where}: quantile {quantile:g} must be between 0 and 1 (0.95 is p95)")
            object.__setattr__(self, "quantile", quantile)
        if self.kind == "required_metrics":
            names = (self.names,) if isinstance(self.names, str) else tuple(self.names or ())
            if not names or not all(isinstance(n, str) and n.strip() for n in names):
                raise ConfigError(f"{where}: kind required_metrics needs 'names', a list of metric names")
            object.__setattr__(self, "names", names)
        if self.kind == "prometheus" and (not isinstance(self.query, str) or not self.query.strip()):
            raise ConfigError(f"{where}: kind prometheus needs 'query', a PromQL expression")
        if not isinstance(self.selector, str):
            raise ConfigError(f"{where}: selector must be a string of label matchers such as 'server=\"srv0\"'")
        object.__setattr__(self, "_selector", parse_selector(self.selector, f"{where}: selector"))
        success, failure = self.success, self.failure
        if success is None and failure is None:
            if self.kind not in ("health", "required_metrics"):
                raise ConfigError(f"{where}: needs a success or failure condition, e.g. success: 'value < 0.01'")
            success = "value == 1"
            object.__setattr__(self, "success", success)
        if success is not None:
            object.__setattr__(self, "_success", parse_condition(
                success, f"success condition {success!r} of metric {self.name!r}"))
        if failure is not None:
            object.__setattr__(self, "_failure", parse_condition(
                failure, f"failure condition {failure!r} of metric {self.name!r}"))

    @property
    def condition(self) -> str:
        """The rule a value is judged by, as the report shows it."""
        return f"fails if {self._failure.text}" if self._failure else f"passes if {self._success.text}"

    def judge(self, value: float) -> tuple[bool, str]:
        """(passed, explanation): failed when the failure condition holds, or without one when the
        success condition does not; the explanation is the comparison with the value filled in."""
        if self._failure is not None:
            return not self._failure.holds(value), self._failure.explain(value)
        assert self._success is not None
        return self._success.holds(value), self._success.explain(value)

    @classmethod
    def from_mapping(cls, data: object, where: str) -> MetricSpec:
        """A metric from YAML; unknown keys, keys of another kind and wrong types fail with one line."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a mapping with 'name' and 'kind', not {type(data).__name__}")
        known = (*_COMMON, *_OPTIONAL)
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ConfigError(f"{where}: unknown key{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(known)})")
        for key in ("name", "kind"):
            if not isinstance(data.get(key), str):
                raise ConfigError(f"{where}: '{key}' is required and must be a string"
                                  + (f" (one of {', '.join(KINDS)})" if key == "kind" else ""))
        kind = data["kind"]
        if kind in KINDS:
            foreign = sorted(k for k in data if k in _OPTIONAL and k not in _KIND_FIELDS[kind])
            if foreign:
                takes = ", ".join(sorted(_KIND_FIELDS[kind])) or "none of " + ", ".join(_OPTIONAL)
                raise ConfigError(f"{where}: {', '.join(map(repr, foreign))} does not apply to kind {kind} "
                                  f"(it takes: {takes})")
        for key in ("success", "failure", "metric", "label", "selector", "query"):
            if key in data and not isinstance(data[key], str):
                raise ConfigError(f"{where}: {key} must be a string, not {type(data[key]).__name__} {data[key]!r}"
                                  + (" (quote it: 'value < 0.01')" if key in ("success", "failure") else ""))
        values = dict(data)
        if "names" in values:
            names = values["names"]
            if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
                raise ConfigError(f"{where}: names must be a list of metric names, not {names!r}")
            values["names"] = tuple(names)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def default_metrics(latency_p95_seconds: float = 0.5, *, max_error_ratio: float = 0.01,
                    error_metric: str = "http_requests_total", error_label: str | None = None,
                    latency_metric: str = "http_request_duration_seconds",
                    selector: str = "") -> tuple[MetricSpec, ...]:
    """The gate every release gets unless it says otherwise: ``/health`` 2xx on every probe, 5xx
    ratio below ``max_error_ratio`` and p95 latency below ``latency_p95_seconds``, both from scrapes
    of the app's own ``/metrics`` (no Prometheus needed). ``error_label`` None: ``code``, else ``status``."""
    bound = _number(latency_p95_seconds, "latency_p95_seconds")
    ratio = _number(max_error_ratio, "max_error_ratio")
    if bound <= 0 or not 0 < ratio <= 1:
        raise ConfigError(f"latency_p95_seconds must be > 0 and max_error_ratio in (0, 1], not {bound!r}, {ratio!r}")
    return (
        MetricSpec("health", "health", success="value == 1", failure_limit=0),
        MetricSpec("error_ratio", "error_ratio", success=f"value < {ratio!r}", metric=error_metric,
                   label=error_label, selector=selector),
        MetricSpec("latency_p95", "latency_quantile", success=f"value < {bound!r}", metric=latency_metric,
                   quantile=0.95, selector=selector),
    )


@dataclass(frozen=True)
class AnalysisSpec:
    """The window (``count`` measurements ``interval_seconds`` apart), the metrics, how many valid
    measurements a metric needs (``min_valid``, default half the count rounded up), the HTTP timeout,
    and an optional load to send during the window."""

    interval_seconds: float = 10.0
    count: int = 6
    metrics: tuple[MetricSpec, ...] = field(default_factory=lambda: default_metrics())
    min_valid: int | None = None
    timeout_seconds: float = 5.0
    load: LoadSpec | None = None

    def __post_init__(self) -> None:
        interval = _number(self.interval_seconds, "analysis interval_seconds")
        if interval < 0:
            raise ConfigError(f"analysis interval_seconds must be >= 0, not {interval:g}")
        _whole(self.count, "analysis count", 1)
        if self.min_valid is not None:
            _whole(self.min_valid, "analysis min_valid", 1)
        timeout = _number(self.timeout_seconds, "analysis timeout_seconds")
        if timeout <= 0:
            raise ConfigError(f"analysis timeout_seconds must be > 0, not {timeout:g}")
        metrics = tuple(self.metrics)
        if not metrics or not all(isinstance(m, MetricSpec) for m in metrics):
            raise ConfigError("analysis metrics must be a non-empty list of metrics")
        names = [m.name for m in metrics]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"analysis metrics repeat the name{'s' * (len(twice) > 1)} {', '.join(twice)}")
        for metric in metrics:
            possible = self.count - (metric.kind in DELTA_KINDS)
            needed = self.min_valid_for(metric)
            if needed > possible:
                baseline = " (its first measurement is the deltas' baseline)" if metric.kind in DELTA_KINDS else ""
                raise ConfigError(f"metric {metric.name!r} needs {needed} valid measurements (min_valid) but a window "
                                  f"of {self.count} gives it at most {possible}{baseline}: it could never pass")
        if self.load is not None and not isinstance(self.load, LoadSpec):
            raise ConfigError("analysis load must be a LoadSpec")
        object.__setattr__(self, "interval_seconds", interval)
        object.__setattr__(self, "timeout_seconds", timeout)
        object.__setattr__(self, "metrics", metrics)

    def min_valid_for(self, metric: MetricSpec) -> int:
        if metric.min_valid is not None:
            return metric.min_valid
        return self.min_valid if self.min_valid is not None else math.ceil(self.count / 2)

    @classmethod
    def from_mapping(cls, data: object, where: str = "analysis") -> AnalysisSpec:
        """An analysis from YAML. ``metrics`` omitted: ``default_metrics()``, tuned by an optional
        ``default_metrics`` mapping of that function's arguments; ``load``: a LoadSpec's fields."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a mapping, not {type(data).__name__}")
        known = ("interval_seconds", "count", "min_valid", "timeout_seconds", "metrics", "default_metrics", "load")
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ConfigError(f"{where}: unknown key{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(known)})")
        values = {k: data[k] for k in ("interval_seconds", "count", "min_valid", "timeout_seconds") if k in data}
        if "metrics" in data and "default_metrics" in data:
            raise ConfigError(f"{where}: give either 'metrics' or 'default_metrics', not both")
        if "metrics" in data:
            metrics = data["metrics"]
            if isinstance(metrics, str | Mapping) or not isinstance(metrics, Sequence) or not metrics:
                raise ConfigError(f"{where}: metrics must be a non-empty list of metrics")
            values["metrics"] = tuple(MetricSpec.from_mapping(m, f"{where}.metrics[{i}]")
                                      for i, m in enumerate(metrics))
        elif "default_metrics" in data:
            values["metrics"] = _defaults_from(data["default_metrics"], f"{where}.default_metrics")
        if "load" in data:
            values["load"] = _load_from(data["load"], f"{where}.load")
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _defaults_from(data: object, where: str) -> tuple[MetricSpec, ...]:
    params = [p for p in inspect.signature(default_metrics).parameters]
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of {', '.join(params)}")
    unknown = sorted(str(k) for k in data if k not in params)
    if unknown:
        raise ConfigError(f"{where}: unknown key{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
                          f"(known: {', '.join(params)})")
    for key in ("error_metric", "error_label", "latency_metric", "selector"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{where}: {key} must be a string, not {data[key]!r}")
    try:
        return default_metrics(**data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _load_from(data: object, where: str) -> LoadSpec:
    known = ("requests", "rate", "paths", "timeout_seconds")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of {', '.join(known)}")
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown key{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
                          f"(known: {', '.join(known)})")
    values = dict(data)
    if "paths" in values:
        paths = values["paths"]
        if isinstance(paths, str) or not isinstance(paths, Sequence):
            raise ConfigError(f"{where}: paths must be a list of paths such as '/health', not {paths!r}")
        values["paths"] = tuple(paths)
    try:
        return LoadSpec(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class Target:
    """What is measured: the app's base URL; its ``/metrics`` (default ``<app>/metrics``; set it when the
    app exposes metrics on a management port); the Prometheus that scrapes it, for ``prometheus`` metrics."""

    app_url: str
    metrics_url: str | None = None
    prometheus_url: str | None = None

    def __post_init__(self) -> None:
        app = check_base_url(self.app_url)
        object.__setattr__(self, "app_url", app)
        object.__setattr__(self, "metrics_url", check_http_url(self.metrics_url, "metrics URL")
                           if self.metrics_url else app + "/metrics")
        if self.prometheus_url:
            object.__setattr__(self, "prometheus_url", check_http_url(self.prometheus_url, "Prometheus URL"))


@dataclass(frozen=True)
class Measurement:
    """One metric measured once. ``value`` is None for error, no_data and baseline."""

    time: str  # ISO 8601, UTC
    metric: str
    value: float | None
    condition: str
    outcome: str  # passed, failed, error, no_data, baseline
    detail: str


@dataclass(frozen=True)
class MetricVerdict:
    metric: str
    verdict: str  # passed, failed, inconclusive
    reason: str
    measurements: int
    passed: int
    failed: int
    errors: int
    no_data: int
    valid: int
    min_valid: int
    max_consecutive_errors: int
    last: float | None
    max: float | None


@dataclass(frozen=True)
class Verdict:
    verdict: str  # passed, failed, inconclusive
    reason: str
    metrics: tuple[MetricVerdict, ...]


def _at(measurement: Measurement) -> str:
    return measurement.time[11:19]


def _judge_metric(spec: AnalysisSpec, metric: MetricSpec, taken: Sequence[Measurement], final: bool) -> MetricVerdict:
    by = {outcome: [m for m in taken if m.outcome == outcome] for outcome in OUTCOMES}
    passed, failed, errors, no_data = (len(by[k]) for k in ("passed", "failed", "error", "no_data"))
    streak = longest = 0
    for m in taken:
        streak = streak + 1 if m.outcome == "error" else 0
        longest = max(longest, streak)
    values = [m.value for m in taken if m.value is not None]
    valid, needed, n = passed + failed, spec.min_valid_for(metric), len(taken)
    if failed > metric.failure_limit:
        last = by["failed"][-1]
        verdict, reason = "failed", (f"{metric.name} failed {failed} of {n} measurements "
                                     f"(limit {metric.failure_limit}): {last.detail} at {_at(last)}")
    elif longest > metric.consecutive_error_limit:
        last = by["error"][-1]
        verdict, reason = "failed", (f"{metric.name} errored {longest} times in a row "
                                     f"(limit {metric.consecutive_error_limit}): {last.detail} at {_at(last)}")
    elif final and errors and errors == n - len(by["baseline"]):
        last = by["error"][-1]
        verdict, reason = "failed", f"{metric.name}: all {errors} measurements errored: {last.detail} at {_at(last)}"
    elif valid < needed:
        why = (by["no_data"] or by["error"] or by["baseline"] or [None])[-1]
        verdict, reason = "inconclusive", (f"{metric.name}: {why.detail if why else 'not measured'}; {valid} of {n} "
                                           f"measurements had data, min_valid {needed}")
    else:
        shown = "" if metric.kind in ("health", "required_metrics") else f" (max {format_value(max(values))})"
        verdict, reason = "passed", f"{metric.name} {passed}/{valid} passed{shown}"
    return MetricVerdict(metric.name, verdict, reason, n, passed, failed, errors, no_data, valid, needed, longest,
                         values[-1] if values else None, max(values) if values else None)


def evaluate(spec: AnalysisSpec, measurements: Sequence[Measurement], *, final: bool = True) -> Verdict:
    """The verdict the measurements so far give. ``final=False`` (mid-window) only decides whether the
    analysis has already failed (a limit is exceeded); 'every measurement errored' needs the whole window."""
    metrics = tuple(_judge_metric(spec, metric, [m for m in measurements if m.metric == metric.name], final)
                    for metric in spec.metrics)
    for outcome in ("failed", "inconclusive"):
        chosen = [m.reason for m in metrics if m.verdict == outcome]
        if chosen:
            return Verdict(outcome, "; ".join(chosen), metrics)
    return Verdict("passed", f"all {len(metrics)} metrics passed: " + ", ".join(m.reason for m in metrics), metrics)


@dataclass(frozen=True)
class AnalysisResult:
    """The verdict, why, per-metric tallies, every measurement, and the load that was sent."""

    verdict: str  # passed, failed, inconclusive
    reason: str
    metrics: tuple[MetricVerdict, ...]
    measurements: tuple[Measurement, ...]
    started: str
    finished: str
    rounds: int
    aborted: bool = False
    load: LoadResult | None = None

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def report(self) -> list[dict]:
        """The measurements as plain dicts (time, metric, value, condition, outcome, detail)."""
        return [asdict(m) for m in self.measurements]

    def markdown(self) -> str:
        """The verdict, a per-metric summary and every measurement, as Markdown for the Dagster UI."""
        def cell(text: object) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ")

        def number(value: float | None) -> str:
            return "" if value is None else format_value(value)

        lines = [f"**{self.verdict}**: {cell(self.reason)}", ""]
        if self.load is not None:
            classes = ", ".join(f"{k}: {v}" for k, v in self.load.by_class.items()) or "no answers"
            lines += [f"Load: {self.load.sent} requests in {self.load.seconds:g} s ({classes})", ""]
        lines += ["| metric | verdict | passed | failed | errors | no data | valid / needed | last | max |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {m.metric} | {m.verdict} | {m.passed} | {m.failed} | {m.errors} | {m.no_data} | "
                  f"{m.valid} / {m.min_valid} | {number(m.last)} | {number(m.max)} |" for m in self.metrics]
        lines += ["", "| time | metric | value | condition | outcome | detail |", "|---|---|---|---|---|---|"]
        lines += [f"| {m.time} | {m.metric} | {number(m.value)} | {cell(m.condition)} | {m.outcome} | "
                  f"{cell(m.detail)} |" for m in self.measurements]
        return "\n".join(lines) + "\n"

    def metadata(self) -> dict[str, int | float]:
        """Flat numbers for Dagster metadata and its plots: the verdict as 0/1 flags, per-metric counts
        and last/max values, the load's counts."""
        out: dict[str, int | float] = {f"verdict_{v}": int(self.verdict == v) for v in ("passed", "failed",
                                                                                          "inconclusive")}
        out.update(rounds=self.rounds, measurements=len(self.measurements), aborted=int(self.aborted))
        for m in self.metrics:
            out.update({f"{m.metric}_passed": m.passed, f"{m.metric}_failed": m.failed,
                        f"{m.metric}_errors": m.errors, f"{m.metric}_no_data": m.no_data, f"{m.metric}_valid": m.valid})
            if m.last is not None and m.max is not None and math.isfinite(m.max):
                out.update({f"{m.metric}_last": m.last, f"{m.metric}_max": m.max})
        if self.load is not None:
            out["load_sent"] = self.load.sent
            out.update({f"load_{kind}": n for kind, n in self.load.by_class.items()})
        return out


class _RoundScrape:
    """One ``/metrics`` fetch per measurement round, shared by every scrape metric of the round."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout
        self._result: Scrape | ProbeError | None = None

    def get(self) -> Scrape:
        if self._result is None:
            try:
                self._result = scrape(self.url, self.timeout)
            except ProbeError as exc:
                self._result = exc
        if isinstance(self._result, ProbeError):
            raise self._result
        return self._result


Probe = Callable[[_RoundScrape], Reading]


def _probe(metric: MetricSpec, target: Target, timeout: float) -> Probe:
    if metric.kind == "health":
        return lambda page: probe_health(target.app_url, timeout)
    if metric.kind == "prometheus":
        client = PrometheusClient(target.prometheus_url or "", timeout=timeout)
        return lambda page: client.instant_value(metric.query or "")
    if metric.kind == "error_ratio":
        measure = ErrorRatio(metric.metric or "", metric.label, metric._selector).measure
    elif metric.kind == "latency_quantile":
        measure = LatencyQuantile(metric.metric or "", metric.quantile or 0.95, metric._selector).measure
    else:
        measure = lambda scraped: required_names(scraped, metric.names)

    def scraped(page: _RoundScrape) -> Reading:
        try:
            return measure(page.get())
        except ProbeError as exc:
            return Reading.error(str(exc))
    return scraped


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds")


def _measurement(metric: MetricSpec, reading: Reading, when: datetime) -> Measurement:
    stamp = _iso(when)
    if reading.outcome != "value" or reading.value is None:
        return Measurement(stamp, metric.name, None, metric.condition, reading.outcome, reading.detail)
    ok, explanation = metric.judge(reading.value)
    detail = f"{explanation} ({reading.detail})" if reading.detail else explanation
    return Measurement(stamp, metric.name, reading.value, metric.condition, "passed" if ok else "failed", detail)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def run_analysis(spec: AnalysisSpec, target: Target, *, now: Callable[[], datetime] = _utc_now,
                 sleep: Callable[[float], None] = time.sleep, log: Log | None = None,
                 abort_early: bool = True) -> AnalysisResult:
    """Measure ``target`` over the window of ``spec`` and judge it. ``now``/``sleep`` are the clock
    (injectable: tests use short intervals or a fake clock). With ``abort_early`` the window stops at
    the first round after which the verdict can only be failed."""
    prometheus_metrics = [m.name for m in spec.metrics if m.kind == "prometheus"]
    if prometheus_metrics and not target.prometheus_url:
        raise ConfigError(f"metric {prometheus_metrics[0]!r} is a PromQL query but no Prometheus URL was given")
    probes = [(metric, _probe(metric, target, spec.timeout_seconds)) for metric in spec.metrics]
    load = LoadGenerator(target.app_url, spec.load, log=log) if spec.load else None
    measurements: list[Measurement] = []
    started, rounds, aborted = now(), 0, False
    if load:
        load.start()
    try:
        for i in range(spec.count):
            if i:
                delay = (started + timedelta(seconds=i * spec.interval_seconds) - now()).total_seconds()
                if delay > 0:
                    sleep(delay)
            rounds += 1
            page = _RoundScrape(target.metrics_url or "", spec.timeout_seconds)
            for metric, probe in probes:
                when = now()
                measurement = _measurement(metric, probe(page), when)
                measurements.append(measurement)
                if log:
                    value = "" if measurement.value is None else f" {format_value(measurement.value)}"
                    log(f"[{rounds}/{spec.count}] {metric.name}: {measurement.outcome}{value} {measurement.detail}")
            if abort_early and i < spec.count - 1 and evaluate(spec, measurements, final=False).verdict == "failed":
                aborted = True
                break
    finally:
        load_result = load.stop() if load else None
    verdict = evaluate(spec, measurements)
    reason = verdict.reason
    if aborted:
        reason += f" (stopped after {rounds} of {spec.count} measurements)"
    if log:
        log(f"analysis {verdict.verdict}: {reason}")
    return AnalysisResult(verdict.verdict, reason, verdict.metrics, tuple(measurements), _iso(started), _iso(now()),
                          rounds, aborted, load_result)


__all__ = ["AnalysisResult", "AnalysisSpec", "KINDS", "LoadGenerator", "LoadResult", "LoadSpec", "Measurement",
           "MetricSpec", "MetricVerdict", "PrometheusClient", "Reading", "Target", "Verdict", "default_metrics",
           "evaluate", "run_analysis"]
