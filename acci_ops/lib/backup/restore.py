"""Restoring a backup archive with pg_restore: from a local file in parallel, or streamed.

Shared by validation (into a scratch database), DR drills (into the drill's database) and
on-call disaster recovery (into the environment's database), so all three exercise the same path:
``choose_mode`` (parallel from a local file when it fits the disk, else streamed),
``fetch_for_restore`` (one capped read, checked against the manifest by ``Archive.verify``),
``restore_argv``/``Archive.restore_into`` (pg_restore stopping at the first error), and
``compare_contents`` (the restored database against the manifest).
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import psycopg
import zstandard

from acci_ops.lib.backup.inventory import read_manifest
from acci_ops.lib.backup.manifest import BackupManifest
from acci_ops.lib.core.commands import PG_ENV, child_env, find_pg_tool, pump_lines
from acci_ops.lib.core.errors import AcciOpsError, BackupError
from acci_ops.lib.postgres import catalog
from acci_ops.lib.postgres.connect import explain_pg_error
from acci_ops.lib.postgres.urls import DatabaseTarget
from acci_ops.lib.storage.objectstore import MiB, ObjectStore

Log = Callable[[str], None]
PG_RESTORE_HINT = "install postgresql-client-15 or set ACCI_PG_BIN"


class _CappedSink:
    """Passes decompressed bytes to the real sink until more than ``limit`` would have been written."""

    def __init__(self, sink: BinaryIO, limit: int | None) -> None:
        self.sink, self.limit, self.written = sink, limit, 0

    def write(self, data: bytes) -> int:
        if self.limit is not None and self.written + len(data) > self.limit:
            raise _TooLarge()
        self.written += len(data)
        return self.sink.write(data)

    def flush(self) -> None:
        flush = getattr(self.sink, "flush", None)
        if flush:
            flush()


class _TooLarge(Exception):
    pass


def stream_object(store: ObjectStore, key: str, sink: BinaryIO | None, *, max_output: int | None = None,
                  max_input: int | None = None) -> tuple[str, int, str | None]:
    """Read the object once: hash every byte and, with a ``sink``, write the decompressed bytes to it.

    Reading and hashing run on this thread, decompressing and writing on another (both release the
    GIL), joined by a small bounded queue, so memory stays at a few chunks and the two overlap. A
    decompression error does not stop the hashing: a damaged object is reported by its checksum (the
    more fundamental fact) rather than by whatever zstd made of it. A sink that refuses writes (a
    full disk, a pg_restore that exited) raises its OSError once the object has been read.

    The manifest comes from the bucket, so nothing here is unbounded: with ``max_output`` (the
    manifest's dump_bytes) decompression stops as soon as it would exceed it, and with
    ``max_input`` (the manifest's stored_bytes) reading stops one chunk past it; both raise a
    one-line BackupError instead of filling a disk or a pipe."""
    digest, size = hashlib.sha256(), 0
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
    errors: list[str] = []
    write_errors: list[OSError] = []
    overflow = threading.Event()

    def decompress() -> None:
        capped = _CappedSink(sink, max_output)
        writer = zstandard.ZstdDecompressor().stream_writer(capped, write_size=1 << 20, closefd=False)
        def stopped() -> bool:
            return bool(errors or write_errors or overflow.is_set())

        def guarded(step: Callable[[], object]) -> None:
            try:
                step()
            except _TooLarge:
                overflow.set()
            except zstandard.ZstdError as exc:
                errors.append(f"object is not a valid zstd stream: {exc}")
            except OSError as exc:
                write_errors.append(exc)

        while (chunk := chunks.get()) is not None:
            if not stopped():  # after a failure keep draining, so the reader never blocks
                guarded(lambda: writer.write(chunk))  # noqa: B023 - called at once
        if not stopped():
            guarded(writer.flush)

    worker = threading.Thread(target=decompress, daemon=True) if sink is not None else None
    if worker:
        worker.start()
    try:
        with store.open_read(key) as body:
            while chunk := body.read(4 * MiB):
                digest.update(chunk)
                size += len(chunk)
                if max_input is not None and size > max_input:
                    raise BackupError(f"object is larger than the manifest's {max_input} bytes; stopped reading "
                                      "(truncated manifest or replaced object)")
                if overflow.is_set():
                    break
                if worker:
                    chunks.put(chunk)
    finally:
        if worker:
            chunks.put(None)
            worker.join()
    if overflow.is_set():
        raise BackupError(f"decompressed more than the manifest's {max_output} bytes; stopped "
                          "(the manifest does not describe it)")
    if write_errors:
        raise write_errors[0]
    return digest.hexdigest(), size, errors[0] if errors else None


def pg_restore_run(argv: list[str], env: dict[str, str], *, store: ObjectStore | None, key: str | None,
                timeout: float, log: Log, max_output: int | None = None) -> tuple[int, list[str]]:
    """Run pg_restore; with a store, feed it the decompressed object on stdin (streaming mode)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if store else subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=child_env(env, allow=PG_ENV))
    lines: deque[str] = deque(maxlen=2000)
    pump = pump_lines(proc.stdout, None, lines)
    feed_error: list[str] = []

    def feed() -> None:
        try:
            _, _, error = stream_object(store, key, proc.stdin, max_output=max_output)
            if error:
                feed_error.append(error)
        except (BrokenPipeError, OSError):
            pass  # pg_restore stopped reading; its exit code says why
        except AcciOpsError as exc:
            feed_error.append(str(exc))
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    feeder = threading.Thread(target=feed, daemon=True) if store else None
    if feeder:
        feeder.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise BackupError(f"pg_restore did not finish within {timeout:.0f} s and was stopped") from None
    finally:
        pump.join(10)
        if feeder:
            feeder.join(10)
    if feed_error:
        raise BackupError(feed_error[0])
    return proc.returncode, list(lines)


def first_error(lines: list[str]) -> str:
    """The cause, for a one-line message: the FIRST error pg_restore printed (with --exit-on-error
    it stops there; in parallel mode later lines are only "a worker process died unexpectedly")."""
    first = next((line for line in lines if line.startswith("pg_restore: error:")), None)
    if first is None:
        first = next((line for line in reversed(lines) if "error" in line.lower()), None)
    if first is None:
        return lines[-1] if lines else "no output"
    return first.removeprefix("pg_restore: ").removeprefix("error: ")


@dataclass(frozen=True)
class Fetched:
    """One pass over the stored object: its hash and size, and where it was decompressed to."""

    local_file: Path | None
    sha256: str
    size: int
    zstd_error: str | None

    def check(self, manifest: BackupManifest) -> None:
        """The object is exactly what the manifest describes, and decompresses."""
        if self.size != manifest.stored_bytes:
            raise BackupError(f"object is {self.size} bytes but the manifest says {manifest.stored_bytes} "
                              "(truncated or replaced)")
        if self.sha256 != manifest.sha256:
            raise BackupError(f"object sha256 {self.sha256[:16]}… does not match the manifest's "
                              f"{manifest.sha256[:16]}… (corrupted or replaced)")
        if self.zstd_error:
            raise BackupError(self.zstd_error)


def fetch_archive(store: ObjectStore, key: str, *, to_dir: str | None, max_output: int | None = None,
                  max_input: int | None = None) -> Fetched:
    """Read the object once, hashing it; with ``to_dir``, decompress it into a local file there
    (for ``pg_restore -j``), which the caller removes. Without it nothing touches the disk.
    Pass the manifest's ``dump_bytes``/``stored_bytes`` as ``max_output``/``max_input``: the
    local file never grows past what the manifest announced (see stream_object)."""
    local: Path | None = None
    out = None
    if to_dir is not None:
        fd, name = tempfile.mkstemp(prefix="acci-restore-", suffix=".dump", dir=to_dir)
        local = Path(name)
        out = os.fdopen(fd, "wb")
    try:
        digest, size, error = stream_object(store, key, out, max_output=max_output, max_input=max_input)
    except BaseException as exc:
        if local is not None:
            local.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise BackupError(f"could not write the decompressed archive in {to_dir}: {exc.strerror or exc}") from None
        raise
    finally:
        if out is not None:
            out.close()
    return Fetched(local, digest, size, error)


def find_pg_restore(pg_bin_dir: str | None = None) -> str:
    """The pg_restore to use (ACCI_PG_BIN's, else PATH's or Debian's newest); one line if missing."""
    return find_pg_tool("pg_restore", pg_bin_dir, hint=PG_RESTORE_HINT)


def choose_mode(requested: str, manifest: BackupManifest, work_dir: str | None,
                reserve_bytes: int) -> tuple[str, str]:
    """The restore mode and the directory for the local file.

    ``pg_restore -j`` needs a seekable file, so ``parallel`` decompresses the archive to
    ``work_dir`` first; it must fit with ``reserve_bytes`` to spare. ``auto`` takes parallel when
    it fits and streams (one job, nothing on disk) otherwise; ``parallel`` that does not fit is a
    one-line error rather than a full disk; ``stream`` always streams."""
    work = work_dir or tempfile.gettempdir()
    Path(work).mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    need = manifest.dump_bytes + reserve_bytes
    fits = free >= need
    if requested == "parallel" and not fits:
        raise BackupError(f"not enough free disk in {work} for a parallel restore: need "
                          f"{need / 1e6:.0f} MB, {free / 1e6:.0f} MB free (or set the mode to stream)")
    mode = "parallel" if requested == "parallel" or (requested == "auto" and fits) else "stream"
    return mode, work


def restore_argv(pg_restore: str, dbname: str, *, mode: str, jobs: int) -> list[str]:
    """pg_restore into an existing, new database, stopping at the first error. Deliberately no
    ``--clean`` (a failure midway must never half-drop a database) and no owners or privileges
    (the archive's roles need not exist where it is restored). The archive is added by Archive.run."""
    argv = [pg_restore, "--exit-on-error", "--no-owner", "--no-privileges", "--dbname", dbname]
    if mode == "parallel":
        argv += ["--jobs", str(jobs)]
    return argv


@dataclass(frozen=True)
class Archive:
    """A backup read once from the store, ready for pg_restore: in parallel mode decompressed to a
    local file (which ``remove`` deletes), in stream mode read again from the store on each run."""

    store: ObjectStore
    key: str
    manifest: BackupManifest
    mode: str
    fetched: Fetched

    @property
    def local_file(self) -> Path | None:
        return self.fetched.local_file

    def verify(self) -> None:
        """The object is exactly what the manifest describes, and decompresses (one-line BackupError)."""
        self.fetched.check(self.manifest)

    def run(self, argv: list[str], env: dict[str, str], *, timeout: float, log: Log) -> tuple[int, list[str]]:
        """Run a pg_restore command line on this archive: the local file's path is appended in
        parallel mode; in stream mode the decompressed object is fed on stdin, capped by the manifest."""
        if self.local_file is not None:
            return pg_restore_run([*argv, str(self.local_file)], env, store=None, key=None, timeout=timeout, log=log)
        return pg_restore_run(argv, env, store=self.store, key=self.key, timeout=timeout, log=log,
                              max_output=self.manifest.dump_bytes)

    def restore_into(self, pg_restore: str, target: DatabaseTarget, *, jobs: int, timeout: float,
                     log: Log) -> tuple[int, list[str]]:
        """pg_restore this archive into ``target`` (see restore_argv); returns the exit code and output."""
        argv = restore_argv(pg_restore, target.dbname, mode=self.mode, jobs=jobs)
        return self.run(argv, target.libpq_env(), timeout=timeout, log=log)

    def remove(self) -> None:
        if self.local_file is not None:
            self.local_file.unlink(missing_ok=True)


def fetch_for_restore(store: ObjectStore, key: str, manifest: BackupManifest, *, mode: str,
                      work_dir: str) -> Archive:
    """Read the object once, hashing it (and, in parallel mode, decompressing it into ``work_dir``),
    capped by what the manifest declares since the manifest comes from the bucket. Call
    ``verify`` before restoring and ``remove`` when done."""
    fetched = fetch_archive(store, key, to_dir=work_dir if mode == "parallel" else None,
                            max_output=manifest.dump_bytes, max_input=manifest.stored_bytes)
    return Archive(store, key, manifest, mode, fetched)


def read_contents(target: DatabaseTarget) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Exact row counts and the objects of a restored database, for ``compare_contents``."""
    try:
        with psycopg.connect(**target.connect_kwargs()) as conn:
            return catalog.exact_row_counts(conn), catalog.list_objects(conn)
    except psycopg.Error as exc:
        raise BackupError(f"cannot read the restored database {target.dbname}: {explain_pg_error(exc)}") from None


def compare_contents(manifest: BackupManifest, counts: dict[str, int], objects: dict[str, list[str]]) -> None:
    """Raise one line naming what a restored database lacks against the manifest (shared by
    validation and DR, so both prove a restore the same way)."""
    problems = []
    for kind, expected in sorted(manifest.objects.items()):
        got = set(objects.get(kind, []))
        missing, extra = sorted(set(expected) - got), sorted(got - set(expected))
        if missing:
            problems.append(f"missing {kind}: {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
        if extra:
            problems.append(f"unexpected {kind}: {', '.join(extra[:3])}{' …' if len(extra) > 3 else ''}")
    if manifest.row_counts_unavailable:
        problems.append(f"the manifest holds no row counts to check against ({manifest.row_counts_unavailable})")
    wrong = [f"{t} has {counts.get(t)} rows, manifest {n}" for t, n in sorted(manifest.row_counts.items())
             if counts.get(t) != n]
    if wrong:
        more = f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else ""
        problems.append("row counts differ: " + "; ".join(wrong[:3]) + more)
    if problems:
        raise BackupError("; ".join(problems))


@dataclass(frozen=True)
class RestoreResult:
    manifest: BackupManifest
    mode: str
    seconds: float


def restore_backup(store: ObjectStore, backup_key: str, target: DatabaseTarget, *, jobs: int = 2,
                   work_dir: str | None = None, reserve_bytes: int = 256 * MiB,
                   pg_bin_dir: str | None = None, timeout: float = 6 * 3600, log: Log = print) -> RestoreResult:
    """Verify the object against its manifest, then restore it into ``target`` (which must exist and
    be new: there is deliberately no ``--clean``, a failure midway must never half-drop a live
    database). Parallel from a local file when it fits the disk, streamed otherwise; pg_restore
    stops at the first error."""
    pg_restore = find_pg_restore(pg_bin_dir)
    manifest = read_manifest(store, backup_key)
    mode, work = choose_mode("auto", manifest, work_dir, reserve_bytes)
    started = time.monotonic()
    archive = fetch_for_restore(store, backup_key, manifest, mode=mode, work_dir=work)
    try:
        try:
            archive.verify()
        except BackupError as exc:
            raise BackupError(f"{store.uri_for(backup_key)}: {exc}; not restoring") from None
        log(f"restoring {store.uri_for(backup_key)} into {target.describe()} ({mode})")
        rc, lines = archive.restore_into(pg_restore, target, jobs=jobs, timeout=timeout, log=log)
        if rc != 0:
            raise BackupError(f"pg_restore into {target.describe()} stopped at the first error: {first_error(lines)}")
    finally:
        archive.remove()
    return RestoreResult(manifest, mode, round(time.monotonic() - started, 3))
