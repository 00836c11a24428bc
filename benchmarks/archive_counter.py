"""The backup's row counter against the other work on the backup's hot path, on a real archive.

Builds (or, with --keep, reuses) a throwaway PostgreSQL 15 database like backup_throughput.py's
(pgbench tables plus rows of random md5 text), dumps it once with ``pg_dump -Fc -Z0`` to a file,
then feeds that file in 1 MiB pieces, the size the backup reads, to each of:

  counter       ArchiveRowCounter as the backup runs it (numpy over per-row chunk headers)
  counter walk  the same counter with the vectorized pass off (one Python step per chunk: the anchor)
  zstd -1       zstandard level 1 compressing the stream (the backup's compressor, one thread)
  sha256        hashlib over the stream (the backup's checksum)

Each is timed on CPU (process time, best of --repeat) and printed as GB/s and as a ratio to zstd;
the counts of both counter modes are compared with each other and with count(*) on the server.
Target: the counter alone >= 2 GB/s.

    .venv/bin/python benchmarks/archive_counter.py [--scale-factor 1.0] [--repeat 3] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import acci_ops.lib.backup.archive_counts as archive_counts  # noqa: E402
from acci_ops.dev.localpg import LocalPostgres  # noqa: E402
from acci_ops.lib.core.net import free_port  # noqa: E402

WORK = ROOT / "benchmarks" / ".work-counter"
PIECE = 1 << 20
TARGET_GBPS = 2.0


def log(message: str) -> None:
    print(message, flush=True)


def build(pg: LocalPostgres, dbname: str, scale: int, text_rows: int) -> None:
    if pg.psql(f"SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{dbname}'") == "done":
        log(f"reusing {dbname}")
        return
    log(f"building {dbname}: pgbench -i -s {scale} plus {text_rows:,} text rows ...")
    pg.psql(f"DROP DATABASE IF EXISTS {dbname}")
    pg.psql(f"CREATE DATABASE {dbname}")
    subprocess.run(["pgbench", "-i", "-I", "dtGvp", "-s", str(scale), "-h", "127.0.0.1", "-p", str(pg.port),
                    "-U", "postgres", dbname], check=True, capture_output=True)
    pg.psql("CREATE TABLE bench_text AS SELECT g AS id, md5(random()::text) || ' ' || md5(random()::text) AS body "
            f"FROM generate_series(1, {text_rows}) g", dbname)
    pg.psql(f"COMMENT ON DATABASE {dbname} IS 'done'")


def pieces(path: Path):
    with open(path, "rb") as handle:
        while chunk := handle.read(PIECE):
            yield chunk


def cpu_seconds(work, path: Path, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        data = list(pieces(path))  # read outside the timing: the page cache is not what is measured
        started = time.process_time()
        result = work(data)
        best = min(best, time.process_time() - started)
    return best, result


def count(data: list[bytes]) -> archive_counts.ArchiveCounts:
    counter = archive_counts.ArchiveRowCounter()
    for piece in data:
        counter.feed(piece)
    return counter.finish()


def count_walk(data: list[bytes]) -> archive_counts.ArchiveCounts:
    saved = archive_counts.VECTOR_MIN_BYTES
    archive_counts.VECTOR_MIN_BYTES = 1 << 62
    try:
        return count(data)
    finally:
        archive_counts.VECTOR_MIN_BYTES = saved


def zstd1(data: list[bytes]) -> int:
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    return sum(len(compressor.compress(piece)) for piece in data) + len(compressor.flush())


def sha256(data: list[bytes]) -> str:
    digest = hashlib.sha256()
    for piece in data:
        digest.update(piece)
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale-factor", type=float, default=1.0, help="pgbench -s 50*F plus 3M*F text rows")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs per line")
    parser.add_argument("--keep", action="store_true", help=f"keep {WORK.relative_to(ROOT)} for the next run")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    pg = LocalPostgres(WORK / "pg", free_port())
    ok = True
    try:
        pg.start()
        scale, rows = max(1, round(50 * args.scale_factor)), max(1000, round(3_000_000 * args.scale_factor))
        dbname = f"counter_s{scale}"
        build(pg, dbname, scale, rows)
        archive = WORK / f"{dbname}.dump"
        subprocess.run(["pg_dump", "-Fc", "-Z0", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                        "-f", str(archive), dbname], check=True)
        size = archive.stat().st_size
        log(f"archive: {size / 1e6:,.0f} MB (pg_dump -Fc -Z0), fed in {PIECE >> 20} MiB pieces, best of {args.repeat}")
        lines = [("counter", count), ("counter walk", count_walk), ("zstd -1", zstd1), ("sha256", sha256)]
        measured = {name: cpu_seconds(work, archive, args.repeat) for name, work in lines}
        zstd_s = measured["zstd -1"][0]
        log(f"{'line':<14} {'CPU s':>7} {'GB/s':>6} {'x zstd -1 time':>15}")
        for name, (seconds, _) in measured.items():
            log(f"{name:<14} {seconds:7.3f} {size / seconds / 1e9:6.2f} {seconds / zstd_s:15.2f}")
        vector, walk = measured["counter"][1], measured["counter walk"][1]
        server = {f"public.{t}": int(pg.psql(f"SELECT count(*) FROM {t}", dbname))
                  for t in ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history", "bench_text")}
        same = vector.rows == walk.rows and all(vector.rows.get(k) == v for k, v in server.items())
        log(f"counts: vectorized == walk == count(*): {same} ({sum(vector.rows.values()):,} rows)")
        gbps = size / measured["counter"][0] / 1e9
        speedup = measured["counter walk"][0] / measured["counter"][0]
        log(f"{'PASS' if gbps >= TARGET_GBPS else 'MISS'}  counter {gbps:.2f} GB/s (target >= {TARGET_GBPS}); "
            f"{speedup:.1f}x the walk")
        ok = same and gbps >= TARGET_GBPS
    finally:
        pg.stop()
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
