"""Row counts read from the pg_dump archive stream, against count(*) on a real PostgreSQL 15."""

from __future__ import annotations

import subprocess
import time
from datetime import date

import psycopg
import pytest

from acci_ops.lib.backup import archive_counts
from acci_ops.lib.backup.archive_counts import ArchiveRowCounter, count_archive
from acci_ops.lib.backup.dump import run_backup
from acci_ops.lib.backup.manifest import BackupManifest
from acci_ops.lib.backup.restore import compare_contents
from acci_ops.lib.core.errors import BackupError
from acci_ops.lib.postgres.catalog import exact_row_counts
from acci_ops.lib.postgres.urls import parse_database_url
from acci_ops.lib.storage.objectstore import open_store

DB = "acci_counts"
WEIRD = '"Odd Schema"."We""ird Ta ble"'

HARD_CASES = rf"""
CREATE TABLE texts (id int, body text);
INSERT INTO texts VALUES
  (1, E'two\nlines'), (2, E'back\\slash'), (3, E'tab\there'), (4, E'\\.'), (5, E'\\.\n\\.'),
  (6, 'ünïcødé ✓ 日本'), (7, ''), (8, NULL), (9, E'\r\ncrlf\r'), (10, E'ends with newline\n');
CREATE TABLE only_dot (v text);
INSERT INTO only_dot VALUES (E'\\.'), ('');
CREATE TABLE blobs_meta (id int, payload bytea);
INSERT INTO blobs_meta SELECT g, decode(repeat('0a5c2e0a', g % 50), 'hex') FROM generate_series(1, 300) g;
CREATE TABLE empty_one (id int);
CREATE TABLE events (id int, at date, note text) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE events_empty PARTITION OF events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
INSERT INTO events SELECT g, date '2025-01-01' + (g % 700), E'n\n' || g FROM generate_series(1, 4000) g;
CREATE SCHEMA "Odd Schema";
CREATE TABLE {WEIRD} ("Mixed Case" text);
INSERT INTO {WEIRD} SELECT repeat(E'\\\n', g % 7) FROM generate_series(1, 77) g;
-- rows whose chunk lengths hold a newline byte (10, 266, 2570) and rows longer than 64 KiB
CREATE TABLE lengths (v text);
INSERT INTO lengths SELECT repeat('x', n) FROM (VALUES (9), (265), (2569), (70000), (2570 * 256 + 9)) AS t(n);
-- 20,000 rows of exactly 10 bytes (header 00 0a 00 00 00 after every newline) and rows whose
-- second length byte is 0x0A: candidates inside headers, for the vectorized pass to see through
CREATE TABLE tens (v text);
INSERT INTO tens SELECT lpad(g::text, 9, '0') FROM generate_series(1, 20000) g;
CREATE TABLE second_byte (v text);
INSERT INTO second_byte SELECT repeat('y', 2559 + g) FROM generate_series(1, 256) g;
CREATE TABLE many (id int, t text);
INSERT INTO many SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
SELECT lo_from_bytea(0, E'\\x0a0a5c2e0a'::bytea);
SELECT lo_from_bytea(0, decode(repeat('41', 100000), 'hex'));
"""


@pytest.fixture(scope="module")
def hard_db(pg_server) -> str:
    pg_server.pg.psql(f"DROP DATABASE IF EXISTS {DB}")
    pg_server.pg.psql(f"CREATE DATABASE {DB}")
    pg_server.pg.psql(HARD_CASES, DB)
    return pg_server.pg.url(DB)


def server_counts(url: str) -> tuple[dict[str, int], int]:
    with psycopg.connect(url) as conn:
        return exact_row_counts(conn), conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0]


def pg_dump_bytes(pg_server, *extra: str) -> bytes:
    argv = ["pg_dump", "--format=custom", *extra, "-h", "127.0.0.1", "-p", str(pg_server.pg.port), "-U", "postgres",
            DB]
    return subprocess.run(argv, check=True, capture_output=True).stdout


@pytest.mark.parametrize(("piece", "batch"), [(1, 0), (7, 0), (4096, 0), (1 << 20, 0), (4096, 256 * 1024),
                                              (7, 100_003)])
def test_counts_from_the_archive_equal_count_star(pg_server, hard_db, piece, batch):
    """Whatever size the reads are, parsed as they come or gathered first, the counts are count(*)."""
    data = pg_dump_bytes(pg_server, "--compress=0")
    counts = count_archive(data, piece, batch)
    expected, large_objects = server_counts(hard_db)
    assert counts.error is None
    assert {k: v for k, v in counts.rows.items() if k in expected} == expected
    assert set(counts.rows) == set(expected)  # partitions by name, no partitioned parent
    assert "public.events" not in counts.rows and counts.rows["public.events_empty"] == 0
    assert counts.rows['Odd Schema.We"ird Ta ble'] == 77
    assert counts.rows["public.many"] == 5000 and counts.rows["public.only_dot"] == 2
    assert counts.large_objects == large_objects == 2


def test_the_vectorized_pass_counts_what_the_walk_counts_and_does_most_of_the_work(pg_server, hard_db, monkeypatch):
    """numpy over the chunk headers gives exactly the walk's counts on every hard case (rows of 10
    bytes whose headers hold a newline followed by a zero, second length bytes of 0x0A, rows
    longer than a feed), and it, not the per-chunk walk, is what counted the bulk of the rows."""
    data = pg_dump_bytes(pg_server, "--compress=0")
    proven: list[int] = []
    original = ArchiveRowCounter._vector_chunks

    def spy(self, buf, pos, n):
        end = original(self, buf, pos, n)
        proven.append(end - pos)
        return end

    monkeypatch.setattr(ArchiveRowCounter, "_vector_chunks", spy)
    vectorized = count_archive(data)  # 1 MiB pieces
    monkeypatch.setattr(archive_counts, "VECTOR_MIN_BYTES", 1 << 62)
    walked = count_archive(data)
    assert vectorized.error is None and walked.error is None
    assert vectorized.rows == walked.rows
    assert vectorized.rows["public.tens"] == 20000 and vectorized.rows["public.second_byte"] == 256
    assert sum(proven) >= 15 * 20000  # the 10-byte rows (plus headers) went through numpy


def test_damaged_or_foreign_streams_give_a_reason_not_an_exception(pg_server, hard_db):
    data = pg_dump_bytes(pg_server, "--compress=0")
    cases = {
        "no PGDMP header": b"PGDMQ" + data[5:],
        "ended inside the data": data[:-7],
        "ended inside its header": data[:40],
        "compressed by pg_dump": pg_dump_bytes(pg_server, "--compress=1"),
        "unknown data block type": data[:-1] + b"",  # replaced below
    }
    # Damage the first data block's type byte: find it right after the TOC by parsing a copy.
    counter = ArchiveRowCounter(batch_bytes=0)
    cut = 0
    while counter._toc_reader is not None:  # noqa: SLF001 - the test needs the TOC's end
        counter.feed(data[cut:cut + 1])
        cut += 1
    cases["unknown data block type"] = data[:cut] + b"\x09" + data[cut + 1:]
    for reason, stream in cases.items():
        for piece in (1, 1 << 20):
            result = count_archive(stream, piece)
            assert result.error is not None and reason in result.error, (reason, result.error)
            assert result.rows == {} and not result.available
    noise = ArchiveRowCounter()
    for chunk in (b"\x00" * 3, b"\xff" * 100, data):
        noise.feed(chunk)
    assert noise.finish().error


def _seq_scans(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        # Stats of a backend are flushed when it exits: wait until no other session of this
        # database is left (pg_dump's and the backup's), so every scan they made is counted.
        for _ in range(100):
            others = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                  "AND pid <> pg_backend_pid()").fetchone()[0]
            if not others:
                break
            time.sleep(0.05)
        conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = conn.execute("SELECT schemaname || '.' || relname, seq_scan FROM pg_stat_user_tables").fetchall()
        return dict(rows)


def test_backup_reads_each_table_once_and_its_manifest_holds_the_archive_counts(pg_server, hard_db, tmp_path):
    """Before: the backup ran count(*) beside pg_dump, two sequential scans per table."""
    lines: list[str] = []
    store = open_store(f"file://{tmp_path}/backups")
    before = _seq_scans(hard_db)
    result = run_backup(environment="test", target=parse_database_url(hard_db), store=store,
                        partition=date(2026, 11, 26), log=lines.append)
    after = _seq_scans(hard_db)
    expected, large_objects = server_counts(hard_db)
    assert result.manifest.row_counts == expected
    assert result.manifest.large_objects == large_objects
    assert result.manifest.row_counts_unavailable is None
    scans = {table: after[table] - before[table] for table in expected}
    assert scans == {table: 1 for table in expected}, scans  # pg_dump's COPY, nothing else
    assert any(f"counted {sum(expected.values()):,} rows in {len(expected)} tables" in line for line in lines)
    stored = BackupManifest.from_json(store.get_bytes(result.manifest.object_key + ".manifest.json"))
    assert stored.row_counts == expected and stored.large_objects == 2


def test_manifest_without_counts_reads_back_and_validation_names_the_reason():
    doc = {
        "environment": "test", "database": "d", "partition": "2026-11-26", "object_key": "k",
        "started_at": "2026-11-26T02:00:00+00:00", "finished_at": "2026-11-26T02:00:01+00:00",
        "snapshot_at": "2026-11-26T02:00:00+00:00", "server_version": "15.1", "pg_dump_version": "15.1",
        "dump_bytes": 1, "stored_bytes": 1, "sha256": "0" * 64, "row_counts": {},
        "format": "acci-ops/pg-backup", "format_version": 1,
    }
    plain = BackupManifest(**{k: v for k, v in doc.items()})
    assert "row_counts_unavailable" not in plain.payload() and "large_objects" not in plain.payload()
    plain.row_counts_unavailable = "the archive holds no data for table public.t"
    again = BackupManifest.from_json(plain.to_json())
    assert again.row_counts_unavailable == plain.row_counts_unavailable
    with pytest.raises(BackupError, match=r"no row counts to check against \(the archive holds no data for table"):
        compare_contents(again, {"public.t": 3}, {})
