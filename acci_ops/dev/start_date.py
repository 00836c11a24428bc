"""Print the first partition day of a dev install, recording it once: ``python -m acci_ops.dev.start_date FILE``.

``./run dev`` exports the result as ACCI_BACKUP_START_DATE, so a fresh dev install shows one
partition to materialize (yesterday) rather than every day since 2026-01-01 as missing, and the
date stays the same across restarts. A dev helper, not a setting: a deployment sets the variable
once, by hand (acci_ops.settings.start_date_from says why it is never "today").
"""

from __future__ import annotations

import os
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from acci_ops.lib.core.errors import ConfigError
from acci_ops.settings import parse_start_date


def record_start_date(path: Path, today: date) -> date:
    """The date recorded in ``path``; the first call records the day before ``today`` (a daily
    partition exists once its day has ended, so the first partition is ready to materialize at
    once, instead of a year of "missing" ones). Later calls return the recorded date unchanged, so
    restarts and every process agree. Written atomically: a crash leaves the file whole or absent."""
    try:
        return parse_start_date(path.read_text().strip(), f"{path} holds")
    except FileNotFoundError:
        pass
    start = today - timedelta(days=1)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(start.isoformat() + "\n")
    os.replace(partial, path)
    return start


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m acci_ops.dev.start_date FILE [TIMEZONE]", file=sys.stderr)
        return 2
    try:
        today = datetime.now(ZoneInfo(args[1] if len(args) == 2 and args[1] else "UTC")).date()
        print(record_start_date(Path(args[0]), today).isoformat())
    except (ConfigError, OSError, ValueError, KeyError) as exc:
        print(f"acci_ops: cannot record the first partition day: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
