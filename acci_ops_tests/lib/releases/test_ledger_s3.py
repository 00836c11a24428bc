"""The release ledger on S3 (moto over real HTTP, through S3Store as deployed): records land under the
store's prefix, list newest first per environment, verify, and a record rewritten in the bucket by
someone without the key is ignored."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.releases.ledger import ReleaseLedger, ReleaseRecord
from acci_ops.lib.storage.objectstore import S3Store
from acci_ops_tests.fixtures.backups import TEST_SIGNING_KEY

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def ref(version: str) -> str:
    return f"registry.example.com/acci/app@sha256:{hashlib.sha256(version.encode()).hexdigest()}"


def rec(environment: str, version: str, verdict: str, minutes: int, **extra) -> ReleaseRecord:
    finished = T0 + timedelta(minutes=minutes)
    return ReleaseRecord(environment=environment, version=version, image_ref=ref(version), kind="release",
                         strategy="rolling", verdict=verdict, reason=f"{verdict} analysis",
                         started_at=finished - timedelta(minutes=5), finished_at=finished, operator="release-bot",
                         **extra)


def test_records_round_trip_through_s3_and_verify(s3, bucket):
    """Written with PUT under the prefix, listed newest first per environment, read back and verified."""
    ledger = ReleaseLedger(S3Store(f"s3://{bucket}/acci"), Keyring.from_secret(TEST_SIGNING_KEY))
    ledger.record(rec("staging", "1.3.0", "passed", 0))
    key = ledger.record(rec("staging", "1.4.0", "passed", 10, previous_version="1.3.0",
                            previous_image_ref=ref("1.3.0")))
    ledger.record(rec("production", "1.3.0", "passed", 20))
    stored = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="acci/releases/")["Contents"]]
    assert f"acci/{key}" in stored and len(stored) == 3
    assert json.loads(s3.get_object(Bucket=bucket, Key=f"acci/{key}")["Body"].read())["key"] == key
    fresh = ReleaseLedger(S3Store(f"s3://{bucket}/acci"), Keyring.from_secret(TEST_SIGNING_KEY))
    assert [r.version for r in fresh.history("staging")] == ["1.4.0", "1.3.0"]
    assert fresh.verified("staging", "1.4.0").verified_at == T0 + timedelta(minutes=10)
    assert fresh.verified("production", "1.4.0") is None
    assert fresh.current("staging").version == "1.4.0"
    assert fresh.last_verified("staging", exclude_version="1.4.0").version == "1.3.0"
    assert fresh.warnings == []


def test_a_record_rewritten_in_the_bucket_is_ignored(s3, bucket):
    """Someone with bucket access turns a failed analysis into a pass: the signature no longer matches,
    the record is skipped with a warning naming its s3:// URI, and the version stays unverified."""
    ledger = ReleaseLedger(S3Store(f"s3://{bucket}/acci"), Keyring.from_secret(TEST_SIGNING_KEY))
    key = ledger.record(rec("staging", "1.4.0", "failed", 0))
    body = s3.get_object(Bucket=bucket, Key=f"acci/{key}")["Body"].read()
    s3.put_object(Bucket=bucket, Key=f"acci/{key}", Body=body.replace(b'"failed"', b'"passed"'))
    assert ledger.history("staging") == []
    assert ledger.verified("staging", "1.4.0") is None
    assert ledger.warnings == [f"ignoring release record s3://{bucket}/acci/{key}: badly signed; acci_ops did not "
                               "write it with this signing key"]
