"""The retention job against real S3: dry run, real run, and what it must never touch."""

from __future__ import annotations

import json
import logging
from datetime import date, timedelta

import dagster as dg

from acci_ops.lib.backup.layout import manifest_key_for
from acci_ops.lib.backup.signing import NO_KEY_WARNING
from acci_ops_tests.fixtures.backups import TEST_SIGNING_KEY, put_backup
from acci_ops_tests.fixtures.defs import defs_from_env
from acci_ops_tests.fixtures.s3 import all_keys

FOREIGN = ["acci/db-20261101.sql.gz", "acci/production/notes.txt", "acci/staging/2026-11-01/other.bin"]


def seed(s3, bucket: str, days: int = 40, prefix: str = "acci") -> list[str]:
    """Signed backups for `days` consecutive days ending 2026-11-26, plus objects we did not write."""
    keys = [put_backup((s3, bucket, prefix), "production", date(2026, 11, 26) - timedelta(days=i))
            for i in range(days)]
    for foreign in FOREIGN:
        s3.put_object(Bucket=bucket, Key=foreign.replace("acci/", f"{prefix}/", 1), Body=b"not ours")
    return keys


def run_retention(instance, dry_run: bool):
    job = defs_from_env().resolve_job_def("backup_retention")
    config = {"ops": {"apply_backup_retention": {"config": {"dry_run": dry_run}}}}
    return job.execute_in_process(run_config=config, instance=instance)


def output_metadata(result) -> dict:
    [output] = [e for e in result.all_node_events if e.is_successful_output]
    return {k: v.value for k, v in output.step_output_data.metadata.items()}


def recorded(instance, result) -> str:
    run = instance.get_run_by_id(result.run_id)
    return "\n".join([dg.serialize_value(r) for r in instance.all_logs(result.run_id)]
                     + [json.dumps(run.run_config, default=str), json.dumps(run.tags)])


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


def test_future_dated_keys_do_not_make_retention_delete_real_backups(single_env, s3, instance):
    """Reproduction: twelve future-dated keys made 7/4/12 keep 1 real backup and delete the rest."""
    keys = seed(s3, single_env, days=60)
    future = [put_backup((s3, single_env, "acci"), "production", date(2027, i, 1), signed=False)
              for i in range(1, 13)]
    result = run_retention(instance, dry_run=False)
    assert result.success
    remaining = {k.removeprefix("acci/") for k in all_keys(s3, single_env)}
    kept = [k for k in keys if k in remaining]
    assert len(kept) >= 7 + 2 and keys[0] in kept  # the 7 newest days and older weeks/months, not just 1
    assert all(k in remaining for k in future)
    meta = output_metadata(result)
    assert meta["production_primary_untrusted"] == 12
    assert f"| production | primary | keep (dated in the future — ignored, kept) | `{future[0]}` |" in meta["plan"]


def test_unsigned_backups_are_kept_listed_and_warned_about(single_env, s3, instance, monkeypatch):
    for tier in ("DAILY", "WEEKLY", "MONTHLY"):
        monkeypatch.setenv(f"ACCI_RETENTION_{tier}", "0")
    keys = seed(s3, single_env, days=5)
    unsigned = put_backup((s3, single_env, "acci"), "production", date(2026, 11, 27), signed=False)
    result = run_retention(instance, dry_run=False)
    assert result.success
    remaining = {k.removeprefix("acci/") for k in all_keys(s3, single_env)}
    assert {k for k in keys if k in remaining} == {keys[0]}  # the newest signed one; unsigned is not "newest"
    assert unsigned in remaining
    meta = output_metadata(result)
    assert f"| production | primary | keep (unsigned — not acci_ops's, kept) | `{unsigned}` |" in meta["plan"]
    assert meta["production_primary_untrusted"] == 1
    warnings = [e.user_message for e in instance.all_logs(result.run_id)
                if e.level == logging.WARNING]
    assert any("1 backup(s) in s3://" in w and "not signed by this acci_ops" in w for w in warnings), warnings
    assert TEST_SIGNING_KEY not in recorded(instance, result)


def test_without_a_signing_key_retention_deletes_nothing_and_says_why(single_env, s3, instance, monkeypatch):
    monkeypatch.delenv("ACCI_BACKUP_SIGNING_KEY", raising=False)
    for tier in ("DAILY", "WEEKLY", "MONTHLY"):
        monkeypatch.setenv(f"ACCI_RETENTION_{tier}", "0")
    seed(s3, single_env, days=5)
    before = sorted(all_keys(s3, single_env))
    result = run_retention(instance, dry_run=False)
    assert result.success
    assert sorted(all_keys(s3, single_env)) == before
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert warnings.count(NO_KEY_WARNING) == 1


def test_retention_applies_to_the_offsite_store_too(single_env, s3, instance, monkeypatch):
    offsite = single_env + "-off"
    s3.create_bucket(Bucket=offsite)
    monkeypatch.setenv("ACCI_OFFSITE_URL", f"s3://{offsite}/copy")
    primary = seed(s3, single_env, days=20)
    copies = seed(s3, offsite, days=20, prefix="copy")
    result = run_retention(instance, dry_run=False)
    assert result.success
    meta = output_metadata(result)
    assert meta["production_offsite_deleted"] == meta["production_primary_deleted"] > 0
    left_offsite = {k.removeprefix("copy/") for k in all_keys(s3, offsite)}
    left_primary = {k.removeprefix("acci/") for k in all_keys(s3, single_env)}
    assert {k for k in copies if k in left_offsite} == {k for k in primary if k in left_primary}
    assert len([k for k in copies if k in left_offsite]) < 20


def test_orphaned_multipart_uploads_are_listed_in_a_dry_run_and_aborted_by_a_real_run(single_env, s3, instance,
                                                                                       monkeypatch):
    """Reproduction: a backup killed mid-upload left its multipart upload in the bucket forever."""
    from datetime import UTC, datetime

    from acci_ops.defs.backups.retention import abort_uploads_after
    from acci_ops.settings import load_settings

    monkeypatch.setenv("ACCI_BACKUP_MAX_RUNTIME_SECONDS", "3600")
    seed(s3, single_env, days=3)
    killed, other_env = "acci/production/2026-11-26/killed.dump.zst", "acci/staging/2026-11-26/killed.dump.zst"
    for key in (killed, other_env):
        upload_id = s3.create_multipart_upload(Bucket=single_env, Key=key)["UploadId"]
        s3.upload_part(Bucket=single_env, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 1024)
    threshold = abort_uploads_after(load_settings())
    assert threshold.total_seconds() == 3600 + 600 + 60  # the run's max runtime plus one minute
    # The job cannot be given a clock: it relies on the S3 server stamping the upload long ago
    # (moto stamps 2010-11-10). Say so plainly if that ever changes.
    [stamp] = [u["Initiated"] for u in s3.list_multipart_uploads(Bucket=single_env)["Uploads"] if u["Key"] == killed]
    assert stamp < datetime.now(UTC) - threshold, f"the S3 server stamped the upload {stamp}: too recent for this test"

    dry = run_retention(instance, dry_run=True)
    assert dry.success
    meta = output_metadata(dry)
    assert meta["production_primary_aborted_uploads"] == 1
    assert "| production | primary | abort incomplete upload (started " in meta["plan"]
    assert "`production/2026-11-26/killed.dump.zst` |" in meta["plan"]
    assert f"(unfinished upload) {killed}" in all_keys(s3, single_env)

    result = run_retention(instance, dry_run=False)
    assert result.success
    assert output_metadata(result)["production_primary_aborted_uploads"] == 1
    left = all_keys(s3, single_env)
    assert f"(unfinished upload) {killed}" not in left
    assert f"(unfinished upload) {other_env}" in left  # another environment's prefix is not ours
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any(f"aborting incomplete upload s3://{single_env}/{killed}" in m for m in logs)
