"""Restoring a backup archive with pg_restore: from a local file in parallel, or streamed.

Shared by validation (into a scratch database), DR drills (into the drill's database) and
on-call disaster recovery (into the environment's database), so all three exercise the same path.
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

import zstandard

from acci_ops.lib.backup.inventory import read_manifest
from acci_ops.lib.backup.manifest import BackupManifest
from acci_ops.lib.core.commands import PG_ENV, child_env, find_pg_tool, pump_lines
from acci_ops.lib.core.errors import AcciOpsError, BackupError
from acci_ops.lib.postgres.urls import DatabaseTarget
from acci_ops.lib.storage.objectstore import MiB, ObjectStore

Log = Callable[[str], None]


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
        while (chunk := chunks.get()) is not None:
            if errors or write_errors or overflow.is_set():
                continue  # keep draining so the reader never blocks
            try:
                writer.write(chunk)
            except _TooLarge:
                overflow.set()
            except zstandard.ZstdError as exc:
                errors.append(f"object is not a valid zstd stream: {exc}")
            except OSError as exc:
                write_errors.append(exc)
        if not errors and not write_errors and not overflow.is_set():
            try:
                writer.flush()
            except _TooLarge:
                overflow.set()
            except zstandard.ZstdError as exc:
                errors.append(f"object is not a valid zstd stream: {exc}")
            except OSError as exc:
                write_errors.append(exc)

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
    pg_restore = find_pg_tool("pg_restore", pg_bin_dir, hint="install postgresql-client-15 or set ACCI_PG_BIN")
    manifest = read_manifest(store, backup_key)
    work = work_dir or tempfile.gettempdir()
    fits = shutil.disk_usage(work).free >= manifest.dump_bytes + reserve_bytes
    mode = "parallel" if fits else "stream"
    started = time.monotonic()
    # The manifest comes from the bucket: cap what is read and decompressed by what it declares.
    fetched = fetch_archive(store, backup_key, to_dir=work if fits else None,
                            max_output=manifest.dump_bytes, max_input=manifest.stored_bytes)
    local = fetched.local_file
    try:
        try:
            fetched.check(manifest)
        except BackupError as exc:
            raise BackupError(f"{store.uri_for(backup_key)}: {exc}; not restoring") from None
        argv = [pg_restore, "--exit-on-error", "--no-owner", "--no-privileges", "--dbname", target.dbname]
        source = dict(store=None, key=None)
        if local is not None:
            argv += ["--jobs", str(jobs), str(local)]
        else:
            source = dict(store=store, key=backup_key, max_output=manifest.dump_bytes)
        log(f"restoring {store.uri_for(backup_key)} into {target.describe()} ({mode})")
        rc, lines = pg_restore_run(argv, target.libpq_env(), timeout=timeout, log=log, **source)
        if rc != 0:
            raise BackupError(f"pg_restore into {target.describe()} stopped at the first error: {first_error(lines)}")
    finally:
        if local is not None:
            local.unlink(missing_ok=True)
    return RestoreResult(manifest, mode, round(time.monotonic() - started, 3))
