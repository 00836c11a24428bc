"""Run inside the acci_ops image (``python -m acci_ops.lib.ops_image.selfcheck``): does it hold what
acci_ops's runs call, and does the code location load?

The image's smoke check (``smoke.py``) runs this with no network, no secrets and a read-only root;
it prints one JSON object (what was found) and exits 1 with one line naming the first problem.
Nothing here imports Dagster: the code location is loaded by ``dagster definitions validate``, as
the code server would load it.
"""

from __future__ import annotations

import json
import os  # getuid only
import re
import subprocess
import sys
from collections.abc import Sequence

PG_TOOLS = ("pg_dump", "pg_restore", "pg_amcheck")
MIN_PG_MAJOR = 15


def _version(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise SystemExit(f"{argv[0]} is not in the image") from None
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return (done.stdout or done.stderr).strip().splitlines()[0]


def check(module: str = "acci_ops.definitions") -> dict[str, object]:
    """What the image holds; SystemExit with the first problem."""
    found: dict[str, object] = {"python": sys.version.split()[0], "uid": os.getuid()}
    if os.getuid() == 0:
        raise SystemExit("the image runs as root (uid 0)")
    for tool in PG_TOOLS:
        line = _version([tool, "--version"])
        match = re.search(r"\b(\d+)(?:\.\d+)+", line)
        if not match or int(match.group(1)) < MIN_PG_MAJOR:
            raise SystemExit(f"{tool} is {line!r}; acci_ops needs PostgreSQL {MIN_PG_MAJOR} or newer client tools")
        found[tool] = line
    found["zstd"] = _version(["zstd", "--version"])
    found["helm"] = _version(["helm", "version", "--short"])
    # The container's own environment (the smoke test sets HOME, DAGSTER_HOME and NO_COLOR; nothing else).
    done = subprocess.run(["dagster", "definitions", "validate", "-m", module], capture_output=True, text=True,
                          timeout=300, check=False)
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        # The exception's own line (the last "SomeError: ..." of the traceback) says why, not the summary.
        errors = [line for line in lines if re.match(r"^[A-Za-z_.]+(Error|Exception)\b", line)]
        raise SystemExit(f"the code location does not load: {(errors or lines or ['no output'])[-1]}")
    found["definitions"] = "valid"
    return found


def main() -> int:
    try:
        print(json.dumps(check()), flush=True)
    except SystemExit as exc:
        print(f"selfcheck failed: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
