"""Dagster's fixed cost per nightly backup run, measured on an empty database.

Starts a throwaway PostgreSQL cluster with an empty database and backs it up to a file:// store
three ways, each in a fresh Python process so imports count:

  1. engine      run_backup() alone, no Dagster (the floor)
  2. in-process  nightly_backup via execute_in_process (what the benchmarks and tests use)
  3. executor    nightly_backup via dagster's execute_job with the job's own executor, the way a
                 run worker runs it (multiprocess by default: one child process per step)

and prints each one's wall time from process start, the time spent importing and building the
definitions, and the db_backup step's own duration, so the difference is Dagster's overhead.

    .venv/bin/python benchmarks/run_overhead.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from acci_ops.dev.localpg import LocalPostgres  # noqa: E402
from acci_ops.lib.core.net import free_port  # noqa: E402

CHILD = r"""
import json, sys, time
t0 = time.monotonic()
mode, partition = sys.argv[1], sys.argv[2]
out = {}
if mode == "engine":
    from datetime import date
    from acci_ops.lib.backup.dump import run_backup
    from acci_ops.lib.postgres.urls import parse_database_url
    from acci_ops.lib.storage.objectstore import open_store
    import os
    out["import_s"] = time.monotonic() - t0
    r = run_backup(environment="production", target=parse_database_url(os.environ["ACCI_DATABASE_URL"]),
                   store=open_store(os.environ["ACCI_BACKUP_URL"]), partition=date.fromisoformat(partition),
                   log=lambda line: None)
    out["step_s"] = r.duration_seconds
else:
    import dagster as dg
    from dagster import DagsterInstance
    from acci_ops.definitions import build_definitions
    from acci_ops.settings import load_settings
    job = build_definitions(load_settings()).resolve_job_def("nightly_backup")
    out["import_s"] = time.monotonic() - t0
    out["executor"] = job.executor_def.name
    if mode == "in_process":
        result = job.execute_in_process(partition_key=partition, instance=DagsterInstance.ephemeral())
        events = result.all_events
    else:
        with DagsterInstance.local_temp() as instance:
            from benchmarks.run_overhead import nightly_job
            with dg.execute_job(dg.reconstructable(nightly_job), instance=instance,
                                tags={"dagster/partition": partition}) as result:
                events = result.all_events
    steps = [e for e in events if e.event_type_value == "STEP_SUCCESS"]
    mats = [e for e in events if e.event_type_value == "ASSET_MATERIALIZATION"
            and e.asset_key and e.asset_key.path[-1].startswith("db_backup")]
    meta = mats[0].event_specific_data.materialization.metadata
    out["step_s"] = meta["duration_seconds"].value
    out["steps"] = len(steps)
out["total_s"] = time.monotonic() - t0
print(json.dumps(out))
"""


def nightly_job():  # noqa: ANN201 - for dagster.reconstructable in the executor mode
    """The nightly job as the run worker resolves it (reconstructable: a module-level function)."""
    from acci_ops.definitions import build_definitions
    from acci_ops.settings import load_settings

    return build_definitions(load_settings()).resolve_job_def("nightly_backup")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode (the median is reported)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="run_overhead_"))
    pg = LocalPostgres(work / "pg", free_port())
    try:
        pg.start()
        pg.psql("CREATE DATABASE empty_db")
        pg.psql("CREATE TABLE t (id int)", "empty_db")
        env = dict(os.environ, PYTHONPATH=str(ROOT), ACCI_DATABASE_URL=pg.url("empty_db"),
                   ACCI_BACKUP_URL=f"file://{work}/store", ACCI_BACKUP_START_DATE="2020-01-01",
                   DAGSTER_HOME=str(work / "dagster_home"))
        (work / "dagster_home").mkdir()
        results: dict[str, list[dict]] = {}
        for mode in ("engine", "in_process", "executor"):
            for i in range(args.repeat):
                started = time.monotonic()
                proc = subprocess.run([sys.executable, "-c", CHILD, mode, f"2026-01-{i + 1:02d}"], env=env, cwd=ROOT,
                                      capture_output=True, text=True)
                wall = time.monotonic() - started
                if proc.returncode != 0:
                    sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
                out = json.loads(proc.stdout.strip().splitlines()[-1])
                out["wall_s"] = wall
                results.setdefault(mode, []).append(out)
        print(f"{'mode':<12} {'executor':<26} {'wall s':>7} {'import+defs s':>14} {'db_backup step s':>17} "
              f"{'overhead s':>11}")
        for mode, runs in results.items():
            med = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
            print(f"{mode:<12} {med.get('executor', '-'):<26} {med['wall_s']:>7.2f} {med['import_s']:>14.2f} "
                  f"{med['step_s']:>17.2f} {med['wall_s'] - med['step_s']:>11.2f}")
        return 0
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
