"""Durations in drill and recovery reports read in the unit a person uses."""

from __future__ import annotations

import pytest

from acci_ops.lib.core.steps import human_duration
from acci_ops.lib.dr.procedures import ProcedureReport


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0.0 s"), (3.2, "3.2 s"), (59.94, "59.9 s"), (60, "1.0 min"), (270, "4.5 min"), (3599, "60.0 min"),
    (3600, "1.0 h"), (5400, "1.5 h"), (93600, "26 h"), (None, "n/a"),
])
def test_human_duration(seconds, text):
    assert human_duration(seconds) == text


def test_drill_report_shows_seconds_minutes_and_hours():
    report = ProcedureReport(kind="drill", environment="production", backup_key="production/x.dump.zst",
                             platform="local", ok=True, rto_seconds=3.2, rpo_seconds=270.0,
                             rto_target_seconds=1800, rpo_target_seconds=93600)
    text = report.markdown()
    assert "- RTO: 3.2 s (target 30.0 min)" in text
    assert "- RPO: 4.5 min (target 26 h)" in text
    assert "RTO: 0.0 min" not in text and "1560.0 min" not in text
