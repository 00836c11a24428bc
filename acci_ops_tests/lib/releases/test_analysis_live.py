"""The release analysis against real servers: Debian's caddy as the app (its metrics move with real
traffic, counted by status code) and Debian's prometheus scraping it every second. Caddy serves its
/metrics on a port of its own, so neither scrapes nor probes of /metrics are counted as the app's
traffic (see fixtures/release_servers.py)."""

from __future__ import annotations

import re
import time

import pytest

from acci_ops.lib.releases.analysis import AnalysisSpec, MetricSpec, Target, default_metrics, run_analysis
from acci_ops.lib.releases.providers import LoadGenerator, LoadSpec, PrometheusClient
from acci_ops_tests.fixtures.release_servers import get

HISTOGRAM = "caddy_http_request_duration_seconds"  # caddy 2.6: a histogram labelled code, handler, method, server
CADDY_METRICS = default_metrics(0.5, error_metric=f"{HISTOGRAM}_count", latency_metric=HISTOGRAM)
AT = r"\d\d:\d\d:\d\d"


def target(app, prometheus=None) -> Target:
    return Target(app.url, metrics_url=app.metrics_url, prometheus_url=prometheus.url if prometheus else None)


def run(spec, where, **options):
    return run_analysis(spec, where, log=lambda line: None, **options)


def test_a_healthy_app_under_the_load_step_passes(caddy_apps):
    """Real caddy under the load step: health, 5xx ratio, p95 and required names all pass."""
    app = caddy_apps["healthy"]
    exposed = MetricSpec("exposed", "required_metrics", names=(HISTOGRAM, "caddy_http_requests_total"))
    spec = AnalysisSpec(interval_seconds=0.3, count=5, metrics=(*CADDY_METRICS, exposed),
                        load=LoadSpec(requests=200, rate=50, paths=("/", "/health", "/api/users")))
    result = run(spec, target(app))
    assert result.verdict == "passed", result.reason
    assert result.reason.startswith("all 4 metrics passed: health 5/5 passed, error_ratio 4/4 passed (max 0), "
                                    "latency_p95 4/4 passed (max 0.00")
    ratios = [m for m in result.measurements if m.metric == "error_ratio"]
    assert [m.outcome for m in ratios] == ["baseline"] + ["passed"] * 4
    assert all(re.fullmatch(r"0 < 0\.01 \(0 of \d+ requests 5xx\)", m.detail) for m in ratios[1:]), ratios
    assert result.load.by_class == {"2xx": result.load.sent} and result.load.sent >= 30
    meta = result.metadata()
    assert meta["verdict_passed"] == 1 and meta["health_last"] == 1 and 0 < meta["latency_p95_max"] <= 0.005


def test_a_growing_5xx_ratio_fails_early_naming_the_value_and_the_condition(caddy_apps):
    """Load half to /boom: the first ratio fails and the window stops there."""
    app = caddy_apps["sick"]  # its /boom answers 500, like every variant's; the healthy app stays clean
    spec = AnalysisSpec(interval_seconds=0.3, count=5, metrics=CADDY_METRICS[1:],
                        load=LoadSpec(requests=200, rate=50, paths=("/", "/boom")))
    result = run(spec, target(app))
    assert result.verdict == "failed" and result.aborted
    assert re.fullmatch(rf"error_ratio failed 1 of 2 measurements \(limit 0\): 0\.\d+ >= 0\.01 \(\d+ of \d+ requests "
                        rf"5xx\) at {AT} \(stopped after 2 of 5 measurements\)", result.reason), result.reason
    assert 0.3 < result.measurements[-2].value < 0.7  # half of the load went to /boom
    assert result.load.by_class["5xx"] >= 1 and result.load.by_class["2xx"] >= 1


def test_a_failing_health_endpoint_fails_at_the_first_probe(caddy_apps):
    """/health 503 fails at once (failure_limit 0) and names the answer."""
    result = run(AnalysisSpec(interval_seconds=0.2, count=4, metrics=CADDY_METRICS[:1]), target(caddy_apps["sick"]))
    assert result.verdict == "failed" and result.rounds == 1
    assert re.fullmatch(rf"health failed 1 of 1 measurements \(limit 0\): 0 != 1 \(HTTP 503 database down\) at {AT} "
                        r"\(stopped after 1 of 4 measurements\)", result.reason), result.reason


def test_no_traffic_is_inconclusive_never_passed(caddy_apps):
    """Counters that do not move between scrapes are no data: inconclusive, never passed."""
    app = caddy_apps["healthy"]
    app.traffic("/", 3)  # the series exist; from now on nothing moves them
    result = run(AnalysisSpec(interval_seconds=0.2, count=4, metrics=CADDY_METRICS[1:]), target(app))
    assert result.verdict == "inconclusive"
    assert result.reason == (
        "error_ratio: no requests between scrapes (no traffic); 0 of 4 measurements had data, min_valid 2; "
        "latency_p95: no requests observed between scrapes (no traffic); 0 of 4 measurements had data, min_valid 2")
    assert [m.outcome for m in result.measurements if m.metric == "error_ratio"] == ["baseline"] + ["no_data"] * 3


def test_an_app_without_http_metrics_fails_naming_the_missing_ones(caddy_apps):
    """Missing metric names fail the required_metrics check by name; the ratio has no data."""
    app = caddy_apps["bare"]
    exposed = MetricSpec("exposed", "required_metrics", names=("go_goroutines", HISTOGRAM, "caddy_http_requests_total"))
    spec = AnalysisSpec(interval_seconds=0.2, count=3, metrics=(exposed, CADDY_METRICS[1]),
                        load=LoadSpec(requests=50, rate=50))
    result = run(spec, target(app), abort_early=False)
    assert result.verdict == "failed"
    assert re.fullmatch(rf"exposed failed 3 of 3 measurements \(limit 0\): 0 != 1 \(missing: {HISTOGRAM}, "
                        rf"caddy_http_requests_total\) at {AT}", result.reason), result.reason
    ratio = result.metrics[1]  # the traffic is there, but not its metric: no data, not a pass
    assert (ratio.verdict, ratio.reason) == ("inconclusive", f"error_ratio: {HISTOGRAM}_count is not in "
                                             f"{app.metrics_url} (no requests yet, or another name); 0 of 3 "
                                             "measurements had data, min_valid 2")


def test_a_counter_without_a_status_code_label_is_an_error_naming_its_labels(caddy_apps):
    """caddy_http_requests_total has no code label: an error naming the labels it has."""
    app = caddy_apps["healthy"]
    app.traffic("/", 1)
    spec = AnalysisSpec(interval_seconds=0, count=2, min_valid=1, metrics=(MetricSpec(
        "error_ratio", "error_ratio", metric="caddy_http_requests_total", success="value < 0.01"),))
    result = run(spec, target(app))
    assert result.verdict == "failed"
    assert result.measurements[0].detail == ("caddy_http_requests_total has no 'code' or 'status' label (its labels: "
                                             "handler, server); set 'label' to the status-code label")


RATE = f'rate({HISTOGRAM}_count{{job="app"}}[5s])'
ERROR_RATIO = (f'(sum(rate({HISTOGRAM}_count{{job="app",code=~"5.."}}[5s])) or vector(0)) / '
               f'sum(rate({HISTOGRAM}_count{{job="app"}}[5s]))')
P95 = f'histogram_quantile(0.95, sum by (le) (rate({HISTOGRAM}_bucket{{job="app"}}[5s])))'


def test_promql_queries_over_prometheus_pass_a_healthy_app_under_load(caddy_apps, prometheus):
    """PromQL error ratio and p95 over a real Prometheus pass while the app serves traffic."""
    app = caddy_apps["healthy"]
    client = PrometheusClient(prometheus.url, timeout=5)
    metrics = (MetricSpec("errors", "prometheus", query=ERROR_RATIO, success="value < 0.01"),
               MetricSpec("p95", "prometheus", query=P95, failure="value >= 0.5"))
    with LoadGenerator(app.url, LoadSpec(requests=1000, rate=40)):
        deadline = time.monotonic() + 20
        while client.instant_value(f"sum({RATE})").outcome != "value" or \
                client.instant_value(f"sum({RATE})").value == 0:  # Prometheus has seen the traffic
            assert time.monotonic() < deadline, "prometheus never saw the load"
            time.sleep(0.3)
        result = run(AnalysisSpec(interval_seconds=0.5, count=4, metrics=metrics), target(app, prometheus))
    assert result.verdict == "passed", result.reason
    assert [m.value for m in result.measurements if m.metric == "errors"] == [0, 0, 0, 0]
    assert all(0 < m.value < 0.01 for m in result.measurements if m.metric == "p95")


def test_promql_without_data_is_inconclusive_and_broken_queries_fail_with_prometheus_own_message(caddy_apps,
                                                                                                  prometheus):
    """Empty vector and NaN are no data; several series and a syntax error are errors in Prometheus's words."""
    app = caddy_apps["healthy"]
    client = PrometheusClient(prometheus.url, timeout=5)
    empty = MetricSpec("empty", "prometheus", query=f'sum(rate({HISTOGRAM}_count{{code="599"}}[5s]))',
                       success="value < 0.01")
    assert client.instant_value(empty.query).detail == "query returned an empty vector (no matching series)"
    only_empty = run(AnalysisSpec(interval_seconds=0.2, count=3, metrics=(empty,)), target(app, prometheus))
    assert only_empty.verdict == "inconclusive"
    assert only_empty.reason == ("empty: query returned an empty vector (no matching series); 0 of 3 measurements "
                                 "had data, min_valid 2")

    nan = MetricSpec("nan", "prometheus", query="vector(0) / vector(0)", success="value < 0.01")
    scalar_nan = MetricSpec("scalar_nan", "prometheus", query="0 / 0", success="value < 0.01")
    several = MetricSpec("several", "prometheus", query="up", success="value == 1")
    broken = MetricSpec("broken", "prometheus", query="sum(rate(", success="value < 0.01")
    result = run(AnalysisSpec(interval_seconds=0, count=2, min_valid=1, metrics=(nan, scalar_nan, several, broken)),
                 target(app, prometheus))
    details = {m.metric: (m.outcome, m.detail) for m in result.measurements}
    assert details["nan"] == details["scalar_nan"] == ("no_data", "query returned NaN (e.g. 0/0: no traffic in the "
                                                                  "range)")
    assert details["several"] == ("error", "query returned 2 series; the condition needs one (aggregate it, e.g. "
                                           "with sum())")
    assert details["broken"] == ("error", 'Prometheus rejected the query (HTTP 400, bad_data): invalid parameter '
                                          '"query": 1:10: parse error: unclosed left parenthesis')
    assert result.verdict == "failed"
    assert [m.verdict for m in result.metrics] == ["inconclusive", "inconclusive", "failed", "failed"]
    assert re.search(rf"broken: all 2 measurements errored: Prometheus rejected the query \(HTTP 400, bad_data\): "
                     rf'invalid parameter "query": 1:10: parse error: unclosed left parenthesis at {AT}', result.reason)


@pytest.mark.parametrize("variant", ["healthy", "sick", "bare"])
def test_the_fixture_apps_are_real_caddy_servers(caddy_apps, variant):
    """What the other tests rely on: caddy answers, /boom is a 500 (not sent to the healthy app: the PromQL
    tests measure its 5xx ratio), the app port's /metrics is a 404."""
    app = caddy_apps[variant]
    assert (get(app.url + "/"), get(app.url + "/metrics")) == (200, 404)
    if variant != "healthy":
        assert get(app.url + "/boom") == 500
    assert get(app.url + "/health") == (503 if variant == "sick" else 200)
    assert app.process.poll() is None
