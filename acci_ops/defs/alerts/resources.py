"""The alert webhook (``alert_webhook``): failed runs and DR notices go to one Slack-compatible hook."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from acci_ops.defs._shared import resource_from_spec, spec_resource
from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.core.webhook import post_webhook
from acci_ops.settings import AlertSpec


class AlertWebhook(spec_resource(AlertSpec, "AlertWebhookFields", timeout_seconds=(float, Field(
        default=10.0, description=("Total deadline for one post, from connecting to the last byte of the answer; "
                                   "a webhook that is slower or broken is logged and never stops DR or a backup."))))):
    """Slack-compatible incoming webhook for failure alerts; unset means alerts only in the logs."""

    def post(self, text: str) -> bool:
        """True when posted, False when no webhook is configured; a failed post raises one
        secret-free AcciOpsError line within ``timeout_seconds`` (callers log it and carry on)."""
        if not self.url:
            return False
        post_webhook(self.url, text, timeout=self.timeout_seconds)
        return True

    def run_link(self, run_id: str) -> str | None:
        return f"{self.dagster_url.rstrip('/')}/runs/{run_id}" if self.dagster_url else None

    def notify(self, context: dg.OpExecutionContext, text: str) -> None:
        """Alerts never stop DR (which calls this as ``_contracts.Notifier``): any failure to post
        is one log line without the URL's secret path."""
        try:
            if not self.post(text):
                context.log.warning(f"no alert webhook configured: {text}")
        except AcciOpsError as exc:
            context.log.error(f"alert not delivered ({exc}): {text}")
        except Exception as exc:  # noqa: BLE001 - a broken webhook must never fail a recovery
            context.log.error(f"alert not delivered (the alert webhook failed: {type(exc).__name__}): {text}")


def alert_resource(spec: AlertSpec) -> AlertWebhook:
    return resource_from_spec(AlertWebhook, spec)


def notify(webhook: AlertWebhook, context: dg.OpExecutionContext, text: str) -> None:
    """``webhook.notify``, for a caller that holds the webhook as a value."""
    webhook.notify(context, text)
