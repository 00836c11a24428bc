"""The retention job against real S3: dry run, real run, and what it must never touch."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from acci_ops.lib.layout import dump_key, manifest_key_for
from acci_ops_tests.conftest import all_keys
from acci_ops_tests.defs.conftest import defs_from_env

FOREIGN = ["acci/db-20261101.sql.gz", "acci/production/notes.txt", "acci/staging/2026-11-01/other.bin"]


def seed(s3, bucket: str, days: int = 40) -> list[str]:
    """Backups for `days` consecutive days ending 2026-11-26, plus objects we did not write."""
    keys = []
    for i in range(days):
        day = date(2026, 11, 26) - timedelta(days=i)
        key = dump_key("production", day, "acci", datetime(day.year, day.month, day.day, 2, tzinfo=UTC)
                       + timedelta(days=1))
        s3.put_object(Bucket=bucket, Key=f"acci/{key}", Body=b"dump")
        s3.put_object(Bucket=bucket, Key=f"acci/{manifest_key_for(key)}", Body=b"{}")
        keys.append(key)
    for foreign in FOREIGN:
        s3.put_object(Bucket=bucket, Key=foreign, Body=b"not ours")
    return keys


def run_retention(instance, dry_run: bool):
    job = defs_from_env().resolve_job_def("backup_retention")
    config = {"ops": {"apply_backup_retention": {"config": {"dry_run": dry_run}}}}
    return job.execute_in_process(run_config=config, instance=instance)


def test_dry_run_lists_and_deletes_nothing(single_env, s3, instance, monkeypatch):
    monkeypatch.setenv("ACCI_RETENTION_DAILY", "7")
    monkeypatch.setenv("ACCI_RETENTION_WEEKLY", "4")
    monkeypatch.setenv("ACCI_RETENTION_MONTHLY", "12")
    seed(s3, single_env)
    before = sorted(all_keys(s3, single_env))
    result = run_retention(instance, dry_run=True)
    assert result.success
    assert sorted(all_keys(s3, single_env)) == before
    [output] = [e for e in result.all_node_events if e.is_successful_output]
    meta = {k: v.value for k, v in output.step_output_data.metadata.items()}
    assert meta["dry_run"] is True
    assert meta["production_primary_deleted"] == 40 - meta["production_primary_kept"] > 0
    assert "| production | primary | delete |" in meta["plan"]
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert sum("would delete s3://" in m for m in logs) == meta["production_primary_deleted"]


def test_real_run_applies_gfs_and_ignores_foreign_objects(single_env, s3, instance):
    keys = seed(s3, single_env)
    result = run_retention(instance, dry_run=False)
    assert result.success
    remaining = set(all_keys(s3, single_env))
    for foreign in FOREIGN:
        assert foreign in remaining
    kept = sorted(k for k in keys if f"acci/{k}" in remaining)
    # 7 newest days; weeks and months add the newest backup of older periods.
    kept_days = sorted(k.split("/")[1] for k in kept)
    assert kept_days[-7:] == [f"2026-11-{d:02d}" for d in range(20, 27)]
    assert "2026-10-31" in kept_days  # newest of October (monthly)
    assert len(kept) < len(keys)
    for key in keys:
        assert (f"acci/{key}" in remaining) == (f"acci/{manifest_key_for(key)}" in remaining), key
    # Running again changes nothing: the plan is stable.
    assert run_retention(instance, dry_run=False).success
    assert set(all_keys(s3, single_env)) == remaining


def test_zero_policy_still_keeps_the_newest(single_env, s3, instance, monkeypatch):
    for tier in ("DAILY", "WEEKLY", "MONTHLY"):
        monkeypatch.setenv(f"ACCI_RETENTION_{tier}", "0")
    keys = seed(s3, single_env, days=5)
    assert run_retention(instance, dry_run=False).success
    remaining = set(all_keys(s3, single_env))
    assert {k for k in keys if f"acci/{k}" in remaining} == {keys[0]}
