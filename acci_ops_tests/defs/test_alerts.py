"""Failure alerts reach a real HTTP webhook; runs that Dagster will retry are not alerted."""

from __future__ import annotations

import logging
import threading

import dagster as dg
import pytest

from acci_ops.defs.alerts.resources import AlertWebhook, notify
from acci_ops.defs.alerts.sensors import run_failure_alert_sensor
from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.core.net import free_port
from acci_ops.lib.core.webhook import post_webhook
from acci_ops_tests.fixtures.defs import defs_from_env
from acci_ops_tests.fixtures.servers import DB_PASSWORD
from acci_ops_tests.fixtures.webhook import Webhook


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


class Collect(logging.Handler):
    """Keeps what the sensor's own logger emitted (it does not propagate to the root logger)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_without_webhook_the_alert_is_logged_and_skipped(monkeypatch, pg_server, bucket, instance):
    result = failed_backup_run(monkeypatch, pg_server, bucket, instance)
    context = sensor_context(instance, result, None)
    collected = Collect()
    context.log.addHandler(collected)
    outcome = run_failure_alert_sensor(context)
    assert isinstance(outcome, dg.SkipReason) and outcome.skip_message == "no webhook configured"
    logged = [r.getMessage() for r in collected.records if r.levelno == logging.WARNING]
    assert len(logged) == 1
    assert "no ACCI_ALERT_WEBHOOK_URL configured; alert not sent:" in logged[0]
    assert "job `nightly_backup` failed" in logged[0]
    assert 'password authentication failed for user "acci"' in logged[0]
    assert DB_PASSWORD not in logged[0]


@pytest.mark.parametrize("password", ["p#ss-zq93", "p?ss-zq93", "p/ss-zq93", "a@b-zq93"])
def test_malformed_database_url_never_shows_the_password(monkeypatch, bucket, instance, webhook, password):
    """Run failure description, everything Dagster recorded, and the alert: no part of the password."""
    monkeypatch.setenv("ACCI_DATABASE_URL", f"postgresql://acci:{password}@127.0.0.1:notaport/acci?password=qp-zq93")
    monkeypatch.setenv("ACCI_BACKUP_URL", f"s3://{bucket}/acci")
    job = defs_from_env().resolve_job_def("nightly_backup")
    result = job.execute_in_process(partition_key="2026-11-26", instance=instance, raise_on_error=False)
    assert not result.success
    description = result.failure_data_for_node("db_backup").user_failure_data.description
    assert description.startswith("database URL of environment production postgresql://acci:***@")
    assert "is malformed" in description
    records = instance.all_logs(result.run_id)
    recorded = "\n".join(dg.serialize_value(r) for r in records)
    run_failure_alert_sensor(sensor_context(instance, result, webhook.url))
    alert = webhook.received[0]["text"]
    for text in (description, recorded, alert):
        assert password not in text
        assert "zq93" not in text


def test_a_webhook_failure_during_dr_is_logged_and_does_not_stop_it(instance):
    """DR's notifications go through notify: a webhook answering garbage must not fail the op."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def answer_garbage() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"GARBAGE\r\n\r\n")
        conn.close()

    threading.Thread(target=answer_garbage, daemon=True).start()
    url = f"http://hook:pw-zq93@127.0.0.1:{listener.getsockname()[1]}/services/T/B/secret-token"

    @dg.op(required_resource_keys={"alert_webhook"})
    def notify_then_continue(context) -> str:  # noqa: ANN001 - string annotations confuse Dagster here
        notify(context.resources.alert_webhook, context, "DR of `production` started by <!channel>")
        return "restore would run now"

    @dg.job(resource_defs={"alert_webhook": AlertWebhook(url=url, timeout_seconds=5)})
    def dr_like() -> None:
        notify_then_continue()

    try:
        result = dr_like.execute_in_process(instance=instance)
    finally:
        listener.close()
    assert result.success
    assert result.output_for_node("notify_then_continue") == "restore would run now"
    errors = [r.user_message for r in instance.all_logs(result.run_id) if r.level >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith("alert not delivered (alert webhook at http://127.0.0.1:")
    assert "BadStatusLine" in errors[0]
    for secret in ("pw-zq93", "secret-token", "services"):
        assert secret not in errors[0]


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


def test_a_failing_webhook_fails_the_sensor_tick_with_one_clean_line(monkeypatch, pg_server, bucket, instance):
    hook = Webhook(status=500)
    try:
        result = failed_backup_run(monkeypatch, pg_server, bucket, instance)
        context = sensor_context(instance, result, hook.url)
        collected = Collect()
        context.log.addHandler(collected)
        with pytest.raises(AcciOpsError) as failure:
            run_failure_alert_sensor(context)
    finally:
        hook.close()
    run_id = result.run_id
    assert str(failure.value) == (f"alert for run {run_id} not delivered: alert webhook at "
                                  f"http://127.0.0.1:{hook.server.server_port} answered HTTP 500")
    errors = [r.getMessage() for r in collected.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and "job `nightly_backup` failed" in errors[0]
    assert "secret-token" not in str(failure.value) + errors[0]


def failed_run_of(instance, raise_it):
    """A real failed run whose only op calls ``raise_it``."""

    @dg.op
    def recover_environment() -> None:
        raise_it()

    @dg.job
    def disaster_recovery() -> None:
        recover_environment()

    result = disaster_recovery.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    return result


CAUSE = ("confirmation does not match: type the environment name 'production' exactly in 'confirm' to proceed; "
         "nothing was done")


def raise_failure() -> None:
    raise dg.Failure(description=CAUSE)


def raise_plain() -> None:
    raise RuntimeError("the scratch server refused the connection\nsecond line of detail")


@pytest.mark.parametrize(("raise_it", "cause"), [
    (raise_failure, CAUSE),
    (raise_plain, "the scratch server refused the connection"),
])
def test_alert_text_is_the_cause_alone(instance, webhook, raise_it, cause):
    result = failed_run_of(instance, raise_it)
    run_failure_alert_sensor(sensor_context(instance, result, webhook.url))
    [message] = webhook.received
    lines = message["text"].splitlines()
    assert lines[0] == f":rotating_light: acci_ops: job `disaster_recovery` failed (run {result.run_id[:8]})"
    assert lines[1] == cause
    assert len(lines) == 2
    for noise in ("dagster._core", "Failure:", "RuntimeError", "Error occurred while executing", "Stack Trace",
                  "File \""):
        assert noise not in message["text"]
