"""The release analysis without servers: conditions parsed by a whitelist (never eval), specs from YAML
refusing bad input with one line, Prometheus's quantile interpolation, and the verdict rules (never
passed without data, limits exceeded like Argo's, reasons naming metric, value and condition)."""

from __future__ import annotations

import math

import pytest

from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.releases.analysis import (
    AnalysisResult,
    AnalysisSpec,
    Measurement,
    MetricSpec,
    default_metrics,
    evaluate,
)
from acci_ops.lib.releases.conditions import parse_condition
from acci_ops.lib.releases.providers import LoadSpec, bucket_quantile, parse_selector


def cond(text: str):
    return parse_condition(text, f"condition {text!r}")


@pytest.mark.parametrize(("text", "true_for", "false_for"), [
    ("value < 0.01", [0, 0.0099, -1], [0.01, 0.5]),
    ("value >= 1", [1, 2.5], [0.999]),
    ("value == 1", [1.0], [0, 0.99]),
    ("value != 0", [1, -0.1], [0]),
    ("value <= 1e-3", [0.001, 0], [0.0011]),
    ("value > 0.5 and value < 2", [1], [0.5, 2, 3]),
    ("value < 0.1 or value > 10 and value < 20", [0, 15], [5, 20]),  # `and` binds tighter, as in Python
    ("(value < 0.1 or value > 10) and value < 20", [0, 15], [5, 25]),
    ("value > -2 AND value < +2", [0], [-2, 2]),
])
def test_conditions_compare_the_value_and_combine_with_and_or(text, true_for, false_for):
    """Each operator and and/or (with `and` binding tighter, and parentheses) decides as written."""
    parsed = cond(text)
    assert [parsed.holds(v) for v in true_for] == [True] * len(true_for)
    assert [parsed.holds(v) for v in false_for] == [False] * len(false_for)


def test_a_condition_explains_itself_with_the_value_and_the_operators_own_threshold():
    """The reason's comparison is a true statement with the measured value and the threshold as written."""
    assert cond("value < 0.01").explain(0.134) == "0.134 >= 0.01"
    assert cond("value < 0.01").explain(0.002) == "0.002 < 0.01"
    assert cond("value > 0.01").explain(0.13449) == "0.1345 > 0.01"
    assert cond("value == 1").explain(0.0) == "0 != 1"
    # only true statements: the failed parts of an `and`, every part of a failed `or`
    assert cond("value >= 0 and value < 0.5").explain(0.7) == "0.7 >= 0.5"
    assert cond("value < 0.1 or value > 10").explain(5) == "5 >= 0.1 and 5 <= 10"


@pytest.mark.parametrize(("text", "problem"), [
    ("value < abc", "'abc' is not a number"),
    ("value < 1e", "'1e' is not a number"),
    ("value < nan", "'nan' is not a number"),
    ("", "is empty; write e.g. 'value < 0.01'"),
    ("value", "expected a comparison (<, <=, >, >=, ==, !=) after 'value', got nothing"),
    ("value = 1", "expected a comparison (<, <=, >, >=, ==, !=) after 'value', got '='"),
    ("value <> 1", "expected a number after '<', got '>'"),
    ("value <", "expected a number after '<'"),
    ("x < 1", "expected 'value', got 'x'"),
    ("__import__('os').system('id')", "expected 'value', got '__import__'"),
    ("value < 1; value > 2", "'1;' is not a number"),
    ("value < 1 xor value > 2", "unexpected 'xor'; join comparisons with 'and' / 'or'"),
    ("(value < 1", "'(' without a matching ')'"),
    ("value < 1)", "')' without a matching '('"),
    ("value < 1 and", "ends early"),
])
def test_a_condition_that_is_not_a_simple_comparison_is_refused_with_one_line(text, problem):
    """Anything but `value <op> number` joined by and/or (code included) is a one-line ConfigError."""
    what = f"failure condition {text!r} of metric 'error_ratio'"
    with pytest.raises(ConfigError) as refused:
        parse_condition(text, what)
    assert str(refused.value).startswith(f"{what}: {problem}")
    assert "\n" not in str(refused.value)


def test_a_threshold_that_is_not_a_number_fails_when_the_metric_is_configured():
    """A bad threshold fails at config time, before anything is deployed, with the issue's exact line."""
    with pytest.raises(ConfigError) as refused:
        MetricSpec("error_ratio", "error_ratio", failure="value < abc", metric="http_requests_total")
    assert str(refused.value) == "failure condition 'value < abc' of metric 'error_ratio': 'abc' is not a number"
    with pytest.raises(ConfigError, match=r"^analysis\.metrics\[0\]: success condition 'value >= one' of metric "
                                          r"'health': 'one' is not a number$"):
        AnalysisSpec.from_mapping({"metrics": [{"name": "health", "kind": "health", "success": "value >= one"}]})


def test_the_default_spec_is_health_error_ratio_and_p95_latency():
    """The default gate: /health on every probe, 5xx ratio < 0.01, p95 under a tunable bound."""
    spec = AnalysisSpec()
    assert (spec.interval_seconds, spec.count, spec.min_valid_for(spec.metrics[0])) == (10, 6, 3)
    assert [(m.name, m.kind, m.condition) for m in spec.metrics] == [
        ("health", "health", "passes if value == 1"),
        ("error_ratio", "error_ratio", "passes if value < 0.01"),
        ("latency_p95", "latency_quantile", "passes if value < 0.5")]
    assert all(m.failure_limit == 0 and m.consecutive_error_limit == 4 for m in spec.metrics)
    tuned = default_metrics(0.25, error_metric="caddy_http_request_duration_seconds_count",
                            latency_metric="caddy_http_request_duration_seconds")
    assert tuned[1].metric == "caddy_http_request_duration_seconds_count" and tuned[2].quantile == 0.95
    assert tuned[2].judge(0.3) == (False, "0.3 >= 0.25")
    with pytest.raises(ConfigError, match="latency_p95_seconds must be a number, not 'fast'"):
        default_metrics("fast")


def test_an_analysis_from_yaml():
    """Every key of the YAML form lands in the frozen spec; an empty analysis is the default one."""
    spec = AnalysisSpec.from_mapping({
        "interval_seconds": 2, "count": 5, "min_valid": 2, "timeout_seconds": 1,
        "metrics": [
            {"name": "p99", "kind": "latency_quantile", "metric": "http_request_duration_seconds",
             "quantile": 0.99, "failure": "value > 0.3", "selector": 'handler!="/metrics"'},
            {"name": "errors", "kind": "prometheus", "query": "sum(rate(x[1m]))", "success": "value < 1",
             "failure_limit": 1, "consecutive_error_limit": 2, "min_valid": 4},
            {"name": "exposed", "kind": "required_metrics", "names": ["acci_up", "http_requests_total"]}],
        "load": {"requests": 20, "rate": 5, "paths": ["/", "/api/ping"]}}, "environment 'staging' analysis")
    p99, errors, exposed = spec.metrics
    assert p99.quantile == 0.99 and p99.condition == "fails if value > 0.3" and spec.min_valid_for(p99) == 2
    assert errors.failure_limit == 1 and spec.min_valid_for(errors) == 4
    assert exposed.names == ("acci_up", "http_requests_total") and exposed.condition == "passes if value == 1"
    assert spec.load == LoadSpec(requests=20, rate=5, paths=("/", "/api/ping"))
    assert AnalysisSpec.from_mapping(None) == AnalysisSpec()
    assert AnalysisSpec.from_mapping({"default_metrics": {"latency_p95_seconds": 0.2}}).metrics[2].success == \
        "value < 0.2"


W = "environment 'staging' analysis"


@pytest.mark.parametrize(("raw", "message"), [
    ({"interval": 2}, f"{W}: unknown key 'interval' (known: interval_seconds, count, min_valid, timeout_seconds, "
                      "metrics, default_metrics, load)"),
    ({"count": "six"}, f"{W}: analysis count must be a whole number >= 1, not 'six'"),
    ({"count": True}, f"{W}: analysis count must be a whole number >= 1, not True"),
    ({"interval_seconds": -1}, f"{W}: analysis interval_seconds must be >= 0, not -1"),
    ({"min_valid": 0}, f"{W}: analysis min_valid must be a whole number >= 1, not 0"),
    ({"count": 6, "min_valid": 7}, f"{W}: metric 'health' needs 7 valid measurements (min_valid) but a window of 6 "
                                   "gives it at most 6: it could never pass"),
    ({"count": 1}, f"{W}: metric 'error_ratio' needs 1 valid measurements (min_valid) but a window of 1 gives it "
                   "at most 0 (its first measurement is the deltas' baseline): it could never pass"),
    ({"metrics": "health"}, f"{W}: metrics must be a non-empty list of metrics"),
    ({"metrics": [], "count": 2}, f"{W}: metrics must be a non-empty list of metrics"),
    ({"metrics": [{"kind": "health"}]}, f"{W}.metrics[0]: 'name' is required and must be a string"),
    ({"metrics": [{"name": "x", "kind": "magic", "failure": "value > 1"}]},
     f"{W}.metrics[0]: metric 'x': kind 'magic' is not one of health, error_ratio, latency_quantile, "
     "required_metrics, prometheus"),
    ({"metrics": [{"name": "x", "kind": "health", "tresholds": 1, "typo": 2}]},
     f"{W}.metrics[0]: unknown keys 'tresholds', 'typo' (known: name, kind, success, failure, failure_limit"),
    ({"metrics": [{"name": "x", "kind": "health", "query": "up"}]},
     f"{W}.metrics[0]: 'query' does not apply to kind health (it takes: none of"),
    ({"metrics": [{"name": "x", "kind": "error_ratio", "failure": "value > 1"}]},
     f"{W}.metrics[0]: metric 'x': kind error_ratio needs 'metric', the counter or histogram _count name on /metrics"),
    ({"metrics": [{"name": "x", "kind": "prometheus", "failure": "value > 1"}]},
     f"{W}.metrics[0]: metric 'x': kind prometheus needs 'query', a PromQL expression"),
    ({"metrics": [{"name": "x", "kind": "prometheus", "query": "up"}]},
     f"{W}.metrics[0]: metric 'x': needs a success or failure condition, e.g. success: 'value < 0.01'"),
    ({"metrics": [{"name": "x", "kind": "prometheus", "query": "up", "failure": 0.5}]},
     f"{W}.metrics[0]: failure must be a string, not float 0.5 (quote it: 'value < 0.01')"),
    ({"metrics": [{"name": "x", "kind": "health", "failure_limit": -1}]},
     f"{W}.metrics[0]: metric 'x': failure_limit must be a whole number >= 0, not -1"),
    ({"metrics": [{"name": "x", "kind": "health", "min_valid": 0}]},
     f"{W}.metrics[0]: metric 'x': min_valid must be a whole number >= 1, not 0"),
    ({"metrics": [{"name": "p", "kind": "latency_quantile", "metric": "h", "quantile": 95, "success": "value < 1"}]},
     f"{W}.metrics[0]: metric 'p': quantile 95 must be between 0 and 1 (0.95 is p95)"),
    ({"metrics": [{"name": "r", "kind": "required_metrics", "names": "acci_up"}]},
     f"{W}.metrics[0]: names must be a list of metric names, not 'acci_up'"),
    ({"metrics": [{"name": "e", "kind": "error_ratio", "metric": "m", "success": "value < 1", "selector": "code=5"}]},
     f"{W}.metrics[0]: metric 'e': selector: cannot read label matchers at 'code=5'; write e.g. server=\"srv0\""),
    ({"metrics": [{"name": "my-metric", "kind": "health"}]},
     f"{W}.metrics[0]: metric name 'my-metric' must be letters, digits and _ starting with a letter"),
    ({"metrics": [{"name": "h", "kind": "health"}, {"name": "h", "kind": "health"}]},
     f"{W}: analysis metrics repeat the name h"),
    ({"metrics": [{"name": "h", "kind": "health"}], "default_metrics": {}},
     f"{W}: give either 'metrics' or 'default_metrics', not both"),
    ({"default_metrics": {"latency": 1}}, f"{W}.default_metrics: unknown key 'latency' (known: latency_p95_seconds"),
    ({"load": {"requests": 0}}, f"{W}.load: load requests must be a whole number >= 1, not 0"),
    ({"load": {"paths": ["https://example.com/"]}},
     f"{W}.load: load path 'https://example.com/' must be a path of the app starting with '/' (no host)"),
    ({"load": {"paths": "/"}}, f"{W}.load: paths must be a list of paths such as '/health', not '/'"),
])
def test_bad_analysis_yaml_is_refused_with_one_line_naming_the_place(raw, message):
    """Unknown keys, wrong types and impossible windows fail with one line naming where."""
    with pytest.raises(ConfigError) as refused:
        AnalysisSpec.from_mapping(raw, W)
    assert str(refused.value).startswith(message), str(refused.value)
    assert "\n" not in str(refused.value)


def test_selectors_are_promql_label_matchers():
    """=, !=, =~ and !~ pick series like PromQL (anchored regexes); a bad regex is refused."""
    selector = parse_selector('{server="srv0", handler!="/metrics", code=~"5..", path!~"/internal/.*"}', "t")
    assert selector.matches((("code", "503"), ("handler", "api"), ("path", "/x"), ("server", "srv0")))
    assert not selector.matches((("code", "200"), ("handler", "api"), ("path", "/x"), ("server", "srv0")))
    assert not selector.matches((("code", "500"), ("handler", "/metrics"), ("server", "srv0")))
    assert not selector.matches((("code", "500"), ("path", "/internal/a"), ("server", "srv0")))
    with pytest.raises(ConfigError, match=r"^t: '\(' is not a regular expression"):
        parse_selector('code=~"("', "t")


@pytest.mark.parametrize(("q", "buckets", "expected"), [
    (0.5, [(0.1, 5), (0.2, 10), (math.inf, 10)], 0.1),  # rank 5 lands on the top of the first bucket
    (0.75, [(0.1, 5), (0.2, 10), (math.inf, 10)], 0.15),  # halfway into (0.1, 0.2]
    (0.95, [(0.005, 20), (0.01, 20), (math.inf, 20)], 0.00475),  # caddy's static responses: all in the first
    (0.99, [(0.1, 5), (0.2, 9), (math.inf, 10)], 0.2),  # rank in the +Inf bucket: the highest finite bound
    (0.5, [(0.2, 10), (0.1, 5), (math.inf, 10), (0.1, 0)], 0.1),  # unsorted and repeated bounds are merged
    (0.5, [(0.1, 6), (0.2, 4), (math.inf, 10)], 0.1 * 5 / 6),  # non-monotonic buckets are made monotonic
])
def test_quantiles_interpolate_inside_buckets_like_prometheus_histogram_quantile(q, buckets, expected):
    """Bucket interpolation matches Prometheus's histogram_quantile, edge cases included."""
    assert bucket_quantile(q, buckets) == pytest.approx(expected)


def test_quantiles_without_observations_or_an_inf_bucket_are_undefined():
    """No observations, no +Inf bucket or a single bucket give NaN (no data), never a number."""
    assert math.isnan(bucket_quantile(0.95, [(0.1, 0), (math.inf, 0)]))
    assert math.isnan(bucket_quantile(0.95, [(0.1, 3), (0.2, 4)]))
    assert math.isnan(bucket_quantile(0.95, [(math.inf, 4)]))


# --- verdicts ------------------------------------------------------------------------------------

def taken(spec: AnalysisSpec, rows: dict[str, list]) -> list[Measurement]:
    """Measurements as run_analysis records them: per round, every metric; a row item is a value (judged by
    the metric's condition), "E" (error), "N" (no data) or "B" (baseline)."""
    out = []
    rounds = max(len(r) for r in rows.values())
    for i in range(rounds):
        for metric in spec.metrics:
            item = rows[metric.name][i] if i < len(rows[metric.name]) else None
            if item is None:
                continue
            time = f"2026-12-02T10:00:{i * 10:02d}.000+00:00"
            if isinstance(item, str):
                outcome, detail = {"E": ("error", "/health connection refused"),
                                   "N": ("no_data", "no requests between scrapes (no traffic)"),
                                   "B": ("baseline", "baseline: 12 requests so far")}[item]
                out.append(Measurement(time, metric.name, None, metric.condition, outcome, detail))
            else:
                ok, why = metric.judge(item)
                out.append(Measurement(time, metric.name, item, metric.condition, "passed" if ok else "failed", why))
    return out


def two(**health):
    return AnalysisSpec(metrics=(MetricSpec("health", "health", **health),
                                 MetricSpec("error_ratio", "error_ratio", success="value < 0.01", metric="m")))


def test_passed_needs_every_metric_valid_often_enough_and_within_its_limits():
    """A clean window passes and the reason sums up every metric."""
    spec = two()
    verdict = evaluate(spec, taken(spec, {"health": [1] * 6, "error_ratio": ["B", 0, 0.002, 0, 0, 0]}))
    assert verdict.verdict == "passed"
    assert verdict.reason == "all 2 metrics passed: health 6/6 passed, error_ratio 5/5 passed (max 0.002)"


def test_one_failed_value_beyond_the_failure_limit_fails_naming_value_condition_and_time():
    """Exceeding failure_limit fails with metric, count, limit, value vs threshold and time."""
    spec = two()
    verdict = evaluate(spec, taken(spec, {"health": [1] * 6, "error_ratio": ["B", 0, 0.134, 0.2, 0, 0]}))
    assert verdict.verdict == "failed"
    assert verdict.reason == "error_ratio failed 2 of 6 measurements (limit 0): 0.2 >= 0.01 at 10:00:30"


def test_failures_within_the_failure_limit_pass():
    """failure_limit is the number of failures allowed: one more fails."""
    spec = two(failure_limit=1)
    assert evaluate(spec, taken(spec, {"health": [1, 0, 1, 1, 1, 1], "error_ratio": ["B", 0, 0, 0, 0, 0]})).verdict \
        == "passed"
    assert evaluate(spec, taken(spec, {"health": [1, 0, 1, 0, 1, 1], "error_ratio": ["B", 0, 0, 0, 0, 0]})).reason \
        == "health failed 2 of 6 measurements (limit 1): 0 != 1 at 10:00:30"


def test_no_data_is_inconclusive_never_passed_and_says_why():
    """Too few valid values because of no data is inconclusive, with the why; min_valid decides."""
    spec = two()
    verdict = evaluate(spec, taken(spec, {"health": [1] * 6, "error_ratio": ["B", "N", "N", 0, "N", "N"]}))
    assert verdict.verdict == "inconclusive"
    assert verdict.reason == ("error_ratio: no requests between scrapes (no traffic); 1 of 6 measurements had data, "
                              "min_valid 3")
    # the same window with the metric's own min_valid lowered to what it got passes
    lenient = AnalysisSpec(metrics=(spec.metrics[0], MetricSpec("error_ratio", "error_ratio", success="value < 0.01",
                                                                metric="m", min_valid=1)))
    assert evaluate(lenient, taken(lenient, {"health": [1] * 6, "error_ratio": ["B", "N", "N", 0, "N", "N"]})).verdict \
        == "passed"


def test_errors_fail_only_beyond_the_consecutive_limit_or_when_every_measurement_errored():
    """Errors fail like Argo's consecutiveErrorLimit (strictly more), or when the whole window errored."""
    spec = two()
    rows = {"error_ratio": ["B", 0, 0, 0, 0, 0]}
    assert evaluate(spec, taken(spec, {**rows, "health": ["E", "E", "E", "E", 1, 1]})).verdict == "inconclusive"
    four_then_value = evaluate(spec, taken(spec, {**rows, "health": [1, "E", "E", "E", "E", 1]}))
    assert four_then_value.verdict == "inconclusive"  # 4 in a row is the limit, not beyond; 2 valid < 3
    five = evaluate(spec, taken(spec, {**rows, "health": [1, "E", "E", "E", "E", "E"]}))
    assert five.verdict == "failed"
    assert five.reason == "health errored 5 times in a row (limit 4): /health connection refused at 10:00:50"
    short = AnalysisSpec(count=3, metrics=spec.metrics)
    every = evaluate(short, taken(short, {"health": ["E", "E", "E"], "error_ratio": ["B", 0, 0]}))
    assert every.verdict == "failed"
    assert every.reason == "health: all 3 measurements errored: /health connection refused at 10:00:20"
    scattered = evaluate(spec, taken(spec, {**rows, "health": ["E", 1, "E", "E", 1, 1]}))
    assert scattered.verdict == "passed"


def test_mid_window_only_an_exceeded_limit_counts_as_failed():
    """The early-abort check does not fail a window on 'all errored' after one round."""
    spec = two()
    early = taken(spec, {"health": ["E"], "error_ratio": ["B"]})
    assert evaluate(spec, early, final=False).verdict == "inconclusive"  # one error is not all of a window yet
    assert evaluate(spec, early).verdict == "failed"


def test_the_report_is_a_table_and_flat_numbers_for_dagster():
    """Markdown shows verdict, per-metric tallies and every measurement; metadata is flat numbers."""
    spec = two()
    rows = taken(spec, {"health": [1, 1, 1], "error_ratio": ["B", 0.004, 0.2]})
    verdict = evaluate(spec, rows)
    result = AnalysisResult(verdict.verdict, verdict.reason, verdict.metrics, tuple(rows), rows[0].time,
                            rows[-1].time, 3)
    table = result.markdown()
    assert table.startswith("**failed**: error_ratio failed 1 of 3 measurements (limit 0): 0.2 >= 0.01 at 10:00:20")
    assert "| error_ratio | failed | 1 | 1 | 0 | 0 | 2 / 3 | 0.2 | 0.2 |" in table
    assert "| 2026-12-02T10:00:10.000+00:00 | error_ratio | 0.004 | passes if value < 0.01 | passed | 0.004 < 0.01 |" \
        in table
    assert "| 2026-12-02T10:00:00.000+00:00 | error_ratio |  | passes if value < 0.01 | baseline |" in table
    meta = result.metadata()
    assert meta["verdict_failed"] == 1 and meta["verdict_passed"] == 0
    assert meta["error_ratio_max"] == 0.2 and meta["error_ratio_last"] == 0.2 and meta["error_ratio_failed"] == 1
    assert meta["health_passed"] == 3 and meta["measurements"] == 6
    assert all(isinstance(v, int | float) for v in meta.values())
    assert result.report()[1] == {"time": "2026-12-02T10:00:00.000+00:00", "metric": "error_ratio", "value": None,
                                  "condition": "passes if value < 0.01", "outcome": "baseline",
                                  "detail": "baseline: 12 requests so far"}
