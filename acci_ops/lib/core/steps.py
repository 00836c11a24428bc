"""Timed, recorded steps for multi-step procedures (validation, drills, recovery).

Each step is timed and ends passed, failed (with a one-line cause) or skipped; the first failure
stops the remaining steps, while cleanup steps still run. Reports list every step so ops see
exactly how far a run got.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from acci_ops.lib.core.errors import AcciOpsError

Log = Callable[[str], None]


@dataclass
class StepResult:
    name: str
    status: str  # passed | failed | skipped
    seconds: float = 0.0
    detail: str = ""


class StepFailed(Exception):
    """A step failed: skip the remaining steps (cleanup still runs)."""


class StepRecorder:
    def __init__(self, steps: list[StepResult], log: Log, label: str = "step") -> None:
        self.steps, self.log, self.label = steps, log, label

    @contextmanager
    def step(self, name: str) -> Iterator[StepResult]:
        result = StepResult(name, "passed")
        started = time.monotonic()
        self.steps.append(result)
        self.log(f"{self.label} {name} ...")
        try:
            yield result
        except AcciOpsError as exc:
            result.status, result.detail = "failed", str(exc)
            raise StepFailed() from None
        except Exception as exc:  # noqa: BLE001 - an unexpected error still ends as a readable step
            result.status, result.detail = "failed", " ".join(f"unexpected {type(exc).__name__}: {exc}".split())
            raise StepFailed() from None
        finally:
            result.seconds = round(time.monotonic() - started, 3)
            self.log(f"{self.label} {name}: {result.status} in {result.seconds:.2f} s {result.detail}".rstrip())

    def cleanup(self, name: str, action: Callable[[StepResult], None]) -> None:
        """Run a step that must happen whatever failed before it; its own failure is recorded."""
        try:
            with self.step(name) as result:
                action(result)
        except StepFailed:
            pass

    def skip_rest(self, names: Sequence[str], reason: str) -> None:
        done = {s.name for s in self.steps}
        self.steps.extend(StepResult(n, "skipped", 0.0, reason) for n in names if n not in done)

    def first_failure(self) -> str | None:
        failed = next((s for s in self.steps if s.status == "failed"), None)
        return f"{failed.name}: {failed.detail}" if failed else None


def human_duration(seconds: float | None) -> str:
    """A duration in the unit a person reads it in (``3.2 s``, ``4.5 min``, ``26 h``): reports show
    RTO/RPO and their targets, which range from seconds (a small drill) to a day (the RPO target)."""
    if seconds is None:
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 10 else f"{hours:.0f} h"


def human_bytes(size: int | None) -> str:
    """A size in the unit a person reads it in (``512 B``, ``3.4 MiB``, ``1.2 GiB``), binary units as
    ``df -h`` and the object store consoles show them: run logs and reports print sizes from a few
    kilobytes (a test database) to hundreds of gigabytes. Plotted metadata keeps the exact integer."""
    if size is None:
        return "n/a"
    if abs(size) < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def steps_markdown(steps: Sequence[StepResult]) -> str:
    """A Markdown table of steps for the UI's metadata."""
    rows = [f"| {s.name} | {s.status} | {s.seconds:.2f} | {s.detail.replace('|', '/')} |" for s in steps]
    return "| step | status | seconds | detail |\n|---|---|---|---|\n" + "\n".join(rows)
