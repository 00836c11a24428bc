"""Alerts: the run-failure sensor and the webhook it (and DR) posts to."""

import dagster as dg

from acci_ops.defs.alerts.resources import alert_resource
from acci_ops.defs.alerts.sensors import run_failure_alert_sensor
from acci_ops.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    return dg.Definitions(sensors=[run_failure_alert_sensor],
                          resources={"alert_webhook": alert_resource(settings.alerts)})
