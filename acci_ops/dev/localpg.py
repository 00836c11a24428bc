"""A throwaway local PostgreSQL cluster: the embedded default for ``dagster dev`` and the tests.

Uses the machine's PostgreSQL server binaries (Debian ``postgresql-15``). ``initdb`` and
``pg_ctl`` refuse to run as root, so as root they run as the ``postgres`` system user via
``runuser``; clients connect over TCP on 127.0.0.1.

    python -m acci_ops.dev.localpg start DIR PORT [--sample-data DBNAME ...]
    python -m acci_ops.dev.localpg stop DIR
    python -m acci_ops.dev.localpg scratch-role DIR PORT   (prints the URL of a non-superuser CREATEDB role)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from acci_ops.lib.images import sandbox


def server_bin_dir() -> str:
    """The newest installed server's bin directory (``ACCI_PG_SERVER_BIN`` overrides)."""
    return os.environ.get("ACCI_PG_SERVER_BIN") or sandbox.server_bin_dir()


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _let_postgres_traverse(path: Path) -> None:
    """Add the search bit (o+x, never read) to ancestors so the postgres user can reach its
    data directory under a root-only temp dir (mkdtemp and pytest make them 0700)."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & 0o001:
            os.chmod(directory, mode | 0o001)


@dataclass
class LocalPostgres:
    """A cluster in ``data_dir`` listening on 127.0.0.1:``port``, superuser ``postgres``, trust auth."""

    base_dir: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    def url(self, dbname: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"postgresql://{auth}127.0.0.1:{self.port}/{dbname}"

    def start(self) -> LocalPostgres:
        bindir = server_bin_dir()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            _let_postgres_traverse(self.base_dir.parent)
            shutil.chown(self.base_dir, "postgres")
            shutil.chown(self.socket_dir, "postgres")
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(_as_owner([f"{bindir}/initdb", "-D", str(self.data_dir), "-U", "postgres",
                                      "--auth=trust", "-E", "UTF8", "--no-sync"]),
                           check=True, stdout=subprocess.DEVNULL)
            # The tests need password auth to be real; trust locally over the socket only.
            hba = self.data_dir / "pg_hba.conf"
            hba.write_text("local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
                           "host all all 127.0.0.1/32 scram-sha-256\n")
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        subprocess.run(_as_owner([f"{bindir}/pg_ctl", "-D", str(self.data_dir), "-o", options,
                                  "-l", str(self.base_dir / "server.log"), "-w", "-t", "60", "start"]),
                       check=True, stdout=subprocess.DEVNULL)
        return self

    def stop(self, mode: str = "fast") -> None:
        bindir = server_bin_dir()
        subprocess.run(_as_owner([f"{bindir}/pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop"]),
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        out = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h", "127.0.0.1", "-p",
                              str(self.port), "-U", "postgres", "-d", dbname, "-c", sql],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()


SAMPLE_SQL = """
CREATE TABLE IF NOT EXISTS tenants (id serial PRIMARY KEY, name text NOT NULL UNIQUE, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS users (id bigserial PRIMARY KEY, tenant_id int NOT NULL REFERENCES tenants(id), email text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS sessions (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), user_id bigint NOT NULL REFERENCES users(id), data jsonb NOT NULL, expires_at timestamptz NOT NULL);
CREATE INDEX IF NOT EXISTS users_tenant_idx ON users (tenant_id);
CREATE OR REPLACE VIEW active_sessions AS SELECT * FROM sessions WHERE expires_at > now();
CREATE OR REPLACE FUNCTION tenant_user_count(t int) RETURNS bigint LANGUAGE sql STABLE AS 'SELECT count(*) FROM users WHERE tenant_id = t';
INSERT INTO tenants (name) SELECT 'tenant-' || g FROM generate_series(1, {tenants}) g ON CONFLICT DO NOTHING;
INSERT INTO users (tenant_id, email) SELECT 1 + (g % {tenants}), 'user' || g || '@example.test' FROM generate_series(1, {users}) g;
INSERT INTO sessions (user_id, data, expires_at) SELECT 1 + (g % {users}), jsonb_build_object('n', g, 'pad', md5(g::text)), now() + (g % 48 - 24) * interval '1 hour' FROM generate_series(1, {sessions}) g;
"""


def load_sample_data(pg: LocalPostgres, dbname: str, *, tenants: int = 20, users: int = 2000,
                     sessions: int = 5000) -> None:
    """A small ACCI-like schema (tenants, users, sessions, a view, a function) with rows."""
    if pg.psql(f"SELECT 1 FROM pg_database WHERE datname = '{dbname}'") != "1":
        pg.psql(f'CREATE DATABASE "{dbname}"')
    if pg.psql("SELECT to_regclass('public.users') IS NOT NULL", dbname) == "t":
        return
    pg.psql(SAMPLE_SQL.format(tenants=tenants, users=users, sessions=sessions), dbname)


SCRATCH_ROLE = "acci_scratch"


def ensure_scratch_role(pg: LocalPostgres, name: str = SCRATCH_ROLE) -> str:
    """A LOGIN CREATEDB role that is not a superuser, for validation and drill restores, and the
    URL of its maintenance database. Restoring as the superuser would let a crafted archive run
    shell commands on this server (COPY ... TO PROGRAM); this role cannot.

    The password is generated once and kept in ``base_dir/<name>.password`` (0600); it goes
    to the server as a literal over the connection, never in argv."""
    import secrets as _secrets

    import psycopg
    from psycopg import sql

    secret_file = pg.base_dir / f"{name}.password"
    if not secret_file.exists():
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(_secrets.token_urlsafe(24))
    password = secret_file.read_text().strip()
    with psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(sql.SQL(verb + " ROLE {} LOGIN CREATEDB NOSUPERUSER NOCREATEROLE PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(password)))
    return pg.url("postgres", name, password)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start")
    start.add_argument("dir")
    start.add_argument("port", type=int)
    start.add_argument("--sample-data", metavar="DBNAME", action="append", default=[],
                       help="a database to create with the sample schema and rows (repeatable)")
    stop = sub.add_parser("stop")
    stop.add_argument("dir")
    role = sub.add_parser("scratch-role", help="create the non-superuser scratch role; print its URL")
    role.add_argument("dir")
    role.add_argument("port", type=int)
    role.add_argument("--name", default=SCRATCH_ROLE)
    args = parser.parse_args(argv)
    if args.command == "start":
        pg = LocalPostgres(Path(args.dir).resolve(), args.port)
        status = subprocess.run(_as_owner([f"{server_bin_dir()}/pg_ctl", "-D", str(pg.data_dir), "status"]),
                                capture_output=True) if pg.data_dir.exists() else None
        if status is None or status.returncode != 0:
            pg.start()
        for dbname in args.sample_data:
            load_sample_data(pg, dbname)
        print(pg.url(args.sample_data[0] if args.sample_data else "postgres"))
    elif args.command == "scratch-role":
        print(ensure_scratch_role(LocalPostgres(Path(args.dir).resolve(), args.port), args.name))
    else:
        LocalPostgres(Path(args.dir).resolve(), 0).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
