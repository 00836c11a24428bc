"""Failure alerts: unattended runs must not fail silently."""

import dagster as dg

from acci_ops.defs.alerts.resources import AlertWebhook
from acci_ops.lib.core.errors import AcciOpsError

WILL_RETRY_TAG = "dagster/will_retry"


def will_be_retried(run: dg.DagsterRun, instance: dg.DagsterInstance) -> bool:
    """True when Dagster's run retries will launch this run again, so alerting now is noise."""
    tag = run.tags.get(WILL_RETRY_TAG)
    if tag is not None:
        return tag.lower() == "true"
    if not instance.run_retries_enabled:
        return False
    max_retries = int(run.tags.get("dagster/max_retries", instance.run_retries_max_retries))
    return int(run.tags.get("dagster/retry_number", 0)) < max_retries


def alert_text(context: dg.RunFailureSensorContext, link: str | None) -> str:
    run = context.dagster_run
    reason = context.failure_event.message if context.failure_event else "unknown reason"
    step_errors = []
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        if data and data.error:
            step_errors.append(f"{event.step_key}: {data.error.message.strip().splitlines()[0]}")
    lines = [f":rotating_light: acci_ops: job `{run.job_name}` failed (run {run.run_id[:8]})"]
    lines += step_errors or [reason]
    if link:
        lines.append(link)
    return "\n".join(lines)


@dg.run_failure_sensor(
    name="run_failure_alert_sensor",
    description=(
        "Posts a Slack-compatible message to ACCI_ALERT_WEBHOOK_URL when any acci_ops run fails for good "
        "(runs Dagster is about to retry are skipped). Without a webhook the alert goes to this sensor's log."
    ),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def run_failure_alert_sensor(context: dg.RunFailureSensorContext, alert_webhook: AlertWebhook):  # noqa: ANN201
    if will_be_retried(context.dagster_run, context.instance):
        return dg.SkipReason(f"run {context.dagster_run.run_id} will be retried; not alerting yet")
    text = alert_text(context, alert_webhook.run_link(context.dagster_run.run_id))
    one_line = " / ".join(text.splitlines())
    try:
        posted = alert_webhook.post(text)
    except AcciOpsError as exc:
        # One line, secret-free (post_webhook's contract); the tick fails so the UI shows it.
        context.log.error(f"alert for run {context.dagster_run.run_id} not delivered ({exc}): {one_line}")
        raise AcciOpsError(f"alert for run {context.dagster_run.run_id} not delivered: {exc}") from None
    if not posted:
        context.log.warning(f"no ACCI_ALERT_WEBHOOK_URL configured; alert not sent: {one_line}")
        return dg.SkipReason("no webhook configured")
    context.log.info(f"alert posted for run {context.dagster_run.run_id}")
    return None
