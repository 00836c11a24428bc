"""Failure alerts reach a real HTTP webhook; runs that Dagster will retry are not alerted."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import pytest

from acci_ops.defs.alerts import run_failure_alert_sensor
from acci_ops.defs.resources import AlertWebhook
from acci_ops.lib.alerts import post_webhook
from acci_ops.lib.errors import AcciOpsError
from acci_ops.lib.localpg import free_port
from acci_ops_tests.defs.conftest import defs_from_env
from acci_ops_tests.servers import DB_PASSWORD


class Webhook:
    """A Slack-like endpoint on loopback that records what it receives."""

    def __init__(self, status: int = 200) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T000/B000/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


def failed_backup_run(monkeypatch, pg_server, bucket, instance, tags=None):
    monkeypatch.setenv("ACCI_DATABASE_URL", pg_server.url(password=DB_PASSWORD + "x"))
    monkeypatch.setenv("ACCI_BACKUP_URL", f"s3://{bucket}/acci")
    job = defs_from_env().resolve_job_def("nightly_backup")
    result = job.execute_in_process(partition_key="2026-11-26", instance=instance, raise_on_error=False, tags=tags)
    assert not result.success
    return result


def sensor_context(instance, result, url):
    return dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert_sensor", dagster_instance=instance, dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(), resources={"alert_webhook": AlertWebhook(url=url)},
    ).for_run_failure()


def test_failed_run_posts_one_readable_alert(monkeypatch, pg_server, bucket, instance, webhook):
    result = failed_backup_run(monkeypatch, pg_server, bucket, instance)
    run_failure_alert_sensor(sensor_context(instance, result, webhook.url))
    assert len(webhook.received) == 1
    text = webhook.received[0]["text"]
    assert "job `nightly_backup` failed" in text
    assert 'password authentication failed for user "acci"' in text
    assert DB_PASSWORD not in text


def test_run_that_will_be_retried_is_not_alerted(monkeypatch, pg_server, bucket, instance, webhook):
    result = failed_backup_run(monkeypatch, pg_server, bucket, instance, tags={"dagster/will_retry": "true"})
    outcome = run_failure_alert_sensor(sensor_context(instance, result, webhook.url))
    assert isinstance(outcome, dg.SkipReason) and "will be retried" in outcome.skip_message
    assert webhook.received == []


def test_without_webhook_the_alert_is_logged_and_skipped(monkeypatch, pg_server, bucket, instance):
    result = failed_backup_run(monkeypatch, pg_server, bucket, instance)
    outcome = run_failure_alert_sensor(sensor_context(instance, result, None))
    assert isinstance(outcome, dg.SkipReason) and outcome.skip_message == "no webhook configured"


def test_webhook_errors_are_one_line_without_the_token():
    hook = Webhook(status=500)
    try:
        with pytest.raises(AcciOpsError) as failure:
            post_webhook(hook.url, "x")
        assert str(failure.value) == f"alert webhook at http://127.0.0.1:{hook.server.server_port} answered HTTP 500"
    finally:
        hook.close()
    with pytest.raises(AcciOpsError, match="cannot reach alert webhook at http://127.0.0.1:"):
        post_webhook(f"http://127.0.0.1:{free_port()}/secret-token", "x", timeout=2)
