"""The streaming backup pipeline: pg_dump -> zstd -> sha256 -> object store, no temp file.

Shape borrowed from WAL-G (Disk -> Compress -> Network as one stream): pg_dump writes a custom
archive with its own compression off, python-zstandard compresses it (by default level 1 on one
worker thread, which overlaps compressing with reading; see BackupSettings), the bytes are hashed
as they pass, and the store uploads fixed-size parts. Memory is bounded by the part buffer,
whatever the database size. The row counts are read from the archive bytes as they pass
(lib/backup/archive_counts.py), so the manifest describes exactly what is in the archive and the
database is read once, by pg_dump, not a second time by ``count(*)``.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

import psycopg
import zstandard

from acci_ops.lib.backup.archive_counts import ArchiveCounts, ArchiveRowCounter
from acci_ops.lib.backup.layout import dump_key, manifest_key_for
from acci_ops.lib.backup.manifest import BackupManifest
from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.core.commands import PG_ENV, child_env, find_tool, pump_lines, run_command
from acci_ops.lib.core.errors import AcciOpsError, BackupError, ConfigError
from acci_ops.lib.core.steps import human_bytes, human_duration
from acci_ops.lib.postgres import catalog
from acci_ops.lib.postgres.connect import connect, explain_pg_error
from acci_ops.lib.postgres.urls import DatabaseTarget
from acci_ops.lib.storage.objectstore import HashingReader, ObjectStore

Log = Callable[[str], None]
PG_DUMP_HINT = "install postgresql-client-15 (or newer) or set ACCI_PG_BIN to the directory holding pg_dump"


@dataclass(frozen=True)
class BackupSettings:
    # Measured on 2 cores (benchmarks/): level 1 with one worker thread beats level 3 with two,
    # both in time and, on ACCI-like data, in size; the worker overlaps compression with reading.
    zstd_level: int = 1
    zstd_threads: int = 1
    max_runtime_seconds: float = 4 * 3600
    connect_timeout: int = 10
    pg_bin_dir: str | None = None


@dataclass(frozen=True)
class BackupResult:
    manifest: BackupManifest
    uri: str
    manifest_uri: str
    duration_seconds: float

    @property
    def compression_ratio(self) -> float:
        return self.manifest.dump_bytes / self.manifest.stored_bytes if self.manifest.stored_bytes else 0.0

    @property
    def throughput_mb_s(self) -> float:
        return self.manifest.dump_bytes / 1e6 / self.duration_seconds if self.duration_seconds else 0.0


def pg_dump_version(pg_dump: str) -> tuple[str, int]:
    """``pg_dump --version`` as (text, major): 'pg_dump (PostgreSQL) 15.18 (Debian...)' -> ('15.18', 15)."""
    result = run_command([pg_dump, "--version"], timeout=30)
    match = re.search(r"\)\s*(\d+)(?:\.(\d+))?", result.last_line)
    if not match:
        raise ConfigError(f"cannot read the version of {pg_dump}: {result.last_line!r}")
    text = match.group(1) + (f".{match.group(2)}" if match.group(2) else "")
    return text, int(match.group(1))


def _widen_pipe(stream) -> None:  # noqa: ANN001
    """Grow the pipe from 64 KiB to 1 MiB (Linux): fewer, larger reads and fewer context switches
    between pg_dump and the compressor. Best effort; other systems keep their default."""
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        pass


class _DumpStream:
    """pg_dump's stdout as a readable; at EOF it waits for pg_dump and raises if it failed.

    Raising from ``read`` at EOF is what makes the upload atomic: the store never sees a clean
    end of stream for a dump that did not finish, so it aborts instead of completing the object.
    """

    def __init__(self, proc: subprocess.Popen, stderr_tail: deque, stderr_pump: threading.Thread,
                 killed_for_timeout: threading.Event, max_runtime: float,
                 counter: ArchiveRowCounter | None = None) -> None:
        self._proc = proc
        self._counter = counter
        self._tail = stderr_tail
        self._pump = stderr_pump
        self._timeout = killed_for_timeout
        self._max_runtime = max_runtime
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._proc.stdout.read(size if size and size > 0 else 1 << 20)
        if data:
            self.bytes += len(data)
            if self._counter is not None:
                self._counter.feed(data)
            return data
        rc = self._proc.wait()
        self._pump.join(10)
        if self._timeout.is_set():
            raise BackupError(f"pg_dump exceeded the maximum runtime of {self._max_runtime:.0f} s and was stopped")
        if rc != 0:
            why = f"exit code {rc}" if rc > 0 else f"killed by signal {signal.Signals(-rc).name}"
            last = self._tail[-1] if self._tail else "no error output"
            raise BackupError(f"pg_dump failed ({why}): {last.removeprefix('pg_dump: ').removeprefix('error: ')}")
        return b""

    def readable(self) -> bool:
        return True


def run_backup(*, environment: str, target: DatabaseTarget, store: ObjectStore, partition: date,
               settings: BackupSettings | None = None, log: Log = print,
               keyring: Keyring | None = None) -> BackupResult:
    """Dump one database into ``store`` atomically and return what was written.

    With a ``keyring`` the manifest is signed (lib/backup/signing.py), which is what lets retention, DR
    and validation tell this backup from objects anyone else with bucket access writes.

    Order matters for the guarantees: the store and the server are checked before pg_dump runs,
    the dump object is complete before the manifest is written, and the manifest is last.
    """
    settings = settings or BackupSettings()
    started = datetime.now(UTC)
    t0 = time.monotonic()

    pg_dump = find_tool("pg_dump", settings.pg_bin_dir, hint=PG_DUMP_HINT)
    dump_version, dump_major = pg_dump_version(pg_dump)
    store.check_writable()

    conn = connect(target, connect_timeout=settings.connect_timeout)
    # Autocommit, so the explicit BEGIN below really opens the snapshot transaction (otherwise the
    # first query would already have started a READ COMMITTED one and the isolation would be lost).
    conn.autocommit = True
    try:
        server_num = conn.info.server_version
        server_major = server_num // 10000
        server_version = conn.execute("SHOW server_version").fetchone()[0].split()[0]
        if dump_major < server_major:
            raise ConfigError(
                f"pg_dump {dump_version} is older than the PostgreSQL {server_version} server of "
                f"{target.describe()}; install pg_dump {server_major} or newer (or set ACCI_PG_BIN)"
            )
        log(f"server PostgreSQL {server_version}, pg_dump {dump_version}; store {store.url}")
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot_id, snapshot_at = conn.execute("SELECT pg_export_snapshot(), now()").fetchone()
        objects = catalog.list_objects(conn)
        tables = catalog.countable_tables(conn)
        key = dump_key(environment, partition, target.dbname, started)
        dump_bytes, stored_bytes, sha256, archive = _stream_dump(pg_dump, target, store, key, snapshot_id, settings,
                                                                 log)
        row_counts, unavailable = table_counts(archive, tables)
    except psycopg.Error as exc:
        raise BackupError(f"PostgreSQL {target.describe()} failed during the backup: {explain_pg_error(exc)}") from None
    finally:
        # The read-only snapshot transaction has nothing to commit; closing ends it. A server that
        # went away after pg_dump finished does not make a complete, counted dump any less valid.
        conn.close()

    finished = datetime.now(UTC)
    manifest = BackupManifest(
        environment=environment, database=target.dbname, partition=partition.isoformat(), object_key=key,
        started_at=started.isoformat(), finished_at=finished.isoformat(),
        snapshot_at=snapshot_at.astimezone(UTC).isoformat(), server_version=server_version,
        pg_dump_version=dump_version, dump_bytes=dump_bytes, stored_bytes=stored_bytes, sha256=sha256,
        row_counts=row_counts, objects=objects, row_counts_unavailable=unavailable,
        large_objects=None if unavailable else archive.large_objects,
    )
    if keyring is not None:
        manifest.signature = keyring.signature(manifest.payload())
    try:
        store.put_bytes(manifest_key_for(key), manifest.to_json())
    except BaseException:
        # Without its manifest the dump is not a backup: remove it so nothing half-written remains.
        store.delete(key)
        raise
    duration = time.monotonic() - t0
    if unavailable:
        log(f"WARNING: no row counts in the manifest: {unavailable}; validation will report it")
    else:
        log(f"counted {sum(row_counts.values()):,} rows in {len(row_counts)} tables and "
            f"{archive.large_objects} large objects from the archive")
    log(f"backup complete: {store.uri_for(key)} ({human_bytes(stored_bytes)} stored from "
        f"{human_bytes(dump_bytes)} dumped, {human_duration(duration)})")
    return BackupResult(manifest, store.uri_for(key), store.uri_for(manifest_key_for(key)), duration)


def table_counts(archive: ArchiveCounts, tables: list[tuple[str, str]]) -> tuple[dict[str, int], str | None]:
    """The manifest's row counts: the archive's count for every plain table and partition of the
    catalog (the same keys a restored database's ``count(*)`` gives, see catalog.countable_tables),
    or no counts and the reason. Tables pg_dump dumps that the catalog does not count (an
    extension's configuration tables) are left out, as before."""
    if not archive.available:
        return {}, f"the archive could not be read for row counts: {archive.error}"
    names = [f"{schema}.{name}" for schema, name in tables]
    missing = [name for name in names if name not in archive.rows]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        return {}, f"the archive holds no data for table {missing[0]}{more}"
    return {name: archive.rows[name] for name in names}, None


def _stream_dump(pg_dump: str, target: DatabaseTarget, store: ObjectStore, key: str, snapshot_id: str,
                 settings: BackupSettings, log: Log) -> tuple[int, int, str, ArchiveCounts]:
    argv = [pg_dump, "--format=custom", "--compress=0", f"--snapshot={snapshot_id}", "--no-password"]
    log("running " + " ".join(argv[1:]) + f" on {target.describe()}")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=child_env(target.libpq_env(), allow=PG_ENV), bufsize=0)
    _widen_pipe(proc.stdout)
    tail: deque[str] = deque(maxlen=20)
    pump = pump_lines(proc.stderr, lambda line: log(f"pg_dump: {line}"), tail)
    timed_out = threading.Event()

    def stop_for_timeout() -> None:
        timed_out.set()
        proc.kill()

    watchdog = threading.Timer(settings.max_runtime_seconds, stop_for_timeout)
    watchdog.daemon = True
    watchdog.start()

    # The rows are counted from the archive bytes on their way to the compressor.
    counter = ArchiveRowCounter()
    source = _DumpStream(proc, tail, pump, timed_out, settings.max_runtime_seconds, counter)
    # A content checksum in the frame lets `zstd -t` and a by-hand `zstd -dc` detect corruption on
    # their own, without the manifest.
    compressor = zstandard.ZstdCompressor(level=settings.zstd_level, threads=settings.zstd_threads,
                                          write_checksum=True)
    hashed = HashingReader(compressor.stream_reader(source, read_size=1 << 20))
    try:
        store.upload_stream(key, hashed)
    except BaseException as exc:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if isinstance(exc, AcciOpsError):
            raise
        raise BackupError(f"upload of {store.uri_for(key)} failed: {exc}") from exc
    finally:
        watchdog.cancel()
    return source.bytes, hashed.bytes, hashed.sha256.hexdigest(), counter.finish()
