"""Run external tools as argv lists with explicit env and timeouts, never through a shell.

Output is streamed line by line to a callback (the Dagster compute log, in practice) and every
call is timed. Secrets travel in ``env`` only; the argv is safe to log as-is.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from acci_ops.lib.errors import AcciOpsError, ConfigError

LineSink = Callable[[str], None]


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    seconds: float
    tail: tuple[str, ...]

    @property
    def last_line(self) -> str:
        return self.tail[-1] if self.tail else ""


class CommandFailed(AcciOpsError):
    """A tool exited non-zero; the message carries its last output line."""

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        name = os.path.basename(result.argv[0])
        why = f"exit code {result.returncode}" if result.returncode >= 0 else f"killed by signal {-result.returncode}"
        detail = f": {result.last_line}" if result.last_line else ""
        super().__init__(f"{name} failed ({why}){detail}")


def find_tool(name: str, bin_dir: str | None = None, *, hint: str = "") -> str:
    """Locate a CLI, preferring an explicit directory; a clear error names what to install."""
    if bin_dir:
        candidate = os.path.join(bin_dir, name)
        if os.access(candidate, os.X_OK):
            return candidate
        raise ConfigError(f"{name} not found in {bin_dir}{'; ' + hint if hint else ''}")
    found = shutil.which(name)
    if not found:
        raise ConfigError(f"{name} not found on PATH{'; ' + hint if hint else ''}")
    return found


def find_pg_tool(name: str, bin_dir: str | None = None, *, hint: str = "") -> str:
    """Like ``find_tool``, but also looks in Debian's /usr/lib/postgresql/<newest>/bin, where
    tools such as pg_amcheck live without a wrapper on PATH."""
    try:
        return find_tool(name, bin_dir, hint=hint)
    except ConfigError:
        if bin_dir:
            raise
        candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                            key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
        if candidates:
            return candidates[-1]
        raise


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parent's environment minus libpq/AWS secrets it may hold, plus what this call needs."""
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD",)}
    env.update(extra or {})
    return env


def pump_lines(stream, sink: LineSink | None, tail: deque) -> threading.Thread:  # noqa: ANN001
    """Forward a child's text stream to ``sink`` on a thread, keeping the last lines for errors."""

    def run() -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            if line:
                tail.append(line)
                if sink:
                    sink(line)
        stream.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def run_command(argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float | None = None,
                on_line: LineSink | None = None, check: bool = True, cwd: str | None = None,
                stdin_file: str | None = None) -> CommandResult:
    """Run a tool to completion, streaming its merged output; raise ``CommandFailed`` on non-zero."""
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=20)
    stdin = open(stdin_file, "rb") if stdin_file else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(list(argv), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=child_env(env), cwd=cwd)
    except FileNotFoundError:
        raise ConfigError(f"{argv[0]} not found; install it or fix the configured path") from None
    finally:
        if stdin_file:
            stdin.close()
    pump = pump_lines(proc.stdout, on_line, tail)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pump.join(5)
        name = os.path.basename(argv[0])
        raise AcciOpsError(f"{name} did not finish within {timeout:.0f} s and was killed") from None
    pump.join(5)
    result = CommandResult(tuple(argv), proc.returncode, time.monotonic() - started, tuple(tail))
    if check and result.returncode != 0:
        raise CommandFailed(result)
    return result
