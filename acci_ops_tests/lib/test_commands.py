"""run_command's process handling with real processes: the tool runs in a process group of its own,
killed whole at its timeout and when the waiting thread is interrupted, killed by the kernel when
acci_ops dies, bounded in what it may print, and recorded in a pidfile while it runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from acci_ops.lib.core.commands import (
    LINE_LIMIT,
    CommandOutputTooLarge,
    CommandTimeout,
    process_start_ticks,
    run_command,
)
from acci_ops.lib.core.errors import ConfigError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], seconds: float = 10) -> list[int]:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


@pytest.fixture
def reaped() -> Iterator[list[int]]:
    """Pids a test saw; whatever of them is still alive at the end is killed (so a failing test
    leaves no sleep behind)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def pids_from(lines: list[str]) -> list[int]:
    return [int(line.split()[1]) for line in lines if line.startswith("pid ")]


# A shell that starts a background sleep (which would survive a kill of the shell alone), says both
# pids, and then waits.
TREE = "sleep 300 & echo pid $!; echo pid $$; wait"


def test_timeout_kills_the_whole_group(reaped: list[int]) -> None:
    lines: list[str] = []
    with pytest.raises(CommandTimeout, match=r"^sh did not finish within 1 s and was killed$"):
        run_command(["sh", "-c", TREE], timeout=1, on_line=lines.append)
    reaped += pids_from(lines)
    assert len(reaped) == 2
    assert wait_gone(reaped) == []


class Interrupted(BaseException):
    """What Dagster raises in a step's thread when its run is terminated (DagsterExecutionInterruptedError
    is a BaseException too, not an Exception)."""


@pytest.mark.parametrize("how", ["KeyboardInterrupt", "BaseException"])
def test_an_interrupted_wait_kills_the_group_and_reraises(how: str, reaped: list[int],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    sig = signal.SIGINT if how == "KeyboardInterrupt" else signal.SIGUSR1

    def raise_interrupted(_signum: int, _frame: object) -> None:
        raise Interrupted("run terminated")

    previous = signal.signal(sig, signal.default_int_handler if how == "KeyboardInterrupt" else raise_interrupted)
    main = threading.get_ident()

    def interrupt_when_started() -> None:
        deadline = time.monotonic() + 10
        while len(pids_from(lines)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        signal.pthread_kill(main, sig)  # to the waiting thread, as a terminal's Ctrl-C or Dagster's handler

    try:
        threading.Thread(target=interrupt_when_started, daemon=True).start()
        with pytest.raises(KeyboardInterrupt if how == "KeyboardInterrupt" else Interrupted):
            run_command(["sh", "-c", TREE], timeout=60, on_line=lines.append)
    finally:
        signal.signal(sig, previous)
    reaped += pids_from(lines)
    assert len(reaped) == 2
    assert wait_gone(reaped) == []


CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from acci_ops.lib.core.commands import run_command
    run_command(["sh", "-c", "echo pid $$; exec sleep 300"], on_line=lambda line: print(line, flush=True))
""")


def test_the_tool_dies_with_acci_ops(reaped: list[int]) -> None:
    """SIGKILL of the Python process running run_command: no handler of ours runs, the kernel
    kills the tool (parent-death signal)."""
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT))], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        tool = int(line.split()[1])
        reaped.append(tool)
        assert alive(tool)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert wait_gone([tool]) == []


def test_stdout_beyond_the_limit_is_refused_in_one_line() -> None:
    argv = [sys.executable, "-c", "import sys\nwhile True: sys.stdout.write('x' * 65536)"]
    with pytest.raises(CommandOutputTooLarge) as caught:
        run_command(argv, capture_stdout=True, max_stdout_bytes=2**20, timeout=60)
    name = os.path.basename(sys.executable)
    assert str(caught.value) == f"{name} wrote more than 1 MiB to its standard output and was stopped"
    small = run_command(["sh", "-c", "printf 12345"], capture_stdout=True, max_stdout_bytes=5)
    assert small.stdout == b"12345"


def test_a_line_without_end_is_cut_not_held_whole() -> None:
    lines: list[str] = []
    run_command([sys.executable, "-c", "print('y' * 200000)"], on_line=lines.append)
    assert max(len(line) for line in lines) == LINE_LIMIT
    assert sum(len(line) for line in lines) == 200000


def test_the_pidfile_names_the_group_while_it_runs(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids" / "x.pid"
    script = f"while [ ! -s {pidfile} ]; do sleep 0.02; done; echo pid $$; cat {pidfile}"
    result = run_command(["sh", "-c", script], pidfile=pidfile, timeout=30)
    group, ticks, owner, owner_ticks = (int(v) for v in result.tail[-1].split())
    assert group == pids_from(list(result.tail))[0]  # the tool leads its own group
    assert ticks > 0 and (owner, owner_ticks) == (os.getpid(), process_start_ticks(os.getpid()))
    assert not pidfile.exists()


def test_missing_and_not_executable_tools_keep_their_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^no-such-tool-x not found; install it or fix the configured path$"):
        run_command(["no-such-tool-x"])
    with pytest.raises(ConfigError, match="not found"):
        run_command([str(tmp_path / "absent")])
    script = tmp_path / "plain"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(PermissionError):
        run_command([str(script)])
    assert run_command(["sh", "-c", "exit 0"]).returncode == 0
