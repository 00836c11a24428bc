"""The streaming backup engine against a real PostgreSQL 15 and moto's S3 server over HTTP."""

from __future__ import annotations

import hashlib
import shutil
from datetime import date
from pathlib import Path

import psycopg
import pytest

from acci_ops.lib.backup.dump import BackupSettings, run_backup
from acci_ops.lib.backup.layout import manifest_key_for
from acci_ops.lib.backup.manifest import BackupManifest
from acci_ops.lib.core.errors import AcciOpsError, BackupError, ConfigError
from acci_ops.lib.postgres.urls import parse_database_url
from acci_ops.lib.storage.objectstore import Encryption, FileStore, S3Store, open_store
from acci_ops_tests.fixtures.pgtools import (
    TriggerAfter,
    fake_pg_dump,
    kill_pg_dump,
    restore_with_stock_tools,
    row_counts,
)
from acci_ops_tests.fixtures.s3 import all_keys
from acci_ops_tests.fixtures.servers import start_postgres

DAY = date(2026, 11, 26)


def backup(url: str, store, **kwargs):
    lines: list[str] = []
    result = run_backup(environment="production", target=parse_database_url(url), store=store, partition=DAY,
                        log=lines.append, **kwargs)
    return result, lines


def test_backup_round_trips_through_s3_and_stock_tools(pg_server, db_url, s3, bucket, tmp_path):
    store = open_store(f"s3://{bucket}/acci")
    result, lines = backup(db_url, store)

    key = f"acci/{result.manifest.object_key}"
    assert sorted(all_keys(s3, bucket)) == sorted([key, manifest_key_for(key)])
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == result.manifest.sha256
    assert len(body) == result.manifest.stored_bytes
    manifest = BackupManifest.from_json(s3.get_object(Bucket=bucket, Key=manifest_key_for(key))["Body"].read())
    assert manifest.sha256 == result.manifest.sha256
    assert manifest.server_version.startswith("15.")
    assert manifest.objects["views"] == ["public.active_sessions"]
    assert manifest.objects["functions"] == ["public.tenant_user_count(t integer)"]

    dump = tmp_path / "backup.pgdump.zst"
    dump.write_bytes(body)
    restored = restore_with_stock_tools(pg_server, dump)
    assert row_counts(pg_server, restored) == manifest.row_counts
    assert manifest.row_counts == {"public.sessions": 5000, "public.tenants": 20, "public.users": 2000}
    assert any("backup complete" in line for line in lines)


def test_row_counts_and_dump_come_from_one_snapshot(pg_server, db_url, bucket, tmp_path):
    """Rows committed after the snapshot is exported (before pg_dump starts and before the counts
    run) are in neither the counts nor the archive."""
    store = open_store(f"s3://{bucket}/acci")
    admin = psycopg.connect(pg_server.pg.url("acci"), autocommit=True)

    def log(line: str) -> None:
        if line.startswith("running "):
            admin.execute("INSERT INTO tenants (name) SELECT 'late-' || g FROM generate_series(1, 50) g")

    try:
        result = run_backup(environment="production", target=parse_database_url(db_url), store=store,
                            partition=DAY, log=log)
        assert result.manifest.row_counts["public.tenants"] == 20
        assert admin.execute("SELECT count(*) FROM tenants").fetchone()[0] == 70
    finally:
        admin.execute("DELETE FROM tenants WHERE name LIKE 'late-%'")
        admin.close()
    dump = tmp_path / "dump.zst"
    dump.write_bytes(store.get_bytes(result.manifest.object_key))
    restored = restore_with_stock_tools(pg_server, dump)
    assert row_counts(pg_server, restored) == result.manifest.row_counts


def test_file_store_round_trip(pg_server, db_url, tmp_path):
    store = open_store(f"file://{tmp_path}/backups")
    result, _ = backup(db_url, store)
    path = Path(result.uri.removeprefix("file://"))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == result.manifest.sha256
    assert Path(str(path) + ".manifest.json").is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".manifest.json"]
    restored = restore_with_stock_tools(pg_server, path)
    assert row_counts(pg_server, restored) == result.manifest.row_counts


def test_frames_carry_a_content_checksum_that_zstd_checks(pg_server, db_url, tmp_path):
    """The by-hand restore runs `zstd -t` first: it must catch a damaged object without the manifest."""
    import subprocess

    import zstandard

    store = open_store(f"file://{tmp_path}/backups")
    result, _ = backup(db_url, store)
    path = Path(result.uri.removeprefix("file://"))
    data = path.read_bytes()
    assert zstandard.get_frame_parameters(data).has_checksum
    assert subprocess.run(["zstd", "-q", "-t", str(path)], capture_output=True).returncode == 0
    damaged = tmp_path / "damaged.pgdump.zst"
    damaged.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # the frame's checksum no longer matches
    checked = subprocess.run(["zstd", "-q", "-t", str(damaged)], capture_output=True, text=True)
    assert checked.returncode != 0 and "checksum" in checked.stderr.lower()


def test_killing_pg_dump_mid_stream_leaves_nothing(big_db_url, s3, bucket):
    class KillingStore(S3Store):
        def upload_stream(self, key, stream, content_type="application/octet-stream"):
            # Two parts in flight, then pg_dump dies: the multipart upload must be aborted.
            return super().upload_stream(key, TriggerAfter(stream, 6 * 1024 * 1024, kill_pg_dump), content_type)

    store = KillingStore(f"s3://{bucket}/acci", part_size=5 * 1024 * 1024)
    with pytest.raises(BackupError, match=r"^pg_dump failed \(killed by signal SIGKILL\)"):
        backup(big_db_url, store)
    assert all_keys(s3, bucket) == []


def test_file_store_leaves_nothing_when_pg_dump_is_killed(big_db_url, tmp_path):
    class KillingFileStore(FileStore):
        def upload_stream(self, key, stream, content_type="application/octet-stream"):
            return super().upload_stream(key, TriggerAfter(stream, 1024 * 1024, kill_pg_dump), content_type)

    root = tmp_path / "backups"
    with pytest.raises(BackupError, match="pg_dump failed"):
        backup(big_db_url, KillingFileStore(f"file://{root}"))
    assert [p for p in root.rglob("*") if p.is_file()] == []


def test_stopping_the_server_mid_stream_leaves_nothing(tmp_path, s3, bucket):
    """A dedicated cluster is stopped (immediate mode) while its dump is streaming."""
    server = start_postgres(tmp_path / "doomed")
    try:
        from acci_ops_tests.fixtures.servers import load_big_table

        url = load_big_table(server, "doomed", megabytes=32)

        class StoppingStore(S3Store):
            def upload_stream(self, key, stream, content_type="application/octet-stream"):
                # Stop the server as soon as the first compressed bytes flow: pg_dump is mid-COPY.
                return super().upload_stream(
                    key, TriggerAfter(stream, 1, lambda: server.pg.stop("immediate")), content_type)

        with pytest.raises(AcciOpsError) as failure:
            backup(url, StoppingStore(f"s3://{bucket}/acci", part_size=5 * 1024 * 1024))
        assert "\n" not in str(failure.value)
        assert all_keys(s3, bucket) == []
    finally:
        server.pg.stop("immediate")


def test_refuses_pg_dump_older_than_server(db_url, bucket, tmp_path):
    bindir = tmp_path / "oldbin"
    fake_pg_dump(bindir, "pg_dump (PostgreSQL) 14.9")
    with pytest.raises(ConfigError, match=r"pg_dump 14\.9 is older than the PostgreSQL 15\.\d+ server"):
        backup(db_url, open_store(f"s3://{bucket}/acci"), settings=BackupSettings(pg_bin_dir=str(bindir)))


def test_pg_dump_missing(db_url, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="pg_dump not found on PATH; install postgresql-client"):
        backup(db_url, open_store(f"s3://{bucket}/acci"))


def test_password_travels_in_env_not_argv(db_url, bucket, tmp_path, secret):
    log = tmp_path / "argv.log"
    bindir = tmp_path / "bin"
    fake_pg_dump(bindir, "pg_dump (PostgreSQL) 15.18", real=shutil.which("pg_dump"), argv_log=log)
    result, lines = backup(db_url, open_store(f"s3://{bucket}/acci"), settings=BackupSettings(pg_bin_dir=str(bindir)))
    recorded = log.read_text()
    assert "argv: --format=custom --compress=0 --snapshot=" in recorded
    assert "env: PGPASSWORD set" in recorded
    assert secret not in recorded
    assert secret not in "\n".join(lines)
    assert secret not in result.manifest.to_json().decode()


@pytest.mark.parametrize("mode,kms", [("sse-s3", None), ("sse-kms", "create")])
def test_server_side_encryption_is_requested(db_url, s3, bucket, mode, kms):
    import boto3

    key_id = None
    if kms:
        key_id = boto3.client("kms").create_key()["KeyMetadata"]["KeyId"]
    store = open_store(f"s3://{bucket}/acci", encryption=Encryption.parse(mode, key_id))
    result, _ = backup(db_url, store)
    head = s3.head_object(Bucket=bucket, Key=f"acci/{result.manifest.object_key}")
    assert head["ServerSideEncryption"] == ("AES256" if mode == "sse-s3" else "aws:kms")
    if key_id:
        assert key_id in head["SSEKMSKeyId"]
    manifest_head = s3.head_object(Bucket=bucket, Key=f"acci/{manifest_key_for(result.manifest.object_key)}")
    assert manifest_head["ServerSideEncryption"] == head["ServerSideEncryption"]


def test_max_runtime_stops_pg_dump_and_leaves_nothing(big_db_url, s3, bucket):
    store = S3Store(f"s3://{bucket}/acci", part_size=5 * 1024 * 1024)
    with pytest.raises(BackupError, match="exceeded the maximum runtime of 0 s"):
        backup(big_db_url, store, settings=BackupSettings(max_runtime_seconds=0.3))
    assert all_keys(s3, bucket) == []
