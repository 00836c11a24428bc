"""Backup throughput: the acci_ops nightly backup against plain pg_dump pipelines, on one machine.

Builds a throwaway PostgreSQL cluster with a ~1 GB database (pgbench -s 50 plus 3M rows of random
md5 text), starts moto's S3 server over HTTP, and times, on the same database and the same server:

  1. floor     pg_dump -Fc -Z0 > /dev/null            (reading the database, nothing else)
  2. guide     pg_dump | gzip > file, then upload it  (boto3 upload_file)
  3. custom    pg_dump -Fc > file, then upload it     (what pg_dump-to-S3 containers do)
  4. acci_ops  the Dagster job nightly_backup, run in a child process (execute_in_process)
  5. by hand   pg_dump -Fc -Z0 | zstd -1 | boto3 upload_fileobj(stdin)   (the hand-written anchor)

Every variant runs under /usr/bin/time -v for its peak RSS. Each row also shows the blocks the
server read for it (pg_stat_database blks_read + blks_hit of the database, before and after; read
from the postgres database once every session of the benchmark database has ended, because a
PostgreSQL 15 backend flushes its statistics when it exits), so a second scan of the tables shows.
A second pass at ~3x the size shows whether time and memory scale. Run it with:

    .venv/bin/python benchmarks/backup_throughput.py [--scale-factor 1.0] [--skip-large] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project is not installed into the venv; run from a checkout

from acci_ops.dev.localpg import LocalPostgres, server_bin_dir  # noqa: E402
from acci_ops.dev.servers import start_moto  # noqa: E402
from acci_ops.lib.core.net import free_port  # noqa: E402

WORK = ROOT / "benchmarks" / ".work"
BUCKET = "bench"
MB = 1_000_000

# Targets from the issue.
MAX_RATIO_TO_FLOOR = 1.3
MIN_SPEEDUP_OVER_GUIDE = 2.5
MAX_RSS_MB = 250
MAX_RATIO_TO_BY_HAND = 1.0  # run_backup against the hand-written pipeline
MAX_BLOCKS_RATIO = 1.05  # server blocks read by the backup against a bare pg_dump

# The anchors upload with boto3's defaults (8 MiB parts, 10 threads), like `aws s3 cp`.
UPLOAD_CHILD = """
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))
s3.upload_file(sys.argv[1], sys.argv[2], sys.argv[3])
"""

# The hand-written anchor's upload: the compressed stream from stdin, boto3's defaults.
STDIN_UPLOAD_CHILD = """
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))
s3.upload_fileobj(sys.stdin.buffer, sys.argv[1], sys.argv[2])
"""

# The backup as the daemon's run worker does it: load the definitions, run the job for a partition.
DAGSTER_CHILD = """
import json, sys
from dagster import DagsterInstance
from acci_ops.definitions import build_definitions
from acci_ops.settings import load_settings
job = build_definitions(load_settings()).resolve_job_def("nightly_backup")
result = job.execute_in_process(partition_key=sys.argv[1], instance=DagsterInstance.ephemeral())
event = result.asset_materializations_for_node("db_backup")[0]
print(json.dumps({k: v.value for k, v in event.metadata.items()}, default=str))
"""


@dataclass
class Measured:
    """What /usr/bin/time -v saw of one command: wall time, CPU of it and its children, peak RSS."""

    seconds: float
    cpu_seconds: float
    peak_rss_kb: int
    stdout: str


@dataclass
class Row:
    variant: str
    seconds: float
    cpu_seconds: float
    stored_bytes: int | None
    peak_rss_kb: int
    server_blocks: int = 0


def log(message: str) -> None:
    print(message, flush=True)


def timed(argv: list[str], env: dict[str, str], name: str) -> Measured:
    """Run argv under /usr/bin/time -v."""
    rss_file = WORK / f"{name}.time"
    started = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-v", "-o", str(rss_file), *argv], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    report = rss_file.read_text()
    field = lambda label: float(re.search(rf"{label}: ([\d.]+)", report).group(1))  # noqa: E731
    cpu = field(r"User time \(seconds\)") + field(r"System time \(seconds\)")
    return Measured(seconds, cpu, int(field(r"Maximum resident set size \(kbytes\)")), proc.stdout)


class Bench:
    """One database in the cluster, the S3 server, and the variants run against them."""

    def __init__(self, pg: LocalPostgres, dbname: str, endpoint: str) -> None:
        self.pg = pg
        self.dbname = dbname
        self.pg_bin = server_bin_dir()
        self.env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            PGHOST="127.0.0.1", PGPORT=str(pg.port), PGUSER="postgres", PGDATABASE=dbname,
            AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL=endpoint,
            # moto, like several S3-compatible stores, is better off without the CRC checksums
            # AWS SDKs send by default since 2025; acci_ops sets the same in its client.
            AWS_REQUEST_CHECKSUM_CALCULATION="when_required", AWS_RESPONSE_CHECKSUM_VALIDATION="when_required",
        )
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                               aws_secret_access_key="bench", config=Config(s3={"addressing_style": "path"}))

    def server_blocks(self) -> int:
        """blks_read + blks_hit of the benchmark database, once its sessions have flushed their stats."""
        for _ in range(200):
            busy = self.pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{self.dbname}'")
            if busy == "0":
                break
            time.sleep(0.05)
        return int(self.pg.psql("SELECT pg_stat_clear_snapshot(); SELECT blks_read + blks_hit FROM pg_stat_database "
                                f"WHERE datname = '{self.dbname}'").splitlines()[-1])

    def object_size(self, key: str) -> int:
        return self.s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"]

    def empty_bucket(self) -> None:
        """moto keeps objects in memory: drop each variant's upload before the next one runs."""
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for item in page.get("Contents", []):
                self.s3.delete_object(Bucket=BUCKET, Key=item["Key"])

    def anchor(self, variant: str, name: str, pipeline: str, upload_from: Path | None = None,
               env: dict[str, str] | None = None) -> Row:
        """A shell pipeline (and the upload of its file), timed as one command."""
        script = f"set -o pipefail; {pipeline}"
        if upload_from:
            script += f' && "{sys.executable}" -c "$UPLOAD_CHILD" {upload_from} {BUCKET} {name}/{upload_from.name}'
        env = dict(env or self.env, PATH=f"{self.pg_bin}:{self.env['PATH']}", UPLOAD_CHILD=UPLOAD_CHILD)
        run = timed(["bash", "-c", script], env, name)
        stored = self.object_size(f"{name}/{upload_from.name}") if upload_from else None
        if upload_from:
            upload_from.unlink()
        return Row(variant, run.seconds, run.cpu_seconds, stored, run.peak_rss_kb)

    def floor(self) -> Row:
        return self.anchor("1 floor: pg_dump -Fc -Z0 > /dev/null", "floor", "pg_dump -Fc -Z0 > /dev/null")

    def guide(self) -> Row:
        file = WORK / f"{self.dbname}.sql.gz"
        return self.anchor("2 guide: pg_dump | gzip > file; upload", "guide", f"pg_dump | gzip > {file}", file)

    def by_hand(self) -> Row:
        script = (f'pg_dump -Fc -Z0 | zstd -1 -q | "{sys.executable}" -c "$STDIN_UPLOAD_CHILD" {BUCKET} '
                  f'byhand/{self.dbname}.dump.zst')
        env = dict(self.env, STDIN_UPLOAD_CHILD=STDIN_UPLOAD_CHILD)
        row = self.anchor("5 by hand: pg_dump -Z0 | zstd -1 | upload_fileobj", "byhand", script, env=env)
        row.stored_bytes = self.object_size(f"byhand/{self.dbname}.dump.zst")
        return row

    def custom(self) -> Row:
        file = WORK / f"{self.dbname}.dump"
        return self.anchor("3 pg_dump -Fc > file; upload", "custom", f"pg_dump -Fc > {file}", file)

    def acci_ops(self) -> tuple[Row, dict]:
        env = dict(
            self.env,
            ACCI_DATABASE_URL=self.pg.url(self.dbname),
            ACCI_BACKUP_URL=f"s3://{BUCKET}/acci",
            ACCI_BACKUP_START_DATE="2020-01-01",
            ACCI_PG_BIN=self.pg_bin,  # the same pg_dump binary as the anchors
        )
        for name in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE"):
            env.pop(name)  # acci_ops must get everything from its URL
        partition = (date.today() - timedelta(days=1)).isoformat()
        run = timed([sys.executable, "-c", DAGSTER_CHILD, partition], env, "acci_ops")
        meta = json.loads(run.stdout.strip().splitlines()[-1])
        stored = self.object_size(f"acci/{meta['object_key']}")
        assert stored == meta["stored_bytes"], (stored, meta["stored_bytes"])
        row = Row("4 acci_ops: Dagster job nightly_backup", run.seconds, run.cpu_seconds, stored, run.peak_rss_kb)
        return row, meta

    def run(self, variants: list[str]) -> tuple[list[Row], dict]:
        log(f"  warm-up: {self.floor().seconds:.1f} s (floor, untimed, fills the page cache)")
        rows, meta = [], {}
        for variant in variants:
            blocks = self.server_blocks()
            if variant == "acci_ops":
                row, meta = self.acci_ops()
            else:
                row = getattr(self, variant)()
            row.server_blocks = self.server_blocks() - blocks
            self.empty_bucket()
            log(f"  {row.variant}: {row.seconds:.1f} s")
            rows.append(row)
        return rows, meta


def build_database(pg: LocalPostgres, dbname: str, pgbench_scale: int, text_rows: int) -> None:
    """pgbench tables plus a table of random md5 text; a kept cluster's finished build is reused."""
    done = "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{}'"
    if pg.psql(done.format(dbname)) == "benchmark data complete":
        log(f"reusing database {dbname} from a kept cluster")
        return
    log(f"building {dbname}: pgbench -i -s {pgbench_scale} plus {text_rows:,} rows of random text ...")
    started = time.monotonic()
    pg.psql(f"DROP DATABASE IF EXISTS {dbname}")
    pg.psql(f"CREATE DATABASE {dbname}")
    subprocess.run(["pgbench", "-i", "-I", "dtGvp", "-s", str(pgbench_scale), "-h", "127.0.0.1",
                    "-p", str(pg.port), "-U", "postgres", dbname], check=True, capture_output=True)
    pg.psql("CREATE TABLE bench_text AS SELECT g AS id, "
            "md5(random()::text) || ' ' || md5(random()::text) || ' ' || md5(random()::text) AS body "
            f"FROM generate_series(1, {text_rows}) g", dbname)
    pg.psql("ALTER TABLE bench_text ADD PRIMARY KEY (id)", dbname)
    pg.psql("VACUUM ANALYZE bench_text", dbname)
    pg.psql("CHECKPOINT")
    pg.psql(f"COMMENT ON DATABASE {dbname} IS 'benchmark data complete'")
    log(f"  built in {time.monotonic() - started:.0f} s")


def database_mb(pg: LocalPostgres, dbname: str) -> float:
    return int(pg.psql(f"SELECT pg_database_size('{dbname}')")) / MB


def print_table(title: str, rows: list[Row], meta: dict) -> None:
    floor, by_hand = rows[0], rows[-1]
    log("")
    log(title)
    log(f"{'variant':<52} {'seconds':>8} {'x floor':>8} {'x by hand':>9} {'stored MB':>10} {'peak RSS MB':>12} "
        f"{'client CPU s':>13} {'server blocks':>14} {'x floor':>8}")
    for row in rows:
        stored = f"{row.stored_bytes / MB:.1f}" if row.stored_bytes is not None else "-"
        log(f"{row.variant:<52} {row.seconds:>8.2f} {row.seconds / floor.seconds:>8.2f} "
            f"{row.seconds / by_hand.seconds:>9.2f} {stored:>10} {row.peak_rss_kb / 1024:>12.0f} "
            f"{row.cpu_seconds:>13.1f} {row.server_blocks:>14,} "
            f"{row.server_blocks / max(floor.server_blocks, 1):>8.3f}")
    if meta:
        engine = meta["duration_seconds"]
        log(f"{'  of which run_backup itself (run metadata)':<52} {engine:>8.2f} {engine / floor.seconds:>8.2f} "
            f"{engine / by_hand.seconds:>9.2f}")
        log(f"  acci_ops: {meta['dump_bytes'] / MB:.0f} MB custom-format dump stored as "
            f"{meta['stored_bytes'] / MB:.1f} MB (zstd ratio {meta['compression_ratio']}), "
            f"{meta['tables']} tables, {meta['total_rows']:,} rows counted")


def check(label: str, ok: bool, value: str) -> bool:
    log(f"{'PASS' if ok else 'FAIL'}  {label:<58} {value}")
    return ok


def evaluate(results: dict[str, tuple[list[Row], dict]]) -> bool:
    """The issue's targets, judged on the whole Dagster run; run_backup alone is shown as info."""
    log("")
    log(f"Targets (acci_ops = the whole Dagster run): within {MAX_RATIO_TO_FLOOR}x of the floor, at least "
        f"{MIN_SPEEDUP_OVER_GUIDE}x faster than the guide's pipeline, peak RSS under {MAX_RSS_MB} MB at every size")
    ok = True
    for size, (rows, meta) in results.items():
        floor, guide, _, acci, by_hand = rows
        ratio = acci.seconds / floor.seconds
        speedup = guide.seconds / acci.seconds
        rss_mb = acci.peak_rss_kb / 1024
        ok &= check(f"{size}: acci_ops / floor <= {MAX_RATIO_TO_FLOOR}", ratio <= MAX_RATIO_TO_FLOOR, f"{ratio:.2f}x")
        ok &= check(f"{size}: guide / acci_ops >= {MIN_SPEEDUP_OVER_GUIDE}", speedup >= MIN_SPEEDUP_OVER_GUIDE,
                    f"{speedup:.2f}x")
        ok &= check(f"{size}: acci_ops peak RSS < {MAX_RSS_MB} MB", rss_mb < MAX_RSS_MB, f"{rss_mb:.0f} MB")
        engine = meta["duration_seconds"]
        ok &= check(f"{size}: run_backup / by hand <= {MAX_RATIO_TO_BY_HAND}", engine / by_hand.seconds
                    <= MAX_RATIO_TO_BY_HAND, f"{engine / by_hand.seconds:.2f}x")
        blocks = acci.server_blocks / max(floor.server_blocks, 1)
        ok &= check(f"{size}: acci_ops server blocks / pg_dump's <= {MAX_BLOCKS_RATIO}", blocks <= MAX_BLOCKS_RATIO,
                    f"{blocks:.3f}x ({acci.server_blocks:,} / {floor.server_blocks:,})")
        log(f"info  {size}: run_backup alone (no Dagster start-up) is {engine / floor.seconds:.2f}x the floor, "
            f"guide / run_backup {guide.seconds / engine:.2f}x")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale-factor", type=float, default=1.0,
                        help="database size relative to ~1 GB (pgbench -s 50 + 3M text rows); default 1.0")
    parser.add_argument("--skip-large", action="store_true", help="skip the second pass at 3x the size")
    parser.add_argument("--keep", action="store_true",
                        help=f"keep the cluster's data in {WORK.relative_to(ROOT)} (stopped) for the next run")
    args = parser.parse_args()

    for tool in ("pgbench", "psql", "/usr/bin/time"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install -y postgresql-15 time")
    WORK.mkdir(parents=True, exist_ok=True)
    pg = LocalPostgres(WORK / "pg", free_port())
    moto = None
    try:
        pg.start()
        moto = start_moto(WORK / "moto.log")
        scale = max(1, round(50 * args.scale_factor))
        rows = max(1000, round(3_000_000 * args.scale_factor))
        passes = [("base", f"bench_s{scale}", scale, rows)]
        if not args.skip_large:
            passes.append(("3x", f"bench_s{scale * 3}", scale * 3, rows * 3))
        for _, dbname, pgbench_scale, text_rows in passes:
            build_database(pg, dbname, pgbench_scale, text_rows)

        results: dict[str, tuple[list[Row], dict]] = {}
        log("")
        log(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; PostgreSQL and pg_dump "
            f"from {server_bin_dir()}; S3: moto_server at {moto.endpoint}")
        for label, dbname, pgbench_scale, text_rows in passes:
            size = database_mb(pg, dbname)
            bench = Bench(pg, dbname, moto.endpoint)
            if label == "base":
                bench.s3.create_bucket(Bucket=BUCKET)
            log("")
            log(f"pass {label}: database {dbname}, {size:,.0f} MB (pgbench -s {pgbench_scale} + {text_rows:,} "
                f"text rows); load average {os.getloadavg()[0]:.2f}")
            rows_out, meta = bench.run(["floor", "guide", "custom", "acci_ops", "by_hand"])
            results[f"{label} ({size:,.0f} MB)"] = (rows_out, meta)
            print_table(f"Results, {label} pass: {dbname}, {size:,.0f} MB database", rows_out, meta)
        ok = evaluate(results)
        log("")
        log("peak RSS is the largest single process of the variant (/usr/bin/time -v); for acci_ops that is the "
            "Python process running Dagster, for the anchors usually the upload's Python process")
        return 0 if ok else 1
    finally:
        if moto:
            moto.stop()
        pg.stop()
        if args.keep:
            log(f"kept the cluster's data in {pg.data_dir} (stopped)")
        else:
            shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
