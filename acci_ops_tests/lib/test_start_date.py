"""The first daily partition: explicit, recorded once in dev, never "today" at import."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from acci_ops.dev.start_date import record_start_date
from acci_ops.lib.core.errors import ConfigError
from acci_ops.settings import DEFAULT_START_DATE, load_settings


def test_unset_is_the_documented_default_whatever_the_process(tmp_path):
    assert load_settings({}).start_date == date(2026, 1, 1) == DEFAULT_START_DATE
    # Nothing read from the process's surroundings: the same in the webserver and a run worker.
    assert load_settings({"DAGSTER_HOME": str(tmp_path)}).start_date == DEFAULT_START_DATE


def test_set_is_that_date_with_variables_and_with_a_file(tmp_path):
    assert load_settings({"ACCI_BACKUP_START_DATE": " 2026-11-20 "}).start_date == date(2026, 11, 20)
    path = tmp_path / "envs.yaml"
    path.write_text("environments:\n  production: {database_url_env: DB, backup_url: 's3://b/p'}\n")
    several = load_settings({"ACCI_ENVIRONMENTS_FILE": str(path), "ACCI_BACKUP_START_DATE": "2026-10-01"})
    assert several.start_date == date(2026, 10, 1)


@pytest.mark.parametrize("raw", ["2026-13-01", "yesterday", "01/11/2026"])
def test_malformed_is_one_line(raw):
    with pytest.raises(ConfigError) as failure:
        load_settings({"ACCI_BACKUP_START_DATE": raw})
    assert str(failure.value) == f"ACCI_BACKUP_START_DATE {raw!r} must be a date like 2026-01-01"


def test_dev_records_the_first_day_once(tmp_path):
    path = tmp_path / "acci_ops_start_date"
    assert record_start_date(path, date(2026, 11, 28)) == date(2026, 11, 27)
    # A restart a week later (or another process) gets the same day, not a moving one.
    assert record_start_date(path, date(2026, 12, 5)) == date(2026, 11, 27)
    assert path.read_text() == "2026-11-27\n"
    path.write_text("soon\n")
    with pytest.raises(ConfigError) as failure:
        record_start_date(path, date(2026, 12, 5))
    assert str(failure.value) == f"{path} holds 'soon' must be a date like 2026-01-01"


def test_run_dev_helper_prints_the_recorded_day_and_a_fresh_install_has_one_partition(tmp_path):
    """Before: a fresh install showed every day since 2026-01-01 as missing (330 of them)."""
    path = tmp_path / "dagster_home" / "acci_ops_start_date"
    path.parent.mkdir()

    def helper() -> str:
        out = subprocess.run([sys.executable, "-m", "acci_ops.dev.start_date", str(path), "UTC"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    first = helper()
    assert first == (datetime.now(UTC).date() - timedelta(days=1)).isoformat() or first == (
        datetime.now(UTC).date() - timedelta(days=2)).isoformat()  # the test may straddle midnight
    assert helper() == first
    from acci_ops.definitions import build_definitions

    defs = build_definitions(load_settings({"ACCI_BACKUP_START_DATE": first}))
    keys = defs.resolve_assets_def(dg.AssetKey("db_backup")).partitions_def.get_partition_keys()
    assert keys[0] == first and len(keys) <= 2


def test_run_dev_helper_failure_is_one_line(tmp_path):
    path = tmp_path / "missing-dir" / "acci_ops_start_date"
    out = subprocess.run([sys.executable, "-m", "acci_ops.dev.start_date", str(path), "UTC"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("acci_ops: cannot record the first partition day: ")
    assert len(out.stderr.strip().splitlines()) == 1
