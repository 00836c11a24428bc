"""Shared test helpers: stock-tool restores and process lookups."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import psycopg

from acci_ops.lib.postgres.catalog import exact_row_counts
from acci_ops_tests.servers import PgServer


def restore_with_stock_tools(server: PgServer, dump_file: Path) -> str:
    """`zstd -dc FILE | pg_restore -d NEWDB`, exactly what the README tells ops to do by hand."""
    dbname = f"restore_{uuid.uuid4().hex[:10]}"
    server.pg.psql(f"CREATE DATABASE {dbname}")
    zstd = subprocess.Popen(["zstd", "-dc", str(dump_file)], stdout=subprocess.PIPE)
    restore = subprocess.run(["pg_restore", "--exit-on-error", "--no-owner", "-h", "127.0.0.1",
                              "-p", str(server.pg.port), "-U", "postgres", "-d", dbname],
                             stdin=zstd.stdout, capture_output=True, text=True)
    zstd.stdout.close()
    assert zstd.wait() == 0, "zstd could not decompress the backup object"
    assert restore.returncode == 0, restore.stderr
    return dbname


def row_counts(server: PgServer, dbname: str) -> dict[str, int]:
    with psycopg.connect(server.pg.url(dbname)) as conn:
        return exact_row_counts(conn)


def child_pids(name: str) -> list[int]:
    """PIDs of this process's children whose executable is ``name`` (to kill pg_dump for real)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and cmdline and os.path.basename(cmdline[0].decode()) == name:
            found.append(int(entry))
    return found


class TriggerAfter:
    """Wraps a stream; after ``after`` bytes it runs ``action`` once (kill pg_dump, stop the server)."""

    def __init__(self, raw, after: int, action) -> None:
        self.raw, self.after, self.action, self.seen, self.fired = raw, after, action, 0, False

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.seen += len(data)
        if not self.fired and self.seen >= self.after:
            self.fired = True
            self.action()
        return data

    def readable(self) -> bool:
        return True


def kill_pg_dump() -> None:
    pids = child_pids("pg_dump")
    assert pids, "pg_dump was not running when the test tried to kill it"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def fake_pg_dump(directory: Path, version_line: str, real: str | None = None, argv_log: Path | None = None) -> Path:
    """A pg_dump stand-in that reports ``version_line`` and, if ``real`` is given, records its argv
    and environment's PGPASSWORD presence, then execs the real pg_dump."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "pg_dump"
    body = ["#!/bin/sh", 'if [ "$1" = "--version" ]; then echo "' + version_line + '"; exit 0; fi']
    if argv_log:
        body.append(f'echo "argv: $*" >> {argv_log}')
        body.append(f'[ -n "$PGPASSWORD" ] && echo "env: PGPASSWORD set" >> {argv_log}')
    body.append(f'exec {real} "$@"' if real else "exit 1")
    script.write_text("\n".join(body) + "\n")
    script.chmod(0o755)
    return script
