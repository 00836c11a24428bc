"""The versions of ACCI Framework: one dynamic partition per release (and per non-release build an
operator asks for), shared by image builds and, next, releases."""

from __future__ import annotations

import re

import dagster as dg

from acci_ops.lib.images.source import image_tag_problem

ACCI_VERSIONS = dg.DynamicPartitionsDefinition(name="acci_versions")

# A key Dagster and git both accept: the version of a release tag (1.2.0, 2.0.0-rc.1), or a
# branch/commit an operator adds for a non-release build (ASCII only: a character class, not \w).
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+-]{0,127}")
# A key that reads as a version (1.2..., v1.2...) is pushed as a registry tag: it must be one.
_VERSION_LIKE = re.compile(r"v?[0-9]+\.[0-9]")


def check_partition_key(key: str) -> str | None:
    """Why ``key`` cannot be built, or None: a hostile or mistyped partition key added in the UI must
    be refused before it reaches git or a registry, not after a whole build."""
    if not _KEY.fullmatch(key) or ".." in key or key.endswith((".lock", "/")):
        return (f"partition {key!r} is not a version, branch or commit: use letters, digits and . _ - + / "
                "(e.g. 1.2.0, main or a commit id)")
    if _VERSION_LIKE.match(key):
        problem = image_tag_problem(key[1:] if key.startswith("v") else key)
        if problem:
            return f"partition {key!r}: {problem}"
    return None


def check_release_version(version: str) -> str | None:
    """Why a release tag's ``version`` cannot become a partition and an image tag, or None."""
    return check_partition_key(version) or image_tag_problem(version)
