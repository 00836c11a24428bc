"""Bucket trust: whoever can write to the bucket must not steer retention, DR or
validation. Strict parsing, bounded reads, signatures, and never ranking by a key's date alone."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest

from acci_ops.lib.backup.inventory import read_manifest
from acci_ops.lib.backup.manifest import BackupManifest
from acci_ops.lib.backup.records import ValidationReport, newest_validated
from acci_ops.lib.backup.retention import RetentionPolicy, plan_store_retention
from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.core.errors import BackupError, ConfigError
from acci_ops.lib.dr.procedures import choose_backup
from acci_ops.lib.storage.objectstore import open_store
from acci_ops_tests.fixtures.backups import (
    OTHER_SIGNING_KEY,
    TEST_SIGNING_KEY,
    key_id,
    manifest_doc,
    put_backup,
    put_record,
    record_doc,
    sign,
)

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)
KEYRING = Keyring.from_secret(TEST_SIGNING_KEY)


@pytest.fixture
def store(tmp_path):
    return open_store(f"file://{tmp_path}/backups")


def manifest_of(store):
    return lambda key: json.loads(store.get_bytes(key + ".manifest.json"))


# --- strict parsing --------------------------------------------------------------------------

def _good_manifest() -> dict:
    return manifest_doc("production", date(2026, 11, 26), datetime(2026, 11, 27, 2, tzinfo=UTC))[1]


@pytest.mark.parametrize("field,value,expected", [
    ("dump_bytes", -1, "dump_bytes must be a whole number from 0 to"),
    ("dump_bytes", True, "dump_bytes must be a whole number from 0 to"),
    ("dump_bytes", 1.5, "dump_bytes must be a whole number from 0 to"),
    ("dump_bytes", 10**30, "dump_bytes must be a whole number from 0 to"),
    ("stored_bytes", "12", "stored_bytes must be a whole number from 0 to"),
    ("sha256", "abc", "sha256 must be 64 lowercase hex digits"),
    ("snapshot_at", "2026-11-27T02:00:00", "snapshot_at must be an ISO-8601 time with a timezone"),
    ("started_at", "yesterday", "started_at must be an ISO-8601 time with a timezone"),
    ("row_counts", {"public.users": -3}, "row_counts must map table names to whole numbers >= 0"),
    ("row_counts", {"public.users": "3"}, "row_counts must map table names to whole numbers >= 0"),
    ("row_counts", [1, 2], "row_counts must map table names to whole numbers >= 0"),
    ("objects", {"tables": "public.users"}, "objects must map kinds to lists of names"),
    ("database", 7, "database must be a non-empty string"),
    ("partition", "26/11/2026", "partition must be a date like 2026-11-26"),
    ("format_version", True, "has format version True"),
])
def test_manifest_fields_are_type_and_range_checked(field, value, expected):
    doc = {**_good_manifest(), field: value}
    with pytest.raises(BackupError) as failure:
        BackupManifest.from_json(json.dumps(doc).encode(), where="s3://b/m.json")
    message = str(failure.value)
    assert message.startswith("s3://b/m.json") and expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize("data,expected", [
    (b"[1, 2, 3]", "is not an acci_ops backup manifest"),
    (b"\xff\xfe", "is not valid JSON"),
    (json.dumps({**_good_manifest(), "extra": 1}).encode(), "has unknown fields: extra"),
])
def test_manifest_shapes_are_refused(data, expected):
    with pytest.raises(BackupError, match=expected):
        BackupManifest.from_json(data, where="m")


@pytest.mark.parametrize("mutation,expected", [
    ({"ok": "false"}, "ok must be true or false"),
    ({"ok": 1}, "ok must be true or false"),
    ({"tables": -1}, "tables must be a whole number from 0 to"),
    ({"restore_seconds": "fast"}, "restore_seconds must be a number >= 0"),
    ({"steps": "all good"}, "steps must be a list of {name, status, seconds, detail}"),
    ({"steps": [{"name": "x", "status": "great", "seconds": 1, "detail": ""}]}, "steps must be a list"),
    ({"failure": 3}, "failure must be a string or null"),
    ({"snapshot_at": "2026-11-27"}, "snapshot_at must be an ISO-8601 time with a timezone"),
])
def test_validation_records_are_strict(mutation, expected):
    key, manifest = manifest_doc("production", date(2026, 11, 26), datetime(2026, 11, 27, 2, tzinfo=UTC))
    doc = {**record_doc(key, manifest), **mutation}
    with pytest.raises(BackupError) as failure:
        ValidationReport.from_json(json.dumps(doc).encode(), where="s3://b/r.json")
    assert str(failure.value).startswith("s3://b/r.json") and expected in str(failure.value)


def test_a_record_that_is_a_list_is_refused():
    with pytest.raises(BackupError, match="^r.json is not an acci_ops validation record$"):
        ValidationReport.from_json(b"[]", where="r.json")


@pytest.mark.parametrize("kind", ["s3", "file"])
def test_reads_of_small_objects_are_capped(kind, bucket, tmp_path):
    store = open_store(f"s3://{bucket}/acci" if kind == "s3" else f"file://{tmp_path}/b")
    store.put_bytes("production/big.json", b"x" * 5000)
    assert store.get_bytes("production/big.json", max_bytes=5000) == b"x" * 5000
    with pytest.raises(BackupError) as failure:
        store.get_bytes("production/big.json", max_bytes=4999)
    assert str(failure.value) == f"{store.uri_for('production/big.json')} is larger than 4999 bytes; not reading it"


def test_manifest_reads_are_bounded(store):
    key, doc = manifest_doc("production", date(2026, 11, 26), datetime(2026, 11, 27, 2, tzinfo=UTC))
    doc["row_counts"] = {f"public.t{i}": i for i in range(400_000)}  # ~ 9 MB
    store.put_bytes(key + ".manifest.json", json.dumps(doc).encode())
    with pytest.raises(BackupError, match=r"manifest.json is larger than 8388608 bytes; not reading it"):
        read_manifest(store, key)


# --- signatures ------------------------------------------------------------------------------

def test_keyring_signs_and_verifies_and_never_shows_the_key():
    doc = _good_manifest()
    signed = KEYRING.sign(doc)
    assert signed["signature"] == sign(doc)["signature"]  # the documented format
    assert signed["signature"].startswith(f"hmac-sha256:{key_id(TEST_SIGNING_KEY)}:")
    assert KEYRING.verify(signed) == "signed"
    assert KEYRING.verify(doc) == "unsigned"
    assert KEYRING.verify({**signed, "dump_bytes": 1}) == "badly signed"
    assert KEYRING.verify(sign(doc, OTHER_SIGNING_KEY)) == "badly signed"
    assert KEYRING.verify({**signed, "signature": 5}) == "badly signed"
    for text in (repr(KEYRING), str(KEYRING), repr(KEYRING.__dict__) if hasattr(KEYRING, "__dict__") else ""):
        assert TEST_SIGNING_KEY not in text
    # Rotation: the first key signs, every listed key verifies.
    rotated = Keyring.from_secret(f"{OTHER_SIGNING_KEY},{TEST_SIGNING_KEY}")
    assert rotated.verify(signed) == "signed"
    assert rotated.sign(doc)["signature"] == sign(doc, OTHER_SIGNING_KEY)["signature"]


def test_weak_or_empty_keys():
    assert Keyring.from_secret(None) is None and Keyring.from_secret("  ") is None
    with pytest.raises(ConfigError) as failure:
        Keyring.from_secret("short-secret-123")
    assert "short-secret-123" not in str(failure.value)
    assert str(failure.value) == "ACCI_BACKUP_SIGNING_KEY: every key must be at least 32 characters long"


# --- retention, ranking and DR's choice --------------------------------------------------------

def test_future_dated_keys_do_not_steer_retention(store):
    """The reproduction: twelve future-dated keys made 7/4/12 keep 1 of 330 backups."""
    real = [put_backup(store, "production", date(2026, 11, 26) - timedelta(days=i)) for i in range(330)]
    future = [put_backup(store, "production", date(2027, 1, 1) + timedelta(days=31 * i), signed=False)
              for i in range(12)]
    plan, orphans = plan_store_retention(store, "production", RetentionPolicy(7, 4, 12), KEYRING, now=NOW)
    kept_real = [k for k in real if k in plan.keep]
    assert 12 <= len(kept_real) <= 7 + 4 + 12 and real[0] in kept_real
    assert len(plan.delete) == 330 - len(kept_real)
    assert not set(plan.delete) & set(future)
    for key in future:
        assert plan.keep[key] == ["dated in the future — ignored, kept"]
    assert orphans == []


def test_unsigned_badly_signed_and_inconsistent_backups_are_kept_not_ranked(store):
    real = [put_backup(store, "production", date(2026, 11, d)) for d in range(1, 21)]
    newest_day = date(2026, 11, 25)
    unsigned = put_backup(store, "production", newest_day, signed=False)
    forged = put_backup(store, "production", newest_day, taken_at=datetime(2026, 11, 26, 3, tzinfo=UTC),
                        key=OTHER_SIGNING_KEY)
    shifted = put_backup(store, "production", newest_day, taken_at=datetime(2026, 11, 26, 4, tzinfo=UTC),
                         mutate=lambda d: d.update(started_at="2026-11-20T04:00:00+00:00",
                                                   snapshot_at="2026-11-20T04:00:01+00:00"))
    store.put_bytes("production/2026-11-25/acci-20261126T050000Z.pgdump.zst", b"x")
    store.put_bytes("production/2026-11-25/acci-20261126T050000Z.pgdump.zst.manifest.json", b"[]")
    plan, _ = plan_store_retention(store, "production", RetentionPolicy(3, 0, 0), KEYRING, now=NOW)
    assert plan.keep[unsigned] == ["unsigned — not acci_ops's, kept"]
    assert plan.keep[forged] == ["badly signed — not acci_ops's, kept"]
    assert plan.keep[shifted][0].startswith("untrusted (")
    assert plan.keep["production/2026-11-25/acci-20261126T050000Z.pgdump.zst"][0].startswith("unreadable manifest (")
    assert plan.keep[real[-1]] == ["newest", "daily"]
    assert sorted(plan.delete) == sorted(real[:-3])


def test_without_a_signing_key_retention_deletes_nothing(store):
    for d in range(1, 11):
        put_backup(store, "production", date(2026, 11, d))
    plan, _ = plan_store_retention(store, "production", RetentionPolicy(1, 0, 0), None, now=NOW)
    assert plan.delete == [] and len(plan.keep) == 10
    assert set(map(tuple, plan.keep.values())) == {("no signing key — cannot authenticate, kept",)}


def test_dr_default_is_the_newest_signed_and_validated_backup(store):
    good = put_backup(store, "production", date(2026, 11, 20))
    put_record(store, good, read_manifest=manifest_of(store))
    newer_unvalidated = put_backup(store, "production", date(2026, 11, 21))
    failed = put_backup(store, "production", date(2026, 11, 22))
    put_record(store, failed, ok=False, read_manifest=manifest_of(store))
    as_text = put_backup(store, "production", date(2026, 11, 23))
    put_record(store, as_text, read_manifest=manifest_of(store))
    doc = json.loads(store.get_bytes(as_text + ".validation.json"))
    store.put_bytes(as_text + ".validation.json", json.dumps(sign({**doc, "ok": "false"})).encode())
    listed = put_backup(store, "production", date(2026, 11, 24))
    store.put_bytes(listed + ".validation.json", b"[]")
    unsigned_record = put_backup(store, "production", date(2026, 11, 25))
    put_record(store, unsigned_record, signed=False, read_manifest=manifest_of(store))
    unsigned_backup = put_backup(store, "production", date(2026, 11, 26), signed=False)
    put_record(store, unsigned_backup, read_manifest=manifest_of(store))
    replayed = put_backup(store, "production", date(2026, 11, 26), taken_at=datetime(2026, 11, 27, 3, tzinfo=UTC))
    store.put_bytes(replayed + ".validation.json", store.get_bytes(good + ".validation.json"))
    future = [put_backup(store, "production", date(2027, 1, i)) for i in range(1, 13)]
    for key in future:
        put_record(store, key, read_manifest=manifest_of(store))

    assert choose_backup(store, "production", None, keyring=KEYRING, now=NOW) == good
    backup, record = newest_validated(store, "production", KEYRING, now=NOW)
    assert backup.key == good and record.ok is True
    assert newer_unvalidated  # never validated: not chosen
    with pytest.raises(BackupError, match=r"^backup production/2026-11-26/acci-20261127T020000Z.pgdump.zst is "
                                          r"unsigned \(not written by this acci_ops\)"):
        choose_backup(store, "production", unsigned_backup, keyring=KEYRING, now=NOW)
    assert choose_backup(store, "production", unsigned_backup, allow_unvalidated=True, keyring=KEYRING,
                         now=NOW) == unsigned_backup
    with pytest.raises(BackupError, match="validation record .* is not trusted"):
        choose_backup(store, "production", listed, keyring=KEYRING, now=NOW)
    with pytest.raises(BackupError, match="validation record .* is not trusted"):
        choose_backup(store, "production", replayed, keyring=KEYRING, now=NOW)
    with pytest.raises(BackupError, match="ACCI_BACKUP_SIGNING_KEY is not set"):
        choose_backup(store, "production", None, keyring=None, now=NOW)
    assert newest_validated(store, "production", None, now=NOW) is None


def test_newest_validated_ranks_by_snapshot_time(store):
    """Two signed, validated backups of one day: the later snapshot wins even if another key sorts later."""
    early = put_backup(store, "production", date(2026, 11, 26), taken_at=datetime(2026, 11, 27, 2, tzinfo=UTC))
    late = put_backup(store, "production", date(2026, 11, 26), taken_at=datetime(2026, 11, 27, 2, 1, tzinfo=UTC),
                      mutate=lambda d: d.update(snapshot_at="2026-11-27T01:00:00+00:00"))  # snapshot before start: bad
    for key in (early, late):
        put_record(store, key, read_manifest=manifest_of(store))
    found = newest_validated(store, "production", KEYRING, now=NOW)
    assert found[0].key == early


# --- settings ------------------------------------------------------------------------------

def test_signing_key_setting_is_a_variable_name(tmp_path):
    from acci_ops.settings import load_settings

    single = load_settings({"ACCI_BACKUP_SIGNING_KEY": TEST_SIGNING_KEY})
    assert single.environments[0].backup.signing_key_env == "ACCI_BACKUP_SIGNING_KEY"
    assert load_settings({}).environments[0].backup.signing_key_env is None
    path = tmp_path / "envs.yaml"
    path.write_text("environments:\n  staging: {database_url_env: DB, backup_url: 's3://b/p', "
                    "signing_key_env: STAGING_SIGNING_KEY}\n  production: {database_url_env: DB, backup_url: 's3://b/q'}\n")
    several = load_settings({"ACCI_ENVIRONMENTS_FILE": str(path), "ACCI_BACKUP_SIGNING_KEY": "x" * 40})
    assert [s.backup.signing_key_env for s in several.environments] == ["STAGING_SIGNING_KEY",
                                                                        "ACCI_BACKUP_SIGNING_KEY"]
    path.write_text(f"environments:\n  staging: {{database_url_env: DB, backup_url: 's3://b/p', "
                    f"signing_key_env: '{TEST_SIGNING_KEY}'}}\n")
    with pytest.raises(ConfigError) as failure:
        load_settings({"ACCI_ENVIRONMENTS_FILE": str(path)})
    assert "signing_key_env must be the NAME of an environment variable" in str(failure.value)
    assert TEST_SIGNING_KEY not in str(failure.value)


def test_rpo_is_the_age_of_the_newest_validated_snapshot(store):
    """One RPO for the validated asset, the restore check, drills and recovery."""
    from acci_ops.lib.backup.records import rpo_seconds, validated_rpo_seconds

    assert rpo_seconds("2026-11-27T02:00:00+00:00", NOW) == 10 * 3600
    assert rpo_seconds(datetime(2026, 11, 27, 11, 30, tzinfo=UTC), NOW) == 1800
    assert validated_rpo_seconds(store, "production", KEYRING, now=NOW) is None
    key = put_backup(store, "production", date(2026, 11, 26))  # snapshot 2026-11-27T02:00:01
    put_record(store, key, read_manifest=manifest_of(store))
    assert validated_rpo_seconds(store, "production", KEYRING, now=NOW) == 10 * 3600 - 1
    assert validated_rpo_seconds(store, "production", None, now=NOW) is None
