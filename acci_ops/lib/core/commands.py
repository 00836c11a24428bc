"""Run external tools as argv lists with explicit env and timeouts, never through a shell.

Output is streamed line by line to a callback (the Dagster compute log, in practice) and every
call is timed. A child's environment is an allow-list (``child_env``), not a copy of acci_ops's:
it inherits only harmless names plus what its tool needs, and a secret reaches it only when the
call passes it on purpose in ``env`` (a PG tool's own PGPASSWORD), never in argv, so the argv is
safe to log as-is.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from acci_ops.lib.core.errors import AcciOpsError, ConfigError

LineSink = Callable[[str], None]


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    seconds: float
    tail: tuple[str, ...]
    stdout: bytes = b""  # only with run_command(capture_stdout=True); otherwise stdout is in tail

    @property
    def last_line(self) -> str:
        return self.tail[-1] if self.tail else ""


class CommandTimeout(AcciOpsError):
    """A tool ran past its timeout and was killed."""


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


def find_wheel_tool(name: str, explicit: str | None = None, *, wheel: str) -> str:
    """A CLI shipped in a PyPI wheel (syft, hadolint): the explicit path, else the one installed
    beside this Python (the venv's bin, found even when the venv is not on PATH), else PATH."""
    if explicit:
        return explicit
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(beside, os.X_OK):
        return beside
    return find_tool(name, hint=f"install the {wheel} wheel (pip install {wheel})")


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


# What every child may inherit from acci_ops's own environment. The rest (ACCI_DATABASE_URL,
# AWS_SECRET_ACCESS_KEY, the webhook URL, the signing key, ...) stays in this process: a child that
# needs a value is given it explicitly, and an app or tool that printed its environment into the
# Dagster log would otherwise print every secret of the code location.
BASE_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "USER", "LOGNAME")
# libpq settings an operator may set for the whole process (in-process psycopg reads them too, so the
# PG tools then connect the same way). Never PGPASSWORD, PGSERVICE or the connection target: those
# are given explicitly from the target's URL.
PG_ENV = ("PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGSSLCRL", "PGSSLCRLDIR", "PGSSLSNI",
          "PGSSLMINPROTOCOLVERSION", "PGSSLMAXPROTOCOLVERSION", "PGGSSENCMODE", "PGKRBSRVNAME", "PGGSSLIB",
          "PGCONNECT_TIMEOUT", "PGCLIENTENCODING", "PGTZ", "PGSYSCONFDIR", "PGTARGETSESSIONATTRS")
_PROXIES = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy")
# helm reaches the cluster through a kubeconfig (or in-cluster service account), whose exec plugins
# may need the cloud CLI's configuration pointers (profiles and token files, not keys).
HELM_ENV = ("KUBECONFIG", "HELM_*", "XDG_*", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
            "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_REGION", "AWS_DEFAULT_REGION",
            "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "GOOGLE_APPLICATION_CREDENTIALS", *_PROXIES)
# docker compose: the engine to talk to, its client config, and the variables the Compose files read.
COMPOSE_ENV = ("DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY", "DOCKER_CONTEXT",
               "DOCKER_API_VERSION", "COMPOSE_*", "XDG_*", "ACCI_FRAMEWORK_*", "LOG_LEVEL", *_PROXIES)
CHILD_ENV_ALLOW = "ACCI_CHILD_ENV_ALLOW"
_ALLOW_ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")


def _operator_allowed(environ: Mapping[str, str]) -> list[str]:
    """``ACCI_CHILD_ENV_ALLOW``: more names (or ``PREFIX_*``) an operator's tools need."""
    entries = [e.strip() for e in environ.get(CHILD_ENV_ALLOW, "").split(",") if e.strip()]
    for number, entry in enumerate(entries, 1):
        if not _ALLOW_ENTRY.match(entry):
            # Not echoed: someone may have pasted a value instead of a name.
            raise ConfigError(f"{CHILD_ENV_ALLOW} entry {number} is not a variable name or a NAME_* prefix")
    return entries


def _allowed(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or (p.endswith("*") and name.startswith(p[:-1])) for p in patterns)


def child_env(extra: Mapping[str, str] | None = None, *, allow: Iterable[str] = ()) -> dict[str, str]:
    """The environment for a child process: an allow-list, not the parent's environment.

    ``BASE_ENV``, plus the names (or ``PREFIX_*``) the caller's tool needs (``allow``, e.g.
    ``HELM_ENV``), plus ``ACCI_CHILD_ENV_ALLOW``, all taken from this process; then ``extra``, the
    values this call passes on purpose (a PG tool's own PGPASSWORD, the app's DATABASE_URL)."""
    patterns = [*BASE_ENV, *allow, *_operator_allowed(os.environ)]
    env = {k: v for k, v in os.environ.items() if _allowed(k, patterns) and k != CHILD_ENV_ALLOW}
    env.update(extra or {})
    return env


LINE_LIMIT = 65536  # a "line" without a newline is cut here: a tool cannot make acci_ops hold it whole


def pump_lines(stream, sink: LineSink | None, tail: deque) -> threading.Thread:  # noqa: ANN001
    """Forward a child's text stream to ``sink`` on a thread, keeping the last lines for errors."""

    def run() -> None:
        for raw in iter(lambda: stream.readline(LINE_LIMIT), b""):
            line = raw.decode(errors="replace").rstrip()
            if line:
                tail.append(line)
                if sink:
                    sink(line)
        stream.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --- process groups ----------------------------------------------------------------------------
# Every tool starts in a session (and so a process group) of its own, and a timeout or an interrupt
# of the waiting thread (Ctrl-C, Dagster's run termination, which raises in the step's thread)
# kills that whole group: buildah's RUN step, git's remote helper, a scanner's workers go with it,
# instead of running on with no limit while their work directory is deleted. When acci_ops itself
# is killed (SIGKILL, OOM) nothing runs in it any more, so the kernel does it: the tool is started
# through util-linux's ``setpriv --pdeathsig KILL`` (an exec, not a fork of this large process as a
# preexec_fn would need). That reaches the tool only, not its children: buildah's chroot runtime
# sets the same signal on its own, a RUN step's runc container (``--isolation oci``, a session and
# PID namespace of its own) has none, and ``cleanup.remove_stale`` removes what is left that way.

def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None when it does not exist: with the pid,
    it names one process even after the number has been reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rpartition(")")[2].split()[19])
    except (IndexError, ValueError):
        return None


def _proc_table() -> list[tuple[int, int, int, str]]:
    """``(pid, ppid, pgid, state)`` of every process (Linux /proc; empty elsewhere)."""
    rows = []
    for name in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rpartition(")")[2].split()
            rows.append((int(name), int(fields[1]), int(fields[2]), fields[0]))
        except (OSError, IndexError, ValueError):
            continue
    return rows


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    return [pid for pid, _, group, state in _proc_table() if group == pgid and state != "Z"]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` in the process tree (also those that left its group)."""
    children: dict[int, list[int]] = {}
    for child, parent, _, state in _proc_table():
        if state != "Z":
            children.setdefault(parent, []).append(child)
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


def kill_group(leader: int) -> None:
    """SIGKILL the process group led by ``leader`` and every descendant of it that left the group
    (looked up first: a killed parent's children are re-parented and can no longer be found)."""
    below = descendants(leader)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signal.SIGKILL)
    for pid in below:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


_setpriv: list[str] | None = None


def _death_signal_wrapper() -> list[str]:
    """``[setpriv, --pdeathsig, KILL, --]`` when this machine's setpriv can do it, else ``[]``."""
    global _setpriv
    if _setpriv is None:
        found = shutil.which("setpriv") or next((p for p in ("/usr/bin/setpriv", "/bin/setpriv")
                                                 if os.access(p, os.X_OK)), None)
        wrapper = [found, "--pdeathsig", "KILL", "--"] if found else []
        if wrapper:
            try:
                ok = subprocess.run([*wrapper, "true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, timeout=10).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            wrapper = wrapper if ok else []
        _setpriv = wrapper
    return _setpriv


def _check_executable(program: str, env: Mapping[str, str], cwd: str | None) -> None:
    """What Popen would have raised for a program the wrapper is then asked to run: ConfigError when
    it does not exist, PermissionError when it is not executable (setpriv would only exit 127/126)."""
    if "/" in program:
        path = program if os.path.isabs(program) else os.path.join(cwd or ".", program)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return
        if os.path.exists(path):
            raise PermissionError(errno.EACCES, "Permission denied", program)
    elif shutil.which(program, path=env.get("PATH", os.defpath)):
        return
    raise ConfigError(f"{program} not found; install it or fix the configured path")


class CommandOutputTooLarge(AcciOpsError):
    """A tool wrote more data than its caller accepts and was stopped."""


def human_size(limit: int) -> str:
    """A byte limit for a message: "64 MiB"."""
    return f"{limit / 2**20:g} MiB" if limit >= 2**20 else f"{limit} bytes"


def _write_pidfile(path: str | os.PathLike, pid: int) -> None:
    """``<pgid> <its start ticks> <our pid> <our start ticks>``: enough for a later cleanup to kill
    this group, only this one, and only once the acci_ops process that started it is gone."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    own = os.getpid()
    partial.write_text(f"{pid} {process_start_ticks(pid) or 0} {own} {process_start_ticks(own) or 0}\n")
    partial.replace(target)


def run_command(argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float | None = None,
                on_line: LineSink | None = None, check: bool = True, cwd: str | None = None,
                stdin_file: str | None = None, allow_env: Iterable[str] = (),
                capture_stdout: bool = False, max_stdout_bytes: int | None = None,
                pidfile: str | os.PathLike | None = None, die_with_parent: bool = True) -> CommandResult:
    """Run a tool to completion, streaming its merged output; raise ``CommandFailed`` on non-zero.

    ``capture_stdout``: for a tool whose stdout is data (a JSON report), not log lines: stdout is
    collected whole into ``result.stdout`` and only stderr is streamed to ``on_line`` and ``tail``;
    ``max_stdout_bytes`` bounds it (the tool is killed and ``CommandOutputTooLarge`` raised beyond).

    The tool runs in a process group of its own, killed whole at the timeout (``CommandTimeout``)
    and when the waiting thread is interrupted (the interrupt is re-raised); with
    ``die_with_parent`` the kernel also kills it if acci_ops dies. ``pidfile``: the group's id is
    written there while it runs (``cleanup.remove_stale`` kills what a killed acci_ops left).

    The tool's environment is ``child_env(env, allow=allow_env)``: the allow-listed names of this
    process's environment plus ``env``; none of this process's other variables (its secrets among
    them) unless an operator lists them in ACCI_CHILD_ENV_ALLOW."""
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=20)
    environment = child_env(env, allow=allow_env)
    wrapper = _death_signal_wrapper() if die_with_parent else []
    if wrapper:
        _check_executable(argv[0], environment, cwd)
    stdin = open(stdin_file, "rb") if stdin_file else subprocess.DEVNULL
    try:
        proc = subprocess.Popen([*wrapper, *argv], stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE if capture_stdout else subprocess.STDOUT,
                                env=environment, cwd=cwd, start_new_session=True)
    except FileNotFoundError:
        raise ConfigError(f"{argv[0]} not found; install it or fix the configured path") from None
    finally:
        if stdin_file:
            stdin.close()
    name = os.path.basename(argv[0])
    expired = threading.Event()
    overflow = threading.Event()

    def kill() -> None:
        if proc.returncode is None:
            kill_group(proc.pid)

    def expire() -> None:
        expired.set()
        kill()

    chunks: list[bytes] = []
    timer = threading.Timer(timeout, expire) if timeout is not None else None
    try:
        if pidfile:
            _write_pidfile(pidfile, proc.pid)
        pump = pump_lines(proc.stderr if capture_stdout else proc.stdout, on_line, tail)
        collector = None
        if capture_stdout:  # its own thread: never both pipes from one reader

            def collect() -> None:
                size = 0
                for chunk in iter(lambda: proc.stdout.read(65536), b""):
                    size += len(chunk)
                    if max_stdout_bytes is not None and size > max_stdout_bytes:
                        overflow.set()
                        kill()
                        break
                    chunks.append(chunk)
                proc.stdout.close()

            collector = threading.Thread(target=collect, daemon=True)
            collector.start()
        # A blocking wait, with a timer that kills the tool at the deadline: Popen.wait(timeout=...)
        # polls with sleeps of up to 50 ms, a delay every short tool call would pay.
        if timer:
            timer.daemon = True
            timer.start()
        proc.wait()
    except BaseException:
        # Interrupted (KeyboardInterrupt, Dagster's termination) or failed while waiting: the tool
        # must not outlive the step that started it.
        kill_group(proc.pid)
        with contextlib.suppress(BaseException):
            proc.wait(10)
        raise
    finally:
        if timer:
            timer.cancel()
        if pidfile:
            with contextlib.suppress(OSError):
                os.unlink(pidfile)
    pump.join(5)
    if collector:
        collector.join(5)
    if overflow.is_set():
        raise CommandOutputTooLarge(f"{name} wrote more than {human_size(max_stdout_bytes or 0)} to its standard "
                                    "output and was stopped")
    if expired.is_set() and proc.returncode == -9:  # killed by the timer, not exited just before it
        raise CommandTimeout(f"{name} did not finish within {timeout:.0f} s and was killed") from None
    result = CommandResult(tuple(argv), proc.returncode, time.monotonic() - started, tuple(tail), b"".join(chunks))
    if check and result.returncode != 0:
        raise CommandFailed(result)
    return result
