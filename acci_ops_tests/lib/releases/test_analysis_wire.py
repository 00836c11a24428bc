"""The release analysis over real HTTP against a scripted stdlib server (answers no real app gives on
demand: a 503 exactly once, a dropped connection, garbage or scripted counters on /metrics) and a
closed port; no process is started, so these are unit tests."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.core.net import free_port
from acci_ops.lib.releases.analysis import AnalysisSpec, MetricSpec, Target, default_metrics, run_analysis
from acci_ops.lib.releases.providers import LoadGenerator, LoadSpec, PrometheusClient

OK = (200, "ok")


def health(**options) -> MetricSpec:
    return MetricSpec("health", "health", **options)


def run(spec: AnalysisSpec, target: Target | str, **options):
    target = target if isinstance(target, Target) else Target(target)
    return run_analysis(spec, target, log=lambda line: None, **options)


def test_a_flaky_sample_within_the_failure_limit_passes_and_beyond_it_fails_early(scripted_app):
    """One 503 passes with failure_limit 1 and fails (stopping the window) with 0."""
    scripted_app.script["/health"] = [OK, (503, "database down"), OK]
    tolerant = run(AnalysisSpec(interval_seconds=0.2, count=4, metrics=(health(failure_limit=1),)), scripted_app.url)
    assert tolerant.verdict == "passed", tolerant.reason
    assert [m.outcome for m in tolerant.measurements] == ["passed", "failed", "passed", "passed"]
    assert tolerant.measurements[1].detail == "0 != 1 (HTTP 503 database down)"

    scripted_app.hits.clear()
    strict = run(AnalysisSpec(interval_seconds=0.2, count=4, metrics=(health(),)), scripted_app.url)
    assert strict.verdict == "failed" and strict.aborted and len(strict.measurements) == 2
    at = strict.measurements[1].time[11:19]
    assert strict.reason == (f"health failed 1 of 2 measurements (limit 0): 0 != 1 (HTTP 503 database down) at {at} "
                             "(stopped after 2 of 4 measurements)")


def test_min_valid_is_respected_too_few_valid_measurements_never_pass(scripted_app):
    """Scattered errors below the consecutive limit still leave too few valid values: not passed."""
    scripted_app.script["/health"] = [OK, (0, ""), (0, ""), OK, (0, ""), (0, "")]  # 0: connection dropped
    spec = AnalysisSpec(interval_seconds=0, count=6, metrics=(health(),))
    result = run(spec, scripted_app.url)
    assert [m.outcome for m in result.measurements] == ["passed", "error", "error", "passed", "error", "error"]
    assert result.verdict == "inconclusive"
    assert result.reason == ("health: /health closed the connection without an answer; 2 of 6 measurements had data, "
                             "min_valid 3")
    scripted_app.hits.clear()
    assert run(AnalysisSpec(interval_seconds=0, count=6, min_valid=2, metrics=(health(),)),
               scripted_app.url).verdict == "passed"


def test_unparsable_metrics_text_is_an_error_and_a_window_of_errors_fails(scripted_app):
    """Garbage on /metrics is an error (one scrape per round), and a window of errors fails."""
    scripted_app.script["/metrics"] = [(200, "<html><body>Welcome to nginx!</body></html>")]
    scripted_app.script["/health"] = [OK]
    spec = AnalysisSpec(interval_seconds=0, count=3, metrics=default_metrics())
    result = run(spec, scripted_app.url)
    errors = [m for m in result.measurements if m.metric == "error_ratio"]
    assert [m.outcome for m in errors] == ["error"] * 3
    assert errors[0].detail == (f"{scripted_app.url}/metrics is not Prometheus exposition format: "
                                "invalid metric name:<html><body>Welcome to nginx!</body></html>")
    assert scripted_app.hits["/metrics"] == 3  # one scrape per round, shared by error_ratio and latency_p95
    assert result.verdict == "failed"
    assert result.reason.startswith("error_ratio: all 3 measurements errored: ")
    assert "latency_p95: all 3 measurements errored" in result.reason


def test_a_metrics_page_that_answers_404_is_an_error(scripted_app):
    """A non-2xx /metrics is an error naming the status, not an empty page."""
    spec = AnalysisSpec(interval_seconds=0, count=2, metrics=(
        MetricSpec("exposed", "required_metrics", names=("acci_up",)),))
    result = run(spec, scripted_app.url)
    assert result.measurements[0].detail == f"{scripted_app.url}/metrics answered HTTP 404 not scripted"
    assert result.verdict == "failed"


def test_a_closed_port_errors_every_measurement_and_fails():
    """Connection refused is an error, not a 0; a window of them fails."""
    app = f"http://127.0.0.1:{free_port()}"
    result = run(AnalysisSpec(interval_seconds=0, count=3), app)
    assert {m.outcome for m in result.measurements} == {"error"}
    assert result.measurements[0].detail == "/health connection refused"
    assert result.verdict == "failed"
    assert result.reason.startswith("health: all 3 measurements errored: /health connection refused at ")


def test_more_consecutive_errors_than_the_limit_stop_the_window_early():
    """consecutive_error_limit + 1 errors in a row fail and stop measuring."""
    app = f"http://127.0.0.1:{free_port()}"
    result = run(AnalysisSpec(interval_seconds=0, count=10, metrics=(health(consecutive_error_limit=2),)), app)
    assert result.verdict == "failed" and result.rounds == 3 and result.aborted
    assert result.reason.startswith("health errored 3 times in a row (limit 2): /health connection refused at ")


COUNTERS = [
    'http_requests_total{code="200",path="/"} 10\n',
    # a code="500" series appears (it started at 0): 5 of the 10 new requests failed
    'http_requests_total{code="200",path="/"} 15\nhttp_requests_total{code="500",path="/"} 5\n',
    # the app restarted: the counter starts over (3 new requests), the 500 series is gone
    'http_requests_total{code="200",path="/"} 3\n',
    'http_requests_total{code="200",path="/"} 3\n',  # nothing moved: no traffic
]


def test_error_ratio_counts_deltas_new_series_and_resets_and_no_traffic_is_no_data(scripted_app):
    """Deltas: a new series started at 0, a reset counts from 0, no movement is no data."""
    scripted_app.script["/metrics"] = [(200, "# TYPE http_requests_total counter\n" + page) for page in COUNTERS]
    spec = AnalysisSpec(interval_seconds=0, count=4, min_valid=2, metrics=(MetricSpec(
        "error_ratio", "error_ratio", metric="http_requests", success="value < 0.01", failure_limit=1),))
    result = run(spec, scripted_app.url)
    assert [(m.outcome, m.value, m.detail) for m in result.measurements] == [
        ("baseline", None, "baseline: 10 requests so far"),
        ("failed", 0.5, "0.5 >= 0.01 (5 of 10 requests 5xx)"),
        ("passed", 0.0, "0 < 0.01 (0 of 3 requests 5xx)"),
        ("no_data", None, "no requests between scrapes (no traffic)")]
    assert result.verdict == "passed"  # 2 valid (min_valid 2), 1 failure (limit 1)


def test_error_ratio_reads_a_status_label_and_names_the_labels_when_it_has_none(scripted_app):
    """A status label is found by itself; a wrong label is an error listing the real ones."""
    pages = ['acci_http_requests_total{path="/",status="200"} 1\n',
             'acci_http_requests_total{path="/",status="200"} 2\nacci_http_requests_total{path="/",status="503"} 2\n']
    scripted_app.script["/metrics"] = [(200, page) for page in pages]
    spec = AnalysisSpec(interval_seconds=0, count=2, min_valid=1, metrics=(MetricSpec(
        "error_ratio", "error_ratio", metric="acci_http_requests_total", success="value < 0.5"),))
    failed = run(spec, scripted_app.url)
    assert failed.measurements[1].detail == "0.6667 >= 0.5 (2 of 3 requests 5xx)"
    unlabeled = AnalysisSpec(interval_seconds=0, count=2, min_valid=1, metrics=(MetricSpec(
        "error_ratio", "error_ratio", metric="acci_http_requests_total", label="code", success="value < 0.5"),))
    result = run(unlabeled, scripted_app.url)
    assert result.measurements[0].detail == ("acci_http_requests_total has no label 'code' (its labels: path, status); "
                                             "set 'label' to the status-code label")
    assert result.verdict == "failed"


HISTOGRAM = ("# TYPE http_request_duration_seconds histogram\n"
             'http_request_duration_seconds_bucket{le="0.1"} {a}\n'
             'http_request_duration_seconds_bucket{le="0.5"} {b}\n'
             'http_request_duration_seconds_bucket{le="+Inf"} {c}\n'
             "http_request_duration_seconds_count {c}\nhttp_request_duration_seconds_sum 1\n")


def test_latency_quantile_interpolates_bucket_deltas_between_scrapes(scripted_app):
    """The quantile is of the requests between scrapes only, not of the app's lifetime."""
    pages = [(100, 100, 100), (110, 190, 200), (110, 190, 200)]  # then 10 fast, 80 medium, 10 slow requests
    scripted_app.script["/metrics"] = [(200, HISTOGRAM.replace("{a}", str(a)).replace("{b}", str(b))
                                        .replace("{c}", str(c))) for a, b, c in pages]
    spec = AnalysisSpec(interval_seconds=0, count=3, min_valid=1, metrics=(MetricSpec(
        "latency_p50", "latency_quantile", metric="http_request_duration_seconds", quantile=0.5,
        success="value < 0.35"),))
    result = run(spec, scripted_app.url)
    # rank 50 of 100 new observations: 40 of the 80 in (0.1, 0.5] -> 0.1 + 0.4 * 40/80
    assert [(m.outcome, m.value) for m in result.measurements] == [
        ("baseline", None), ("passed", pytest.approx(0.3)), ("no_data", None)]
    assert result.measurements[1].detail.endswith("(p50 of 100 requests)")
    assert result.measurements[2].detail == "no requests observed between scrapes (no traffic)"


def test_the_window_follows_the_injected_clock(scripted_app):
    """Measurements are interval_seconds apart on the injected clock, which sleep advances."""
    scripted_app.script["/health"] = [OK]
    clock = {"now": datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC)}
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock["now"] += timedelta(seconds=seconds)

    result = run(AnalysisSpec(interval_seconds=10, count=4, metrics=(health(),)), scripted_app.url,
                 now=lambda: clock["now"], sleep=sleep)
    assert slept == [10, 10, 10]
    assert [m.time for m in result.measurements] == [f"2026-12-02T10:00:{s:02d}.000+00:00" for s in (0, 10, 20, 30)]
    assert result.started == "2026-12-02T10:00:00.000+00:00" and result.verdict == "passed"


def test_the_load_step_sends_bounded_traffic_to_the_app_only(scripted_app):
    """N requests at most R per second, only to the app's paths, counted by status class."""
    scripted_app.script.update({"/": [OK], "/boom": [(500, "no")]})
    started = time.monotonic()
    load = LoadGenerator(scripted_app.url, LoadSpec(requests=10, rate=20, paths=("/", "/boom"))).start()
    result = load.wait()
    assert time.monotonic() - started >= 0.45  # 10 requests at most 20 per second
    assert result.sent == 10 and result.by_class == {"2xx": 5, "5xx": 5}
    assert scripted_app.hits == {"/": 5, "/boom": 5}
    with pytest.raises(ConfigError, match=r"^app URL 'ftp://127.0.0.1/' must look like http\(s\)://host\[:port\]$"):
        LoadGenerator("ftp://127.0.0.1/", LoadSpec())
    with pytest.raises(ConfigError, match=r"^load path '//evil.example/' must be a path of the app"):
        LoadSpec(paths=("//evil.example/",))


def test_an_analysis_with_load_reports_what_it_sent(scripted_app):
    """The load runs during the window only and is reported in result, metadata and Markdown."""
    scripted_app.script.update({"/": [OK], "/health": [OK]})
    spec = AnalysisSpec(interval_seconds=0.2, count=3, metrics=(health(),), load=LoadSpec(requests=100, rate=20))
    result = run(spec, scripted_app.url)
    assert result.verdict == "passed"
    assert 4 <= result.load.sent < 100  # stopped with the window (0.4 s at 20/s), not after 100 requests
    assert result.metadata()["load_2xx"] == result.load.sent
    assert f"Load: {result.load.sent} requests in" in result.markdown()


def test_prometheus_answers_that_are_not_json_are_errors(scripted_app):
    """A proxy's HTML instead of Prometheus's JSON is an error quoting it."""
    scripted_app.script["/api/v1/query"] = [(502, "<html>Bad gateway</html>")]
    reading = PrometheusClient(scripted_app.url, timeout=2).instant_value("up")
    assert reading.outcome == "error"
    assert reading.detail == f"Prometheus at {scripted_app.url} answered HTTP 502, not JSON: <html>Bad gateway</html>"


def test_urls_are_checked_before_anything_is_measured():
    """Credentials in URLs, non-http URLs and a missing Prometheus URL fail before measuring."""
    with pytest.raises(ConfigError, match=r"^Prometheus URL must not carry credentials \(user:password@\)$"):
        Target("http://127.0.0.1:1", prometheus_url="http://admin:hunter2@127.0.0.1:9090")
    with pytest.raises(ConfigError, match=r"^metrics URL 'file:///etc/passwd' must look like http\(s\)://host"):
        Target("http://127.0.0.1:1", metrics_url="file:///etc/passwd")
    spec = AnalysisSpec(count=1, metrics=(MetricSpec("q", "prometheus", query="up", success="value == 1"),))
    with pytest.raises(ConfigError, match="^metric 'q' is a PromQL query but no Prometheus URL was given$"):
        run(spec, "http://127.0.0.1:1")
