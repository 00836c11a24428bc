"""Error types whose message is one readable line naming the cause.

Every failure that reaches an operator (in the Dagster UI, an alert, a log) goes through one of
these, so the message is written for a tired person at 3 a.m. and never carries a secret.
"""

from __future__ import annotations


class AcciOpsError(Exception):
    """A failure with a one-line, secret-free explanation."""

    def __init__(self, message: str) -> None:
        # Collapse to a single line: multi-line tool output belongs in the logs, not the cause.
        one_line = " ".join(str(message).split())
        super().__init__(one_line)


class ConfigError(AcciOpsError):
    """Configuration is missing or malformed; retrying will not help."""


class BackupError(AcciOpsError):
    """The backup itself failed (pg_dump, the database, or the store refused)."""


class TransientError(AcciOpsError):
    """A failure worth retrying with backoff (throttling, dropped connection, 5xx)."""
