"""What a database holds: exact row counts and the set of schema objects.

Taken inside the backup's exported snapshot, so the counts describe exactly the rows in the dump;
read again after a restore to prove the restore is complete.
"""

from __future__ import annotations

from psycopg import Connection, sql

_USER_SCHEMAS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
    "AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'"
)
_NOT_FROM_EXTENSION = (
    "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = {catalog}::regclass "
    "AND d.objid = {oid} AND d.deptype = 'e')"
)


def _rel_query(kinds: str) -> str:
    return (
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind IN ({kinds}) AND {_USER_SCHEMAS} AND "
        + _NOT_FROM_EXTENSION.format(catalog="'pg_class'", oid="c.oid")
        + " ORDER BY 1"
    )


_QUERIES = {
    "tables": _rel_query("'r', 'p'"),
    "sequences": _rel_query("'S'"),
    "views": _rel_query("'v', 'm'"),
    "functions": (
        "SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')' "
        "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        f"WHERE {_USER_SCHEMAS} AND "
        + _NOT_FROM_EXTENSION.format(catalog="'pg_proc'", oid="p.oid")
        + " ORDER BY 1"
    ),
    "extensions": "SELECT extname FROM pg_extension ORDER BY 1",
}


def list_objects(conn: Connection) -> dict[str, list[str]]:
    """Tables, sequences, views, functions and extensions by qualified name."""
    with conn.cursor() as cur:
        return {kind: [row[0] for row in cur.execute(query).fetchall()] for kind, query in _QUERIES.items()}


def countable_tables(conn: Connection) -> list[tuple[str, str]]:
    """Plain tables (not partitioned parents, whose rows live in their partitions)."""
    query = (
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind = 'r' AND {_USER_SCHEMAS} AND "
        + _NOT_FROM_EXTENSION.format(catalog="'pg_class'", oid="c.oid")
        + " ORDER BY 1, 2"
    )
    with conn.cursor() as cur:
        return [(row[0], row[1]) for row in cur.execute(query).fetchall()]


def exact_row_counts(conn: Connection, tables: list[tuple[str, str]] | None = None) -> dict[str, int]:
    """``count(*)`` of every table, in whatever snapshot the connection's transaction holds."""
    counts: dict[str, int] = {}
    with conn.cursor() as cur:
        for schema, name in tables if tables is not None else countable_tables(conn):
            query = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
            counts[f"{schema}.{name}"] = int(cur.execute(query).fetchone()[0])
    return counts
