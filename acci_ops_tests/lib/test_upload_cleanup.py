"""Incomplete uploads a killed run leaves behind: retention aborts the old ones, never a young one."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta

import pytest

from acci_ops.lib.backup.retention import RetentionPolicy, apply_retention, stale_uploads
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.storage.objectstore import FileStore, S3Store

HOUR = timedelta(hours=1)


def start_upload(s3, bucket: str, key: str) -> str:
    """What SIGKILL mid-upload leaves: a multipart upload with a part, never completed."""
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 1024)
    return upload_id


def open_uploads(s3, bucket: str) -> set[str]:
    return {u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def initiated(s3, bucket: str, key: str) -> datetime:
    """The store's own start time of the upload (moto's is not the wall clock), so the tests place
    ``now`` relative to it rather than trusting either clock."""
    [stamp] = [u["Initiated"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"] if u["Key"] == key]
    return stamp


def test_old_uploads_are_aborted_young_ones_and_other_environments_kept(s3, bucket, s3_server):
    store = S3Store(f"s3://{bucket}/acci", endpoint_url=s3_server.endpoint)
    old, other = "acci/production/2026-11-26/old.dump.zst", "acci/staging/2026-11-26/other-env.dump.zst"
    start_upload(s3, bucket, old)
    start_upload(s3, bucket, other)
    later = initiated(s3, bucket, old) + 2 * HOUR
    logs: list[str] = []
    dry = apply_retention(store, "production", RetentionPolicy(), None, dry_run=True, log=logs.append,
                          now=later, abort_uploads_older_than=HOUR)
    assert [u.key for u in dry.aborted_uploads] == ["production/2026-11-26/old.dump.zst"]
    assert any(f"would abort incomplete upload s3://{bucket}/{old}" in line for line in logs)
    assert open_uploads(s3, bucket) == {old, other}  # the dry run lists, keeps

    result = apply_retention(store, "production", RetentionPolicy(), None, log=logs.append,
                             now=later, abort_uploads_older_than=HOUR)
    assert [u.key for u in result.aborted_uploads] == ["production/2026-11-26/old.dump.zst"]
    assert open_uploads(s3, bucket) == {other}  # gone from ListMultipartUploads; staging's untouched
    assert any(f"aborting incomplete upload s3://{bucket}/{old}" in line for line in logs)


def test_a_younger_upload_is_never_aborted(s3, bucket, s3_server):
    store = S3Store(f"s3://{bucket}/acci", endpoint_url=s3_server.endpoint)
    running = "acci/production/2026-11-27/running.dump.zst"
    start_upload(s3, bucket, running)
    started = initiated(s3, bucket, running)
    logs: list[str] = []
    for age in (timedelta(0), timedelta(minutes=30), HOUR):  # up to and including the threshold itself
        result = apply_retention(store, "production", RetentionPolicy(), None, log=logs.append,
                                 now=started + age, abort_uploads_older_than=HOUR)
        assert result.aborted_uploads == [] and result.young_uploads == 1
    assert open_uploads(s3, bucket) == {running}
    assert any("keeping 1 incomplete upload(s)" in line for line in logs)
    # Without a threshold retention leaves uploads alone entirely.
    untouched = apply_retention(store, "production", RetentionPolicy(), None, log=logs.append,
                                now=started + 10 * HOUR)
    assert untouched.aborted_uploads == [] and open_uploads(s3, bucket) == {running}


def test_the_listing_is_bounded_and_paginated(s3, bucket, s3_server):
    store = S3Store(f"s3://{bucket}/acci", endpoint_url=s3_server.endpoint)
    for i in range(3):
        start_upload(s3, bucket, f"acci/production/2026-11-2{i}/a.dump.zst")
    assert len(list(store.list_incomplete_uploads("production/"))) == 3
    assert len(list(store.list_incomplete_uploads("production/", limit=2))) == 2
    assert list(store.list_incomplete_uploads("staging/")) == []


def test_file_store_partial_files_older_than_the_threshold_are_removed(tmp_path):
    store = FileStore(f"file://{tmp_path}")
    day = tmp_path / "production" / "2026-11-26"
    day.mkdir(parents=True)
    old = day / ".partial-a.dump.zst-0123abcd"
    young = day / ".partial-b.dump.zst-4567ef01"
    other = tmp_path / "staging" / ".partial-c.dump.zst-89ab"
    other.parent.mkdir()
    for path in (old, young, other):
        path.write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    os.utime(other, (two_hours_ago, two_hours_ago))
    (day / "done.dump.zst").write_bytes(b"complete")
    dry = apply_retention(store, "production", RetentionPolicy(), None, dry_run=True, log=lambda _: None,
                          abort_uploads_older_than=HOUR)
    assert [u.key for u in dry.aborted_uploads] == ["production/2026-11-26/a.dump.zst"]
    assert old.exists()
    result = apply_retention(store, "production", RetentionPolicy(), None, log=lambda _: None,
                             abort_uploads_older_than=HOUR)
    assert len(result.aborted_uploads) == 1 and result.young_uploads == 1
    assert not old.exists() and young.exists() and other.exists() and (day / "done.dump.zst").exists()


def test_a_negative_threshold_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="must be >= 0"):
        stale_uploads(FileStore(f"file://{tmp_path}"), "production", -HOUR)


def test_a_refused_upload_listing_is_reported_and_does_not_block_retention(tmp_path):
    from acci_ops.lib.core.errors import BackupError

    class NoMultipartPermission(FileStore):
        def list_incomplete_uploads(self, prefix: str = "", limit: int = 0):
            raise BackupError("access denied to s3://b/p while trying to list incomplete multipart uploads (403)")

    store = NoMultipartPermission(f"file://{tmp_path}")
    result = apply_retention(store, "production", RetentionPolicy(), None, log=lambda _: None,
                             abort_uploads_older_than=HOUR)
    assert result.aborted_uploads == []
    assert result.upload_error == ("incomplete uploads not cleaned: access denied to s3://b/p while trying to "
                                   "list incomplete multipart uploads (403)")
