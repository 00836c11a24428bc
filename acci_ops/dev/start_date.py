"""Print the first partition day of a dev install, recording it once: ``python -m acci_ops.dev.start_date FILE``.

``./run dev`` exports the result as ACCI_BACKUP_START_DATE, so a fresh dev install shows one
partition to materialize (yesterday) rather than every day since 2026-01-01 as missing, and the
date stays the same across restarts (see acci_ops.settings.record_start_date).
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from acci_ops.lib.core.errors import ConfigError
from acci_ops.settings import record_start_date


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
