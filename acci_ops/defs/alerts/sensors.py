"""Failure alerts: unattended runs must not fail silently."""

import dagster as dg
from dagster._core.execution.plan.objects import StepFailureData
from dagster._utils.error import SerializableErrorInfo

from acci_ops.defs.alerts.resources import AlertWebhook
from acci_ops.lib.core.errors import AcciOpsError

WILL_RETRY_TAG = "dagster/will_retry"
# Dagster's wrappers around the user code's exception: the cause is the exception they wrap.
DAGSTER_WRAPPERS = {"DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError",
                    "DagsterExecutionLoadInputError", "DagsterExecutionHandleOutputError",
                    "DagsterResourceFunctionError"}


def will_be_retried(run: dg.DagsterRun, instance: dg.DagsterInstance) -> bool:
    """True when Dagster's run retries will launch this run again, so alerting now is noise."""
    tag = run.tags.get(WILL_RETRY_TAG)
    if tag is not None:
        return tag.lower() == "true"
    if not instance.run_retries_enabled:
        return False
    max_retries = int(run.tags.get("dagster/max_retries", instance.run_retries_max_retries))
    return int(run.tags.get("dagster/retry_number", 0)) < max_retries


def error_cause(error: SerializableErrorInfo | None) -> str:
    """The error's own message, first line, without Dagster's wrapper (``Error occurred while executing
    op``), the ``module.Class:`` prefix or the stack: what an operator needs to read first."""
    while error is not None and error.cause is not None and error.cls_name in DAGSTER_WRAPPERS:
        error = error.cause  # the user code's exception, not the step-execution wrapper around it
    if error is None:
        return "unknown reason"
    text = error.message.strip()
    qualified, sep, rest = text.partition(":")
    if qualified.rsplit(".", 1)[-1] == error.cls_name:  # "pkg.module.Class: message" or a bare "Class"
        text = rest if sep else ""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line or error.cls_name


def step_failure_cause(data: StepFailureData) -> str:
    """A failed step's cause in one line: a ``dg.Failure``'s description, else the error's message."""
    if data.user_failure_data is not None and (data.user_failure_data.description or "").strip():
        return next(part.strip() for part in data.user_failure_data.description.splitlines() if part.strip())
    return error_cause(data.error)


def alert_text(context: dg.RunFailureSensorContext, link: str | None) -> str:
    """The header (job and run), then the cause alone: one line per failed step (prefixed by the step
    when several failed), never the exception class or the stack."""
    run = context.dagster_run
    causes = [(event.step_key, step_failure_cause(event.step_failure_data))
              for event in context.get_step_failure_events() if event.step_failure_data]
    if len(causes) == 1:
        reasons = [causes[0][1]]
    elif causes:
        reasons = [f"{step}: {cause}" for step, cause in causes]
    else:
        event = context.failure_event
        data = event.event_specific_data if event else None
        error = getattr(data, "error", None)
        reasons = [error_cause(error) if error else (event.message if event and event.message else "unknown reason")]
    lines = [f":rotating_light: acci_ops: job `{run.job_name}` failed (run {run.run_id[:8]})", *reasons]
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
