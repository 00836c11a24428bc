"""Throwaway databases on a scratch PostgreSQL server, named so only ours are ever dropped."""

from __future__ import annotations

import re
import secrets
import socket
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from acci_ops.lib.dburl import DatabaseTarget
from acci_ops.lib.errors import BackupError, ConfigError
from acci_ops.lib.pgdump import connect, explain_pg_error

SCRATCH_PREFIX = "acci_scratch_"
_SCRATCH_NAME = re.compile(r"^acci_scratch_(\d{8}t\d{6})_([0-9a-f]{8})$")


def new_scratch_name(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dt%H%M%S")
    return f"{SCRATCH_PREFIX}{stamp}_{secrets.token_hex(4)}"


def check_scratch_name(name: str) -> datetime:
    """Refuse any name acci_ops did not generate; return when it was created."""
    match = _SCRATCH_NAME.match(name)
    if not match:
        raise ConfigError(f"refusing to touch database {name!r}: "
                          f"scratch databases are named {SCRATCH_PREFIX}<time>_<id>")
    return datetime.strptime(match.group(1), "%Y%m%dt%H%M%S").replace(tzinfo=UTC)


def _address(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def refuse_same_database(scratch: DatabaseTarget, source: DatabaseTarget | None) -> None:
    """The scratch server may be the production server, but never the production database."""
    if source is None:
        return
    same_server = (_address(scratch.host), scratch.port) == (_address(source.host), source.port)
    if same_server and scratch.dbname == source.dbname:
        raise ConfigError(
            f"scratch database URL points at the backed-up database {source.describe()}; "
            "use a maintenance database (e.g. postgres) or another server"
        )


def _admin(scratch: DatabaseTarget, purpose: str) -> psycopg.Connection:
    try:
        conn = connect(scratch, purpose=purpose)
    except BackupError as exc:
        message = str(exc).replace("cannot connect to PostgreSQL", "scratch server is unreachable:", 1)
        raise BackupError(message) from None
    conn.autocommit = True
    return conn


def create_scratch_database(scratch: DatabaseTarget, name: str) -> None:
    check_scratch_name(name)
    with _admin(scratch, "create a scratch database") as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        except psycopg.errors.InsufficientPrivilege:
            raise BackupError(f"role {scratch.user or '(default)'} on scratch server {scratch.host}:{scratch.port} "
                              "lacks CREATEDB; grant it (ALTER ROLE ... CREATEDB)") from None
        except psycopg.Error as exc:
            raise BackupError(f"cannot create scratch database {name}: {explain_pg_error(exc)}") from None


def drop_scratch_database(scratch: DatabaseTarget, name: str) -> None:
    check_scratch_name(name)
    with _admin(scratch, "drop a scratch database") as conn:
        try:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise BackupError(f"cannot drop scratch database {name}: {explain_pg_error(exc)}") from None


def list_scratch_databases(scratch: DatabaseTarget) -> list[str]:
    with _admin(scratch, "list scratch databases") as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'acci\\_scratch\\_%' ORDER BY 1")
        return [row[0] for row in rows.fetchall() if _SCRATCH_NAME.match(row[0])]


def drop_stale_scratch_databases(scratch: DatabaseTarget, older_than: timedelta = timedelta(days=1),
                                 now: datetime | None = None) -> list[str]:
    """Leftovers of validations that were killed before their own cleanup ran."""
    now = now or datetime.now(UTC)
    dropped = []
    for name in list_scratch_databases(scratch):
        if now - check_scratch_name(name) > older_than:
            drop_scratch_database(scratch, name)
            dropped.append(name)
    return dropped
