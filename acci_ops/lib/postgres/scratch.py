"""Throwaway databases on a scratch PostgreSQL server, named so only ours are ever dropped."""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from acci_ops.lib.core.errors import BackupError, ConfigError
from acci_ops.lib.postgres.connect import connect, explain_pg_error
from acci_ops.lib.postgres.urls import DatabaseTarget

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


def _server_identity(target: DatabaseTarget) -> tuple[int, str] | None:
    """What the server says it is: its ``system_identifier`` (fixed at initdb, the same whatever
    name or address reaches it) and the database the connection landed in. None if unreachable."""
    try:
        with psycopg.connect(**target.connect_kwargs(connect_timeout=5), application_name="acci_ops") as conn:
            sysid, dbname = conn.execute(
                "SELECT system_identifier, current_database() FROM pg_control_system()").fetchone()
            return int(sysid), str(dbname)
    except psycopg.Error:
        return None


def _addresses(target: DatabaseTarget) -> set[str]:
    """Where a target's connections really go, for when a server cannot be asked: ``hostaddr``
    wins over the host name (as in libpq), names are resolved, and loopback and the unspecified
    address (0.0.0.0, ::, which reach this machine) all count as "local"."""
    options = dict(target.options)
    written = options.get("hostaddr") or target.host
    found: set[str] = set()
    for host in (h.strip() for h in written.split(",") if h.strip()):
        if host.startswith("/"):
            found.add("local")
            continue
        try:
            infos = socket.getaddrinfo(host, target.port, proto=socket.IPPROTO_TCP)
        except OSError:
            found.add(host.lower())
            continue
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            found.add("local" if address.is_loopback or address.is_unspecified else str(address))
    return found


def refuse_same_database(scratch: DatabaseTarget, source: DatabaseTarget | None) -> None:
    """The scratch server may be the production server, but never the production database.

    Host strings cannot tell (``localhost``, ``0.0.0.0``, ``?hostaddr=`` and DNS aliases all reach
    the same server), so both servers are asked for their identity. If one cannot be asked (the
    backed-up server unreachable from here), resolved addresses, port and database name decide."""
    if source is None:
        return
    mine = _server_identity(scratch)
    theirs = _server_identity(source) if mine else None
    if mine and theirs:
        same = mine == theirs
    else:
        same = (scratch.port == source.port and scratch.dbname == source.dbname
                and bool(_addresses(scratch) & _addresses(source)))
    if same:
        raise ConfigError(
            f"scratch database URL points at the backed-up database {source.describe()}; "
            "use a maintenance database (e.g. postgres) or another server"
        )


RISKY_ROLES = ("pg_execute_server_program", "pg_write_server_files", "pg_read_server_files")
_ACCEPT = "use a role with only LOGIN CREATEDB, or set ACCI_SCRATCH_ALLOW_SUPERUSER=true to accept the risk"


def _check_role(conn: psycopg.Connection, allow_superuser: bool) -> None:
    row = conn.execute(
        "SELECT current_user, r.rolsuper, r.rolcreaterole, ARRAY(SELECT b.rolname FROM pg_roles b "
        "WHERE b.rolname = ANY(%s) AND pg_has_role(current_user, b.oid, 'MEMBER') ORDER BY b.rolname) "
        "FROM pg_roles r WHERE r.rolname = current_user", (list(RISKY_ROLES),)).fetchone()
    role, superuser, createrole, memberships = row
    if allow_superuser:
        return
    if superuser:
        raise ConfigError(f"scratch role {role} is a superuser: a restored archive could run shell commands "
                          f"as it; {_ACCEPT}")
    if memberships:
        raise ConfigError(f"scratch role {role} is a member of {', '.join(memberships)}: a restored archive could "
                          f"run shell commands or read and write server files as it; {_ACCEPT}")
    if createrole:
        raise ConfigError(f"scratch role {role} has CREATEROLE: a restored archive could grant it "
                          f"pg_execute_server_program and run shell commands; {_ACCEPT}")


def check_scratch_role(scratch: DatabaseTarget, *, allow_superuser: bool = False) -> None:
    """Refuse a scratch role that a restored archive could use to reach the server's OS.

    Validation and drills restore archives from the bucket, and a restore runs the archive's code
    (functions called by CHECK constraints, defaults, index expressions) as the scratch role. As a
    superuser, a member of pg_execute_server_program / pg_write_server_files /
    pg_read_server_files, or a CREATEROLE role (which can grant itself those), that code can run
    ``COPY ... TO PROGRAM``: shell commands on the server. ``allow_superuser`` accepts the risk."""
    with _admin(scratch, "check the scratch role") as conn:
        _check_role(conn, allow_superuser)


def _admin(scratch: DatabaseTarget, purpose: str) -> psycopg.Connection:
    try:
        conn = connect(scratch, purpose=purpose)
    except BackupError as exc:
        message = str(exc).replace("cannot connect to PostgreSQL", "scratch server is unreachable:", 1)
        raise BackupError(message) from None
    conn.autocommit = True
    return conn


def create_scratch_database(scratch: DatabaseTarget, name: str, *, allow_superuser: bool = False) -> None:
    """Create ``name`` (one of ours) after checking the role (see ``check_scratch_role``): every
    restore into a scratch database (validation, drills) starts here.

    CONNECT is revoked from PUBLIC at once: a scratch database holds a restored production backup,
    so only its owner (the scratch role) and superusers may open it, not every other role of a
    shared scratch server."""
    check_scratch_name(name)
    with _admin(scratch, "create a scratch database") as conn:
        _check_role(conn, allow_superuser)
        try:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
            conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
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

