"""The versions of ACCI Framework: one dynamic partition per release (and per non-release build an
operator asks for), shared by image builds and, next, releases."""

from __future__ import annotations

import re

import dagster as dg

ACCI_VERSIONS = dg.DynamicPartitionsDefinition(name="acci_versions")

# A key Dagster and a registry tag both accept: the version of a release tag (1.2.0, 2.0.0-rc.1), or a
# branch/commit an operator adds for a non-release build. Tags allow [A-Za-z0-9_.-], 128 characters.
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]{0,127}$")


def check_partition_key(key: str) -> str | None:
    """Why ``key`` cannot be built, or None: a hostile or mistyped partition key added in the UI must
    be refused before it reaches git or a registry."""
    if not _KEY.match(key) or ".." in key or key.endswith((".lock", "/")):
        return (f"partition {key!r} is not a version, branch or commit: use letters, digits and . _ - + / "
                "(e.g. 1.2.0, main or a commit id)")
    return None
