"""Stray, future-dated or late keys in the bucket cannot blind the validation sensor, and its caps
bound the work.

Real moto S3 over HTTP; ticks are evaluated with build_sensor_context against the real definitions.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from acci_ops.defs.validation import sensors
from acci_ops.lib.storage.objectstore import S3Store
from acci_ops_tests.fixtures.backups import put_backup
from acci_ops_tests.fixtures.defs import defs_from_env

TODAY = datetime.now(UTC).date()


@pytest.fixture
def sensing_env(single_env, monkeypatch, scratch_url, s3):
    monkeypatch.setenv("ACCI_SCRATCH_DATABASE_URL", scratch_url)
    return (s3, single_env, "acci")


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == logging.WARNING]


def tick(instance, cursor=None, captured: Captured | None = None):
    defs = defs_from_env()
    sensor = defs.resolve_sensor_def("backup_validation_sensor")
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources)
    if captured is not None:
        context.log.addHandler(captured)
    return sensor.evaluate_tick(context)


def requested(result) -> list[str]:
    return [r.tags["acci/backup_key"] for r in result.run_requests]


def cursor_at(day: date) -> str:
    return json.dumps({"production": f"production/{day.isoformat()}/"})


def test_a_stray_future_key_does_not_move_the_cursor_past_real_backups(sensing_env, instance):
    """Reproduction: one stray production/2062-01-01/README.txt hid every later backup."""
    s3, bucket, prefix = sensing_env
    first = put_backup(sensing_env, "production", TODAY - timedelta(days=20))
    s3.put_object(Bucket=bucket, Key=f"{prefix}/production/2062-01-01/README.txt", Body=b"hello")
    result = tick(instance, cursor_at(TODAY - timedelta(days=30)))
    assert requested(result) == [first]
    assert "2062" not in json.loads(result.cursor)["production"]
    later = put_backup(sensing_env, "production", TODAY - timedelta(days=15))
    assert requested(tick(instance, result.cursor)) == [later]


@pytest.mark.parametrize("offset", [0, 1, 365 * 30])
def test_backups_dated_today_or_in_the_future_are_skipped_with_a_warning(sensing_env, instance, offset):
    """Reproduction: a complete backup dated today or later failed every tick (DagsterUnknownPartitionError)."""
    odd_day = TODAY + timedelta(days=offset)
    odd = put_backup(sensing_env, "production", odd_day, taken_at=datetime.now(UTC))
    real = put_backup(sensing_env, "production", TODAY - timedelta(days=20))
    captured = Captured()
    result = tick(instance, cursor_at(TODAY - timedelta(days=30)), captured)
    assert requested(result) == [real]
    assert json.loads(result.cursor)["production"] < f"production/{odd_day.isoformat()}/"
    why = "today or later: no partition yet"
    assert captured.warnings() == [f"production: skipping backups dated {odd_day.isoformat()} ({why}): "
                                   f"s3://{sensing_env[1]}/acci/{odd}.manifest.json"]
    again = tick(instance, result.cursor)  # the next tick does not fail either
    assert requested(again) == []


def test_a_backup_that_lands_late_for_an_earlier_day_is_seen(sensing_env, instance):
    """Reproduction: a backup written for an earlier day after the cursor passed it was never seen."""
    newest = put_backup(sensing_env, "production", TODAY - timedelta(days=1))
    first = tick(instance, cursor_at(TODAY - timedelta(days=2)))
    assert requested(first) == [newest]
    assert json.loads(first.cursor)["production"] > f"production/{(TODAY - timedelta(days=3)).isoformat()}/"
    late = put_backup(sensing_env, "production", TODAY - timedelta(days=3))
    second = tick(instance, first.cursor)
    assert late in requested(second)
    # Outside the re-examined window (7 days) a late arrival is not looked for: the window is bounded.
    too_late = put_backup(sensing_env, "production", TODAY - timedelta(days=9))
    assert too_late not in requested(tick(instance, second.cursor))


def test_stray_keys_in_past_folders_do_not_stall_the_cursor(sensing_env, instance):
    s3, bucket, prefix = sensing_env
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"{prefix}/production/{(TODAY - timedelta(days=25)).isoformat()}x/{i}",
                      Body=b"junk")
    s3.put_object(Bucket=bucket, Key=f"{prefix}/production/notes.txt", Body=b"junk")
    real = put_backup(sensing_env, "production", TODAY - timedelta(days=20))
    result = tick(instance, cursor_at(TODAY - timedelta(days=30)))
    assert requested(result) == [real]
    assert json.loads(result.cursor)["production"].startswith(f"production/{(TODAY - timedelta(days=20)).isoformat()}/")


class CountingList:
    """Counts the keys the sensor reads from the (real) S3 listing."""

    def __init__(self) -> None:
        self.count = 0
        original = S3Store.list

        def listing(store, prefix="", start_after=None):
            for item in original(store, prefix, start_after):
                self.count += 1
                yield item

        self.listing = listing


def test_caps_bound_the_runs_and_the_keys_read_per_tick(sensing_env, instance, monkeypatch):
    days = [TODAY - timedelta(days=40 - i) for i in range(30)]  # all older than the 7-day window
    keys = [put_backup(sensing_env, "production", day) for day in days]
    monkeypatch.setattr(sensors, "MAX_RUNS_PER_TICK", 4)
    monkeypatch.setattr(sensors, "MAX_OBJECTS_PER_TICK", 10)
    counter = CountingList()
    monkeypatch.setattr(S3Store, "list", counter.listing)
    cursor, seen, ticks = cursor_at(days[0] - timedelta(days=1)), [], 0
    while len(seen) < len(keys):
        counter.count = 0
        result = tick(instance, cursor)
        ticks += 1
        assert len(result.run_requests) <= 4
        assert counter.count <= 10 + 1, counter.count  # the key that hits the cap is read, then the scan stops
        seen += requested(result)
        cursor = result.cursor
        assert ticks < 40, "the cursor stopped advancing"
    assert seen == keys  # every backup exactly once, in order
    assert ticks >= len(keys) * 2 // 10
