"""Writing backups the way acci_ops or a bucket writer would, for the bucket-trust tests.

The signature is computed here independently of acci_ops.lib.backup.signing (HMAC-SHA256 over the
canonical JSON of every field but ``signature``), so the tests pin the documented format.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, date, datetime, timedelta

TEST_SIGNING_KEY = "test-signing-key-0123456789abcdef-DO-NOT-LEAK-7Qx"
OTHER_SIGNING_KEY = "someone-elses-key-0123456789abcdef-zzzzzzzzzzzzzz"


def canonical(doc: dict) -> bytes:
    body = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def key_id(key: str) -> str:
    return hmac.new(key.encode(), b"acci-ops signing key id", hashlib.sha256).hexdigest()[:16]


def sign(doc: dict, key: str = TEST_SIGNING_KEY) -> dict:
    mac = hmac.new(key.encode(), canonical(doc), hashlib.sha256).hexdigest()
    return {**doc, "signature": f"hmac-sha256:{key_id(key)}:{mac}"}


def manifest_doc(environment: str, day: date, taken_at: datetime, body: bytes = b"x", *,
                 database: str = "acci", snapshot_at: datetime | None = None) -> tuple[str, dict]:
    """The dump key and a well-formed manifest for it (times consistent with the key)."""
    stamp = taken_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    key = f"{environment}/{day.isoformat()}/{database}-{stamp}.pgdump.zst"
    snap = snapshot_at or taken_at + timedelta(seconds=1)
    doc = {
        "environment": environment, "database": database, "partition": day.isoformat(), "object_key": key,
        "started_at": taken_at.isoformat(), "finished_at": (taken_at + timedelta(seconds=30)).isoformat(),
        "snapshot_at": snap.isoformat(), "server_version": "15.18", "pg_dump_version": "15.18",
        "dump_bytes": 10 * len(body), "stored_bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(),
        "row_counts": {"public.users": 1}, "objects": {"tables": ["public.users"]},
        "compression": "zstd", "dump_format": "pg_dump-custom", "format": "acci-ops/pg-backup",
        "format_version": 1,
    }
    return key, doc


def put(target, key: str, data: bytes) -> None:
    """``target`` is an ObjectStore (put_bytes) or an (s3 client, bucket, prefix) triple."""
    if isinstance(target, tuple):
        s3, bucket, prefix = target
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{key}" if prefix else key, Body=data)
    else:
        target.put_bytes(key, data)


def put_backup(target, environment: str, day: date, *, taken_at: datetime | None = None, signed: bool = True,
               key: str = TEST_SIGNING_KEY, mutate=None) -> str:
    """A complete backup (dump + manifest); signed with ``key`` unless ``signed`` is False."""
    taken_at = taken_at or datetime(day.year, day.month, day.day, 2, tzinfo=UTC) + timedelta(days=1)
    dump_key, doc = manifest_doc(environment, day, taken_at)
    if mutate:
        mutate(doc)
    if signed:
        doc = sign(doc, key)
    put(target, dump_key, b"x")
    put(target, dump_key + ".manifest.json", json.dumps(doc).encode())
    return dump_key


def record_doc(backup_key: str, manifest: dict, *, ok: bool = True) -> dict:
    return {
        "environment": backup_key.split("/")[0], "backup_key": backup_key, "backup_uri": "s3://x/" + backup_key,
        "backup_sha256": manifest["sha256"], "ok": ok, "failure": None if ok else "restore: broken",
        "database": manifest["database"], "snapshot_at": manifest["snapshot_at"], "mode": "stream",
        "scratch_database": "", "started_at": manifest["finished_at"], "finished_at": manifest["finished_at"],
        "restore_seconds": 1.5, "validation_seconds": 2.0, "tables": 1, "total_rows": 1,
        "steps": [{"name": "restore", "status": "passed" if ok else "failed", "seconds": 1.5, "detail": ""}],
        "format": "acci-ops/pg-backup-validation", "format_version": 1,
    }


def put_record(target, backup_key: str, *, ok: bool = True, signed: bool = True, key: str = TEST_SIGNING_KEY,
               read_manifest=None) -> None:
    """A validation record beside ``backup_key``; ``read_manifest`` returns the manifest dict."""
    doc = record_doc(backup_key, read_manifest(backup_key), ok=ok)
    if signed:
        doc = sign(doc, key)
    put(target, backup_key + ".validation.json", json.dumps(doc).encode())
