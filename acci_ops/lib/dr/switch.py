"""Disaster recovery's data step without touching production until the very end.

``pg_restore --clean`` into the live database drops objects one by one and leaves it half-dropped
when anything fails midway. Instead the backup is restored into a new database next to the live
one (``<db>_dr_<time>``, same server, same encoding and locale), verified against the manifest,
and only then swapped in on a maintenance connection: new connections to the live database are
refused, its sessions ended, and both renames (``<db>`` -> ``<db>_before_dr_<time>``, new ->
``<db>``) run in ONE transaction, so either both happen or neither does. The previous database
is kept for forensics until an operator drops it. Anything failing before the swap drops only
the new database. The server needs room for a second copy of the database meanwhile.

Renaming needs the role to own the live database (or be a member of its owner role) and to
have CREATEDB (or be superuser); this is checked before anything is touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from acci_ops.lib.backup.manifest import BackupManifest
from acci_ops.lib.backup.restore import compare_contents, read_contents
from acci_ops.lib.core.errors import BackupError, ConfigError
from acci_ops.lib.postgres.connect import connect, explain_pg_error
from acci_ops.lib.postgres.urls import DatabaseTarget

Log = Callable[[str], None]
NAME_LIMIT = 63  # PostgreSQL's NAMEDATALEN - 1, in bytes


class ServerUnreachable(BackupError):
    """The database server did not accept a connection (it may be the infrastructure step's to bring up)."""


@dataclass(frozen=True)
class SwitchPlan:
    """The three names of one recovery: the live database, the new copy, and what the live one becomes."""

    live: str
    new: str
    old: str

    @classmethod
    def for_database(cls, dbname: str, now: datetime | None = None) -> SwitchPlan:
        stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dt%H%M%S")
        plan = cls(dbname, f"{dbname}_dr_{stamp}", f"{dbname}_before_dr_{stamp}")
        if len(plan.old.encode()) > NAME_LIMIT:
            raise ConfigError(f"database name {dbname!r} is too long for the DR names ({plan.old} exceeds "
                              f"PostgreSQL's {NAME_LIMIT} bytes); nothing was touched")
        return plan


def _maintenance(target: DatabaseTarget) -> DatabaseTarget:
    """The server's maintenance database: the live one cannot be renamed from inside itself."""
    return target.with_dbname("template1" if target.dbname == "postgres" else "postgres")


def _admin(target: DatabaseTarget, purpose: str) -> psycopg.Connection:
    try:
        conn = connect(_maintenance(target), purpose=purpose)
    except BackupError as exc:
        raise ServerUnreachable(str(exc)) from None
    conn.autocommit = True
    return conn


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def preflight(target: DatabaseTarget, plan: SwitchPlan, log: Log = print) -> None:
    """Refuse, before anything is touched, a role that could restore but not switch; warn about
    copies left by recoveries that were killed before their own cleanup."""
    with _admin(target, "check the DR role's privileges") as conn:
        role, superuser, createdb = conn.execute(
            "SELECT rolname, rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user").fetchone()
        row = conn.execute("SELECT pg_has_role(current_user, datdba, 'MEMBER') FROM pg_database WHERE datname = %s",
                           (plan.live,)).fetchone()
        problems = []
        if not (superuser or createdb):
            problems.append("lacks CREATEDB")
        if row is not None and not (superuser or row[0]):
            problems.append(f"does not own {plan.live}")
        if problems:
            raise ConfigError(f"role {role} cannot restore {plan.live} next to the live database and switch: it "
                              f"{' and '.join(problems)} (grant CREATEDB and make it the owner, or use a superuser); "
                              "nothing was touched")
        taken = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname IN (%s, %s)",
                                            (plan.new, plan.old)).fetchall()]
        if taken:
            raise ConfigError(f"database {taken[0]} already exists (another recovery this second?); launch again; "
                              "nothing was touched")
        pattern = plan.live.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "\\_dr\\_%"
        leftovers = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                                                (pattern,)).fetchall()]
        if leftovers:
            log(f"left by an interrupted recovery (safe to drop once no recovery runs): {', '.join(leftovers)}")


def create_beside(target: DatabaseTarget, plan: SwitchPlan) -> None:
    """The new database, from template0, with the live one's encoding and locale (indexes on text
    depend on the collation); a fresh server without the live database gets the defaults."""
    with _admin(target, "create the recovery database") as conn:
        props = conn.execute("SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
                             "WHERE datname = %s", (plan.live,)).fetchone()
        query = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(_ident(plan.new))
        if props:
            query += sql.SQL(" ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(*map(sql.Literal, props))
        try:
            conn.execute(query)
        except psycopg.Error as exc:
            raise BackupError(f"cannot create {plan.new} next to {plan.live}: {explain_pg_error(exc)}; "
                              "nothing was touched") from None


def drop_new(target: DatabaseTarget, plan: SwitchPlan) -> None:
    """Remove the recovery's own copy (never the live or the kept database)."""
    with _admin(target, "drop the unfinished recovery database") as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(_ident(plan.new)))


def verify_against_manifest(target: DatabaseTarget, manifest: BackupManifest) -> str:
    """Exact row counts and the set of objects of the restored copy equal the manifest's."""
    counts, objects = read_contents(target)
    try:
        compare_contents(manifest, counts, objects)
    except BackupError as exc:
        raise BackupError(f"{target.dbname} does not match the manifest: {exc}") from None
    return f"{len(counts)} tables, {sum(counts.values())} rows and all objects verified against the manifest"


def _copy_owner_and_grants(conn: psycopg.Connection, plan: SwitchPlan) -> None:
    """The restored copy gets the live database's owner and database-level GRANTs (CONNECT, ...)."""
    owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                         (plan.live,)).fetchone()[0]
    conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(_ident(plan.new), _ident(owner)))
    grants = conn.execute(
        "SELECT a.grantee, coalesce(pg_get_userbyid(NULLIF(a.grantee, 0)), ''), a.privilege_type, a.is_grantable "
        "FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s", (plan.live,)).fetchall()
    if not grants:
        return  # NULL acl: the defaults, which the new database has too
    conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(_ident(plan.new)))
    for grantee, name, privilege, grantable in grants:
        if name == owner:
            continue
        who = sql.SQL("PUBLIC") if grantee == 0 else _ident(name)
        conn.execute(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
            sql.SQL(privilege), _ident(plan.new), who, sql.SQL(" WITH GRANT OPTION" if grantable else "")))


def _end_sessions(conn: psycopg.Connection, dbname: str, wait_seconds: float) -> int:
    ended = 0
    deadline = time.monotonic() + wait_seconds
    while True:
        pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s "
                                           "AND pid <> pg_backend_pid()", (dbname,)).fetchall()]
        if not pids:
            return ended
        if time.monotonic() > deadline:
            raise BackupError(f"{len(pids)} sessions on {dbname} could not be ended (this role may end only its "
                              "own sessions: grant it pg_signal_backend); nothing was switched")
        for pid in pids:
            try:
                if conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]:
                    ended += 1
            except psycopg.errors.InsufficientPrivilege:
                pass
        time.sleep(0.1)


def _allow_connections(conn: psycopg.Connection, dbname: str, allow: bool) -> None:
    conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
        _ident(dbname), sql.SQL("true" if allow else "false")))


def switch(target: DatabaseTarget, plan: SwitchPlan, *, session_wait: float = 15, log: Log = print) -> str:
    """Swap the verified copy in; return the kept old database's name ('' when there was no live one).

    New connections to the live database are refused first, its sessions ended, then both renames
    run in one transaction: if the second fails the first is undone with it, and production is
    as it was (connections allowed again)."""
    with _admin(target, "switch the recovered database in") as conn:
        row = conn.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (plan.live,)).fetchone()
        try:
            if row is None:
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(_ident(plan.new), _ident(plan.live)))
                return ""
            _copy_owner_and_grants(conn, plan)
        except psycopg.Error as exc:
            raise BackupError(f"cannot prepare {plan.new} for the switch: {explain_pg_error(exc)}; "
                              "nothing was switched") from None
        allowed = bool(row[0])
        renamed = False
        try:
            if allowed:
                _allow_connections(conn, plan.live, False)
            ended = _end_sessions(conn, plan.live, session_wait)
            with conn.transaction():
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(_ident(plan.live), _ident(plan.old)))
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(_ident(plan.new), _ident(plan.live)))
            renamed = True
        except psycopg.Error as exc:
            raise BackupError(f"cannot switch {plan.new} in for {plan.live}: {explain_pg_error(exc)}; "
                              "nothing was switched") from None
        finally:
            if allowed:
                # The kept database stays reachable for forensics; on failure the live one is reopened.
                reopen = plan.old if renamed else plan.live
                try:
                    _allow_connections(conn, reopen, True)
                except psycopg.Error as exc:
                    log(f"could not allow connections to {reopen} again ({explain_pg_error(exc)}); run "
                        f'ALTER DATABASE "{reopen}" WITH ALLOW_CONNECTIONS true')
    log(f"switched: {plan.live} is the restored copy, the previous database is kept as {plan.old} "
        f"({ended} sessions ended)")
    return plan.old
