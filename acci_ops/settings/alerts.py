"""The alerts section: where failure and DR notices go, one for the whole code location."""

from __future__ import annotations

from dataclasses import dataclass

from acci_ops.settings._fields import setting
from acci_ops.settings._registry import Section, register


@dataclass(frozen=True)
class AlertSpec:
    """Where failure and DR notices go (one for the whole code location)."""

    url_env: str | None = setting(None, var="ACCI_ALERT_WEBHOOK_URL",
                                  help="Slack-compatible incoming webhook URL (kept in ACCI_ALERT_WEBHOOK_URL).")
    dagster_url: str | None = setting(None, var="ACCI_DAGSTER_URL",
                                      help="Base URL of the Dagster UI, for links in alerts.")


register(Section(name="alerts", spec=AlertSpec, per_environment=False))
