"""Connecting to PostgreSQL with errors an operator can act on (one line, never the password)."""

from __future__ import annotations

import re

import psycopg

from acci_ops.lib.core.errors import BackupError
from acci_ops.lib.postgres.urls import DatabaseTarget


def connect(target: DatabaseTarget, *, connect_timeout: int = 10, purpose: str = "back up") -> psycopg.Connection:
    """Connect with a one-line, password-free explanation when it fails."""
    try:
        return psycopg.connect(**target.connect_kwargs(connect_timeout), application_name="acci_ops")
    except psycopg.OperationalError as exc:
        why = explain_pg_error(exc)
        raise BackupError(f"cannot connect to PostgreSQL {target.describe()} to {purpose}: {why}") from None


def explain_pg_error(exc: BaseException) -> str:
    """libpq's first meaningful line, with the 'connection to server at ... failed:' preamble removed."""
    lines = []
    for line in str(exc).splitlines():
        line = re.sub(r"^connection failed:\s*", "", line.strip())
        line = re.sub(r'^connection to server (at|on) "[^"]*"( \([^)]*\))?, port \d+ failed:\s*', "", line.strip())
        line = re.sub(r"^(FATAL|ERROR):\s*", "", line)
        if line and line not in lines:
            lines.append(line)
    return "; ".join(lines) or type(exc).__name__
