"""Real servers for the tests: PostgreSQL 15 and moto's S3 server over HTTP.

No stand-ins here: a missing binary fails the session with the package to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from acci_ops.lib.localpg import LocalPostgres, free_port, load_sample_data

# A password distinctive enough that a grep over logs, argv, metadata and errors is meaningful.
DB_PASSWORD = "Tr0ub4dor-zq93-SECRET"
DB_USER = "acci"
DB_NAME = "acci"


def require(binary: str, package: str) -> str:
    found = shutil.which(binary)
    if not found:
        raise RuntimeError(f"{binary} is missing: install it with `{package}` (./run test does this)")
    return found


@dataclass
class PgServer:
    pg: LocalPostgres

    def url(self, dbname: str = DB_NAME, user: str = DB_USER, password: str | None = DB_PASSWORD) -> str:
        return self.pg.url(dbname, user, password)

    @property
    def admin_url(self) -> str:
        return self.pg.url("postgres")


def start_postgres(base: Path) -> PgServer:
    require("psql", "apt-get install -y postgresql-15")
    pg = LocalPostgres(base, free_port()).start()
    pg.psql(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'")
    pg.psql(f"GRANT pg_read_all_data TO {DB_USER}")
    load_sample_data(pg, DB_NAME)
    return PgServer(pg)


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_moto(log_path: Path) -> S3Server:
    port = free_port()
    moto = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    if not os.path.exists(moto):
        raise RuntimeError("moto_server is missing: pip install 'moto[server]' (./run test does this)")
    log = open(log_path, "wb")
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            return S3Server(endpoint, proc)
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}; see {log_path}") from None
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"moto_server did not answer on {endpoint} within 30 s; see {log_path}")
