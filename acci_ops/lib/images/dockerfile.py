"""What a Dockerfile's ``FROM`` lines name: the one reading of them the build, its base-image
digests and its provenance all share.

Only what the build records needs parsing: the external images (stage names and ``scratch`` are
not images), and whether a line pins ``--platform`` (such a base is pulled for that platform
only, so its absence for the others is expected, not a gap in the record). ``ARG`` defaults
declared before the first ``FROM`` and the build's own ``--build-arg`` values are substituted as
buildah does; an ``ARG X`` without a default leaves ``${X}`` as written, so an unresolved base
shows up under the name the Dockerfile gave it instead of as an empty or guessed one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_FROM_LINE = re.compile(r"^\s*FROM\s+((?:--\S+\s+)*)(\S+)(?:\s+AS\s+(\S+))?", re.IGNORECASE)
_ARG_LINE = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?", re.IGNORECASE)
_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def from_images(text: str, build_args: Mapping[str, str] | None = None) -> list[tuple[str, bool]]:
    """``(image, has --platform flag)`` for each external FROM image, first use first (a base
    named twice is listed once, flagged when any of its lines is); ``build_args`` win over the
    global ``ARG`` defaults."""
    args = dict(build_args or {})
    stages: set[str] = set()
    found: dict[str, bool] = {}
    seen_from = False
    for line in text.splitlines():
        arg = _ARG_LINE.match(line)
        if arg and not seen_from:
            if arg.group(2) is not None:  # ``ARG X`` without a default leaves ${X} as written
                args.setdefault(arg.group(1), arg.group(2).strip("'\""))
            continue
        match = _FROM_LINE.match(line)
        if not match:
            continue
        seen_from = True
        image = _VARIABLE.sub(lambda m: args.get(m.group(1), m.group(0)), match.group(2))
        flagged = "--platform" in match.group(1).lower()
        if image.lower() != "scratch" and image not in stages:
            found[image] = found.get(image, False) or flagged
        if match.group(3):
            stages.add(match.group(3))
    return list(found.items())
