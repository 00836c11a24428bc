"""A private PostgreSQL server and a private Redis for one smoke test, reached only over unix sockets.

The image under test is not trusted (whoever can push a tag to the source repository wrote it), so
the database and Redis it is given must hold nothing and lead nowhere: not the validation scratch
server (its scratch role owns every ``acci_scratch_*`` database, restored production backups among
them), not a drill's Redis. Each smoke test therefore gets servers of its own, started for it and
deleted after whatever happens:

- PostgreSQL (this machine's server binaries: the newest ``/usr/lib/postgresql/*/bin``, else
  ``initdb``'s directory on PATH): a data directory copied from a template made once per storage
  directory (``initdb`` and the set-up below take ~1 s once; copy, start and stop ~0.3-0.5 s per
  smoke test, most of it the server's start). ``listen_addresses=''``:
  no TCP at all, only a socket in a directory of its own. One role ``acci`` (LOGIN, NOSUPERUSER,
  NOCREATEDB, NOCREATEROLE, NOREPLICATION, member of nothing) owns the one database ``acci``;
  ``CONNECT`` on ``postgres`` and ``template1`` is revoked from PUBLIC, and ``pg_hba.conf`` admits only
  ``acci`` to ``acci`` with a password (scram-sha-256) that is new for every smoke test
  (``secrets.token_urlsafe``), set in single-user mode before the server listens. No superuser can
  log in at all.
- Redis (``redis-server``): ``port 0`` (no TCP), a unix socket only, nothing saved; its configuration
  goes in on stdin (nothing in argv). Redis 7's protected configs, DEBUG and MODULE stay off, so a
  client cannot make it write files.

Each server's socket directory is what the container gets, bind-mounted read-only at
``/run/acci-smoke/pg`` and ``/run/acci-smoke/redis``; the app is handed

    DATABASE_URL=postgresql://acci:<password>@/acci?host=/run/acci-smoke/pg
    REDIS_URL=unix:///run/acci-smoke/redis/redis.sock

(libpq's socket form: empty host, the directory in ``host=``; the server's default port 5432 names
the socket ``.s.PGSQL.5432``). On this machine the servers run as the ``postgres`` system user when
acci_ops runs as root (PostgreSQL refuses root), under a directory only root and that user's group
may enter, with the kernel killing them if acci_ops dies (``setpriv --pdeathsig KILL``). That user
must be able to pass through the storage directory's ancestors: as ``dev/localpg`` does, those
lacking it get the search bit for others (never read). When the socket paths would be too long
for a unix socket address (or hold ``,``/``:``, which a bind mount cannot name), the socket
directories go to a short ``/tmp/acci-smoke-sock-*`` directory instead, deleted with the rest.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from acci_ops.lib.core.commands import child_env, find_tool, kill_group
from acci_ops.lib.core.errors import AcciOpsError, ConfigError

CONTAINER_ROOT = "/run/acci-smoke"
PG_CONTAINER_DIR = f"{CONTAINER_ROOT}/pg"
REDIS_CONTAINER_DIR = f"{CONTAINER_ROOT}/redis"
ROLE = DATABASE = "acci"
PG_PORT = 5432  # only names the socket file: the server has no TCP listener
SERVICE_USER = "postgres"  # who runs both servers when acci_ops is root
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; PostgreSQL adds ".s.PGSQL.5432.lock"
START_TIMEOUT = 30.0
TEMPLATE_MARKER = "acci-smoke-template-ok"
PG_HINT = "install the PostgreSQL server: apt-get install -y postgresql-15 (./run test does this)"
REDIS_HINT = "install it with `apt-get install -y redis-server` (./run test does this)"
TEMPLATE_SQL = (
    f"CREATE ROLE {ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT CONNECTION LIMIT 50\n"
    f"CREATE DATABASE {DATABASE} OWNER {ROLE} TEMPLATE template0\n"
    "REVOKE CONNECT ON DATABASE postgres FROM PUBLIC\n"
    "REVOKE CONNECT ON DATABASE template1 FROM PUBLIC\n")
PG_OPTIONS = ("listen_addresses=", f"port={PG_PORT}", "unix_socket_permissions=0777", "fsync=off",
              "synchronous_commit=off", "full_page_writes=off", "shared_buffers=16MB", "max_connections=40",
              "max_wal_size=64MB", "logging_collector=off", "password_encryption=scram-sha-256")
REDIS_CONF = ('port 0\nunixsocket {socket}\nunixsocketperm 777\nsave ""\nappendonly no\ndaemonize no\n'
              'dir {data}\nlogfile ""\nenable-protected-configs no\nenable-debug-command no\n'
              'enable-module-command no\nmaxmemory 64mb\n')


class ServiceFailed(AcciOpsError):
    """A private server of the smoke test could not be started; the message says why."""


@dataclass(frozen=True)
class SmokeServices:
    """What the container is given: URLs as seen inside it (secrets: they carry the password) and
    the host directories to mount read-only at the container paths."""

    database_url: str = field(repr=False)
    redis_url: str
    mounts: tuple[tuple[str, str], ...]
    about: dict[str, str]
    seconds: float


def server_bin_dir() -> str:
    """The newest installed PostgreSQL server's bin directory."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    if candidates:
        return os.path.dirname(candidates[-1])
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(found)
    raise ConfigError(f"no PostgreSQL server binaries (initdb) found for the smoke test's private database; {PG_HINT}")


def _as_service_user() -> list[str]:
    """The exec prefix that runs a server as the service user (root only), dying with acci_ops."""
    setpriv = find_tool("setpriv", hint="install util-linux")
    who = ["--reuid", SERVICE_USER, "--regid", SERVICE_USER, "--init-groups"] if os.geteuid() == 0 else []
    return [setpriv, *who, "--pdeathsig", "KILL", "--"]


def _give(path: Path, mode: int) -> None:
    """``path`` to the service user (when root), with ``mode``."""
    if os.geteuid() == 0:
        shutil.chown(path, SERVICE_USER, SERVICE_USER)
    os.chmod(path, mode)


def _private_dir(path: Path) -> None:
    """A directory only its owner and the service user's group may enter (0710), so no other local
    user reaches the sockets inside; the service user needs only to pass through it."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(path, "root", SERVICE_USER)
        os.chmod(path, 0o710)
    else:
        os.chmod(path, 0o700)


def _let_service_user_traverse(path: Path) -> None:
    """The search bit for others (o+x, never read) on ``path``'s ancestors, so the service user can
    reach a directory below a root-only 0700 one (mkdtemp and pytest make those)."""
    if os.geteuid() != 0:
        return
    for directory in path.parents:
        mode = directory.stat().st_mode
        if not mode & 0o001:
            os.chmod(directory, mode | 0o001)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:300]


def _tail(path: Path) -> str:
    """The line of a server's log that says why: its first error, else its last line."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if "error:" in line.lower() or "FATAL" in line]
    chosen = errors[0] if errors else lines[-1] if lines else ""
    return " ".join(chosen.split())[:300]


def _run_setup(argv: list[str], what: str, *, stdin: bytes | None = None, log: Path, secret: str = "") -> None:
    with open(log, "ab") as out:
        proc = subprocess.run([*_as_service_user(), *argv], input=stdin, stdout=out, stderr=subprocess.STDOUT,
                              env=_server_env(), timeout=120, check=False,
                              stdin=None if stdin is not None else subprocess.DEVNULL)
    if proc.returncode != 0:
        last = _tail(log) or "(no output)"
        raise ServiceFailed(f"{what} failed (exit code {proc.returncode}): "
                            f"{last.replace(secret, '***') if secret else last}")


def _server_env() -> dict[str, str]:
    return child_env({"LC_ALL": "C", "TZ": "UTC"})


def pg_template(cache_dir: Path) -> Path:
    """The template data directory (made once under ``cache_dir``; a lock keeps concurrent builds
    from making it twice). It holds no secret: the role's password is set in each copy."""
    bindir = server_bin_dir()
    version = Path(bindir).parent.name if Path(bindir).parent.name.isdigit() else ""
    cache_dir = Path(cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    template = cache_dir / f"smoke-pg{version}-template"
    if (template / TEMPLATE_MARKER).exists():
        return template
    _let_service_user_traverse(template)
    with open(cache_dir / f"smoke-pg{version}-template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (template / TEMPLATE_MARKER).exists():
            return template
        work = cache_dir / f"smoke-pg{version}-template.{uuid.uuid4().hex[:8]}"
        try:
            work.mkdir(mode=0o700)
            _give(work, 0o700)
            log = cache_dir / f"{work.name}.log"
            _run_setup([f"{bindir}/initdb", "-D", str(work), "-U", "postgres", "--auth=reject", "-E", "UTF8",
                        "--no-locale", "--no-sync", "--no-instructions", "--wal-segsize=1"],
                       "initdb of the smoke test's template database", log=log)
            _run_setup([f"{bindir}/postgres", "--single", "-D", str(work), "-c", "fsync=off", "postgres"],
                       "setting up the smoke test's template database", stdin=TEMPLATE_SQL.encode(), log=log)
            (work / TEMPLATE_MARKER).write_text("ok\n")
            shutil.rmtree(template, ignore_errors=True)
            work.rename(template)
            log.unlink(missing_ok=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return template


def _wait(ready: Callable[[], bool], proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if proc.poll() is not None:
            raise ServiceFailed(f"{what} exited with code {proc.returncode}: {_tail(log) or '(no output)'}")
        if time.monotonic() > deadline:
            raise ServiceFailed(f"{what} was not ready within {START_TIMEOUT:g} s: {_tail(log) or '(no output)'}")
        time.sleep(0.01)


def _pg_ready(socket_dir: Path, password: str) -> bool:
    import psycopg

    if not (socket_dir / f".s.PGSQL.{PG_PORT}").exists():
        return False
    try:
        psycopg.connect(host=str(socket_dir), port=PG_PORT, user=ROLE, password=password, dbname=DATABASE,
                        connect_timeout=5).close()
    except psycopg.OperationalError:
        return False
    return True


def _redis_quote(value: Path) -> str:
    """A path as a quoted string of redis.conf (paths may hold spaces)."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _redis_ready(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _stop(proc: subprocess.Popen | None, sig: int) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.wait(10)


def _socket_root(base: Path) -> tuple[Path, bool]:
    """Where the socket directories go: under ``base`` when the paths fit a unix socket address and
    can be named in a bind mount (no ``,`` or ``:``); else a new short directory under /tmp."""
    longest = base / "redis" / "redis.sock"
    if len(str(longest)) <= SOCKET_PATH_MAX and not set(str(base)) & {",", ":"}:
        return base, False
    return Path(tempfile.mkdtemp(prefix="acci-smoke-sock-", dir="/tmp")), True


@dataclass
class _Started:
    """The servers started so far (stopped, whatever happens, by ``private_services``)."""

    processes: list[tuple[subprocess.Popen, int]] = field(default_factory=list)

    def stop(self) -> None:
        for proc, sig in reversed(self.processes):
            _stop(proc, sig)


def _start_postgres(base: Path, sockets: Path, cache_dir: Path, password: str, started: _Started) -> dict[str, str]:
    bindir = server_bin_dir()
    template = pg_template(cache_dir)
    data, socket_dir, log = base / "pgdata", sockets / "pg", base / "postgres.log"
    copied = subprocess.run(["cp", "-a", str(template), str(data)], capture_output=True, text=True, check=False)
    if copied.returncode != 0:
        raise ServiceFailed(f"cannot copy the smoke test's template database: {_one_line(copied.stderr)}")
    (data / TEMPLATE_MARKER).unlink(missing_ok=True)
    socket_dir.mkdir()
    _give(socket_dir, 0o755)
    # On stdin, never argv; the statement is never logged, even when it fails.
    _run_setup([f"{bindir}/postgres", "--single", "-D", str(data), "-c", "fsync=off", "-c",
                "log_min_error_statement=panic", "postgres"], "setting the smoke test database's password",
               stdin=f"ALTER ROLE {ROLE} PASSWORD '{password}'\n".encode(), log=log, secret=password)
    hba = data / "pg_hba.conf"
    hba.write_text(f"local {DATABASE} {ROLE} scram-sha-256\n")
    _give(hba, 0o600)
    argv = [f"{bindir}/postgres", "-D", str(data), "-c", f"unix_socket_directories={socket_dir}"]
    for option in PG_OPTIONS:
        argv += ["-c", option]
    with open(log, "ab") as out:
        proc = subprocess.Popen([*_as_service_user(), *argv], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=_server_env(), start_new_session=True)
    started.processes.append((proc, signal.SIGQUIT))  # immediate shutdown: the data is deleted anyway
    _wait(lambda: _pg_ready(socket_dir, password), proc, "the smoke test's PostgreSQL server", log)
    return {"socket_dir": str(socket_dir), "major": Path(bindir).parent.name}


def _start_redis(base: Path, sockets: Path, started: _Started) -> str:
    server = find_tool("redis-server", hint=REDIS_HINT)
    socket_dir, data, log = sockets / "redis", base / "redis-data", base / "redis.log"
    for directory, mode in ((socket_dir, 0o755), (data, 0o700)):
        directory.mkdir()
        _give(directory, mode)
    conf = REDIS_CONF.format(socket=_redis_quote(socket_dir / "redis.sock"), data=_redis_quote(data))
    with open(log, "ab") as out:
        proc = subprocess.Popen([*_as_service_user(), server, "-"], stdin=subprocess.PIPE, stdout=out,
                                stderr=subprocess.STDOUT, env=_server_env(), start_new_session=True)
    started.processes.append((proc, signal.SIGKILL))  # nothing to save: it keeps no data
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write(conf.encode())
        proc.stdin.close()
    _wait(lambda: _redis_ready(socket_dir / "redis.sock"), proc, "the smoke test's redis-server", log)
    return str(socket_dir)


@contextlib.contextmanager
def private_services(base: Path, cache_dir: Path, *, database: bool = True,
                     redis: bool = True) -> Iterator[SmokeServices]:
    """Start a private PostgreSQL and Redis under ``base`` (a directory of the build) from the
    template under ``cache_dir``; on exit, whatever happens, stop them and delete everything they
    had. Raises ServiceFailed / ConfigError with one line when a server cannot start."""
    began = time.monotonic()
    Path(base).mkdir(parents=True, exist_ok=True)
    base = Path(base).resolve() / f"smoke-services-{uuid.uuid4().hex[:8]}"
    started = _Started()
    sockets, separate = base, False
    try:
        try:
            _let_service_user_traverse(base)
            _private_dir(base)
            sockets, separate = _socket_root(base)
            if separate:
                _private_dir(sockets)
            password = secrets.token_urlsafe(24)
            mounts: list[tuple[str, str]] = []
            about: dict[str, str] = {}
            database_url = redis_url = ""
            if database:
                pg = _start_postgres(base, sockets, cache_dir, password, started)
                database_url = f"postgresql://{ROLE}:{password}@/{DATABASE}?host={PG_CONTAINER_DIR}"
                mounts.append((pg["socket_dir"], PG_CONTAINER_DIR))
                about["throwaway_database"] = (
                    f"a private PostgreSQL {pg['major']} server for this smoke test alone (unix socket only, no TCP; "
                    f"role {ROLE} with a new password, owning database {DATABASE} and nothing else), deleted after")
            if redis:
                mounts.append((_start_redis(base, sockets, started), REDIS_CONTAINER_DIR))
                redis_url = f"unix://{REDIS_CONTAINER_DIR}/redis.sock"
                about["throwaway_redis"] = ("a private redis-server for this smoke test alone (unix socket only), "
                                            "deleted after")
        except (OSError, subprocess.SubprocessError) as exc:
            raise ServiceFailed(f"cannot start the smoke test's private servers: {_one_line(str(exc))}") from None
        yield SmokeServices(database_url, redis_url, tuple(mounts), about, round(time.monotonic() - began, 3))
    finally:
        started.stop()
        shutil.rmtree(base, ignore_errors=True)
        if separate:
            shutil.rmtree(sockets, ignore_errors=True)
