"""The traffic switch of a blue/green release: Debian's haproxy in front of the two colors, driven through
its runtime API.

Why haproxy: its runtime API (a unix socket, ``level admin``) moves traffic between servers of a running
process: ``set server app/green state ready`` then ``set server app/blue state drain`` takes effect on the
next request, with no reload and no new process, and a draining server finishes the requests it already
has while getting no new ones, so a switch drops nothing. Its own health checks (``GET /health``) decide
whether the new color may take traffic, and ``show servers state`` / ``show stat`` say what it is doing,
so which color is live is read from haproxy itself. nginx can only switch by rewriting its config and
``nginx -s reload``: new workers start, the old ones finish their connections, which is graceful but a
full config cycle per switch and no way to ask nginx which upstream is live or whether it is healthy
(active health checks are nginx Plus only). Caddy's admin API replaces the config over HTTP without a
restart and has active health checks, but a switch is a JSON config patch, there is no per-upstream
drain state, and reading back "which color is live" means parsing its config, not its state.

haproxy runs as a daemon (``-D`` with a pidfile), not as a child of acci_ops: the proxy is in front of
production and must outlive the process that switched it (a Dagster run ends after its step); a
restarted acci_ops finds it by its pidfile and socket and asks it what is live. No master process
(``-W``) is needed, because nothing here ever reloads it. Every switch and address change also
rewrites the private config (0600 in a 0700 directory), so an haproxy restarted from it (a reboot)
comes back with the same color live and the same addresses.
"""

from __future__ import annotations

import csv
import ipaddress
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.releases.deployers import Log, shown, write_private

COLORS = ("blue", "green")
BACKEND = "app"
SOCKET_NAME = "admin.sock"
# haproxy's server admin-state bits (srv_admin_state): forced, inherited, resolver and hostname
# maintenance; forced and inherited drain. CMAINT (0x04, the config's `disabled`) stays set after a
# `state ready` and means nothing once FMAINT is cleared, so it is not counted.
MAINT_BITS = 0x01 | 0x02 | 0x20 | 0x40
DRAIN_BITS = 0x08 | 0x10
RUNNING = 2  # srv_op_state SRV_ST_RUNNING
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path, less the final NUL
_SERVER_LINE = re.compile(r"^\s*server (blue|green) (\S+):(\d+)\b.*?( disabled)?\s*$", re.MULTILINE)


def _log_nothing(line: str) -> None:
    pass


def check_color(color: object) -> str:
    if color not in COLORS:
        raise ConfigError(f"color {shown(color)} is not blue or green")
    return str(color)


def check_port(port: object, what: str = "port") -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{what} {shown(port)} is not a TCP port (1-65535)")
    return port


def check_host(host: object, what: str = "address") -> str:
    """An IP literal: a host name would make haproxy resolve it at start and never again."""
    try:
        return str(ipaddress.ip_address(host))  # type: ignore[arg-type]
    except ValueError:
        raise ConfigError(f"{what} {shown(host)} is not an IP address such as 127.0.0.1") from None


@dataclass(frozen=True)
class ServerState:
    """One server as ``show servers state`` reports it."""

    name: str
    address: str
    port: int
    op_state: int
    admin_state: int

    @property
    def maint(self) -> bool:
        return bool(self.admin_state & MAINT_BITS)

    @property
    def drain(self) -> bool:
        return bool(self.admin_state & DRAIN_BITS)

    @property
    def live(self) -> bool:
        """Takes new requests: running and neither in maintenance nor draining."""
        return self.op_state == RUNNING and not self.maint and not self.drain

    def describe(self) -> str:
        mode = "maint" if self.maint else "drain" if self.drain else "ready"
        health = {0: "down", 1: "starting", 2: "up", 3: "stopping"}.get(self.op_state, str(self.op_state))
        return f"{self.name} {self.address}:{self.port} {mode}/{health}"


@dataclass(frozen=True)
class SwitchResult:
    live: str
    previous: str | None
    seconds: float
    drained: bool  # the old color's in-flight requests finished before it went to maintenance


def parse_servers_state(text: str) -> dict[str, ServerState]:
    """``show servers state app``: a version line, a ``#`` header naming the columns, one line a server."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = next((line[1:].split() for line in lines if line.startswith("#")), None)
    if header is None:
        raise AcciOpsError(f"haproxy's `show servers state` answer has no header line: {shown(text)}")
    found: dict[str, ServerState] = {}
    for line in lines:
        if line.startswith("#") or len(line.split()) != len(header):
            continue
        row = dict(zip(header, line.split(), strict=True))
        if row.get("be_name") != BACKEND:
            continue
        try:
            found[row["srv_name"]] = ServerState(row["srv_name"], row["srv_addr"], int(row["srv_port"]),
                                                 int(row["srv_op_state"]), int(row["srv_admin_state"]))
        except (KeyError, ValueError):
            raise AcciOpsError(f"haproxy's `show servers state` line is not what acci_ops reads: {shown(line)}") \
                from None
    return found


def _exited(pid: int) -> bool:
    """Whether ``pid`` has finished exiting: gone, or a zombie waiting for its parent. Not "its cmdline
    no longer names our config": a process tearing down has an empty cmdline while it still holds its
    sockets, so that test answers too early (measured: a stop returned while haproxy still ran)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


@dataclass
class HaproxySwitch:
    """One haproxy: a frontend on ``listen_host:port``, backend ``app`` with the servers ``blue`` and
    ``green`` at ``servers[color] = (ip, port)``, health-checked on ``/health`` every
    ``check_interval_ms``. Its config, pidfile, log and admin socket live in ``run_dir``.
    ``check_timeout``: how long a color may take to pass haproxy's check before a switch to it is
    refused; ``drain_timeout``: how long the old color may take to finish its requests."""

    run_dir: str | os.PathLike
    port: int
    servers: Mapping[str, tuple[str, int]]
    listen_host: str = "127.0.0.1"
    haproxy: str = "haproxy"
    check_interval_ms: int = 500
    check_timeout: float = 30.0
    drain_timeout: float = 30.0
    poll_seconds: float = 0.1

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        check_port(self.port, "proxy port")
        self.listen_host = check_host(self.listen_host, "proxy listen address")
        if not isinstance(self.servers, Mapping) or sorted(self.servers) != sorted(COLORS):
            keys = sorted(map(str, self.servers)) if isinstance(self.servers, Mapping) else self.servers
            raise ConfigError(f"haproxy servers must be exactly blue and green, got {shown(keys)}")
        self.servers = {color: (check_host(host, f"address of {color}"), check_port(port, f"port of {color}"))
                        for color, (host, port) in ((c, self.servers[c]) for c in COLORS)}
        for key in ("check_timeout", "drain_timeout"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"haproxy {key} must be a positive number of seconds, got {shown(value)}")
        if len(str(self.socket_path)) > _SUN_PATH_MAX:
            raise ConfigError(f"haproxy run directory {self.run_dir} is too long for a unix socket path "
                              f"({len(str(self.socket_path))} > {_SUN_PATH_MAX} characters); choose a shorter one")

    # --- files ---------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return Path(self.run_dir) / "haproxy.cfg"

    @property
    def socket_path(self) -> Path:
        return Path(self.run_dir) / SOCKET_NAME

    @property
    def pid_path(self) -> Path:
        return Path(self.run_dir) / "haproxy.pid"

    @property
    def log_path(self) -> Path:
        return Path(self.run_dir) / "haproxy.log"

    @property
    def url(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"http://{host}:{self.port}"

    def render_config(self, live: str | None) -> str:
        """The config haproxy starts from: ``live`` (or neither) takes traffic, the other is ``disabled``."""
        lines = [f"# Written by acci_ops for a blue/green release; live color: {live or 'none'}.",
                 "# Generated: every switch rewrites it, so a restarted haproxy comes back as it was.",
                 "global",
                 f"    stats socket {self.socket_path} mode 600 level admin",
                 "    stats timeout 10s",
                 "    # A second haproxy on this port must fail to bind, not silently share its traffic.",
                 "    noreuseport",
                 "defaults",
                 "    mode http",
                 "    timeout connect 2s",
                 "    timeout client 30s",
                 "    timeout server 60s",
                 "    timeout http-keep-alive 2s",
                 "    # A connection the old color refuses is retried on the other one instead of failing.",
                 "    retries 3",
                 "    option redispatch",
                 "frontend web",
                 f"    bind {self.listen_host}:{self.port}",
                 f"    default_backend {BACKEND}",
                 f"backend {BACKEND}",
                 "    # HTTP/1.1 with a Host: a check without one may not reach the app's site (caddy answers an",
                 "    # unmatched host with an empty 200, which would pass a sick color).",
                 "    option httpchk",
                 f"    http-check send meth GET uri /health ver HTTP/1.1 hdr Host {self.servers['blue'][0]}",
                 "    http-check expect status 200",
                 "    # Which color answered, for operators and the switch tests.",
                 "    http-response set-header X-Acci-Color %[srv_name]",
                 f"    default-server inter {self.check_interval_ms}ms fall 2 rise 2"]
        for color in COLORS:
            host, port = self.servers[color]
            address = f"[{host}]" if ":" in host else host
            lines.append(f"    server {color} {address}:{port} check" + ("" if color == live else " disabled"))
        return "\n".join(lines) + "\n"

    def _write_config(self, live: str | None) -> None:
        directory = Path(self.run_dir)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        write_private(self.config_path, self.render_config(live))

    def _configured_live(self) -> str | None:
        """The live color the config on disk names (the state a restarted haproxy comes back in)."""
        try:
            text = self.config_path.read_text()
        except FileNotFoundError:
            return None
        enabled = [m.group(1) for m in _SERVER_LINE.finditer(text) if not m.group(4)]
        return enabled[0] if len(enabled) == 1 else None

    # --- the process ---------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The pid of this switch's haproxy, when it runs (its cmdline names this config)."""
        try:
            pid = int(self.pid_path.read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if stat.rsplit(")", 1)[-1].split()[0] == "Z" or str(self.config_path).encode() not in cmdline:
            return None  # exited (a zombie), or the pid now belongs to another process
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def _haproxy(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """haproxy with a bare environment: it needs no variable of ours, and gets no secret."""
        try:
            with self.log_path.open("ab") as out:
                os.chmod(self.log_path, 0o600)
                return subprocess.run([self.haproxy, *args], stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                      timeout=timeout, check=False)
        except FileNotFoundError:
            raise ConfigError(f"{self.haproxy} is missing: install it with `apt-get install -y haproxy`") from None
        except subprocess.TimeoutExpired:
            raise AcciOpsError(f"`{self.haproxy} {' '.join(args)}` did not finish within {timeout:g} s") from None

    def _complaint(self, since: int) -> str:
        """The first ALERT (else the last) line haproxy logged since byte ``since``."""
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(since)
                lines = handle.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return "no output"
        alerts = [line for line in lines if "ALERT" in line]
        if alerts:
            return alerts[0].strip()  # the first ALERT names the cause; later ones say "Exiting"
        others = [line for line in lines if line.strip()]
        return others[-1].strip() if others else "no output"

    def start(self, log: Log = _log_nothing) -> None:
        """Start haproxy unless this switch's haproxy already runs (then leave it as it is: it is the
        truth about what is live). A config left by an earlier run keeps its live color."""
        if self.running():
            log(f"haproxy: already running (pid {self.pid()}) on {self.url}")
            return
        live = self._configured_live()
        self._write_config(live)
        for stale in (self.socket_path, self.pid_path):
            stale.unlink(missing_ok=True)
        since = self.log_path.stat().st_size if self.log_path.exists() else 0
        checked = self._haproxy("-c", "-q", "-f", str(self.config_path))
        if checked.returncode != 0:
            raise AcciOpsError(f"haproxy refused its config {self.config_path}: {self._complaint(since)}")
        started = self._haproxy("-D", "-p", str(self.pid_path), "-f", str(self.config_path))
        if started.returncode != 0:
            raise AcciOpsError(f"haproxy did not start on {self.url} (exit {started.returncode}): "
                               f"{self._complaint(since)}")
        deadline = time.monotonic() + 10
        while True:
            try:
                self.command("show info")
                break
            except AcciOpsError:
                if time.monotonic() > deadline:
                    raise AcciOpsError(f"haproxy started but its runtime API {self.socket_path} did not answer "
                                       f"within 10 s: {self._complaint(since)}") from None
                time.sleep(0.05)
        log(f"haproxy: started (pid {self.pid()}) on {self.url}, live color {live or 'none'}")

    def stop(self, log: Log = _log_nothing, *, remove_files: bool = True) -> None:
        """Soft-stop (SIGUSR1: stop listening, let in-flight requests finish, up to drain_timeout), then
        TERM and KILL; with ``remove_files`` the config, socket, pidfile and log go too."""
        pid = self.pid()
        if pid is not None:
            for sig, wait in ((signal.SIGUSR1, self.drain_timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + wait
                while not _exited(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _exited(pid):
                    break
            if not _exited(pid):
                raise AcciOpsError(f"haproxy pid {pid} did not stop, even after SIGKILL")
            log(f"haproxy: stopped (pid {pid})")
        if remove_files:
            for path in (self.config_path, self.socket_path, self.pid_path, self.log_path):
                path.unlink(missing_ok=True)
            try:
                Path(self.run_dir).rmdir()
            except OSError:
                pass  # not empty: someone else keeps files there

    # --- the runtime API -----------------------------------------------------------------------

    def command(self, line: str, timeout: float = 5.0) -> str:
        """One runtime API command and haproxy's whole answer (the socket closes after it)."""
        if "\n" in line or ";" in line:
            raise ConfigError(f"haproxy command {shown(line)} must be one command on one line")
        if not self.socket_path.exists():
            raise AcciOpsError(f"haproxy runtime API socket {self.socket_path} does not exist: haproxy is not "
                               "running (HaproxySwitch.start starts it)")
        chunks: list[bytes] = []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(self.socket_path))
                sock.sendall(line.encode() + b"\n")
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except (ConnectionRefusedError, FileNotFoundError):
            raise AcciOpsError(f"haproxy runtime API socket {self.socket_path} refused the connection: haproxy is "
                               "not running") from None
        except OSError as exc:
            raise AcciOpsError(f"haproxy runtime API {self.socket_path} failed on `{line}`: "
                               f"{exc.strerror or type(exc).__name__}") from None
        return b"".join(chunks).decode(errors="replace")

    def _set(self, line: str) -> None:
        answer = self.command(line).strip()
        if answer:
            raise AcciOpsError(f"haproxy refused `{line}`: {answer}")

    def states(self) -> dict[str, ServerState]:
        found = parse_servers_state(self.command(f"show servers state {BACKEND}"))
        missing = [c for c in COLORS if c not in found]
        if missing:
            raise AcciOpsError(f"haproxy at {self.socket_path} has no server {BACKEND}/{missing[0]}: it was not "
                               "started from this switch's config")
        return found

    def stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` rows of the colors: check_status, check_health, check_rise/fall, scur, ..."""
        text = self.command("show stat").lstrip("# ")
        rows = {}
        for row in csv.DictReader(text.splitlines()):
            if row.get("pxname") == BACKEND and row.get("svname") in COLORS:
                rows[row["svname"]] = row
        return rows

    def active(self) -> str | None:
        """The color haproxy sends new requests to, asked of haproxy; None when neither is live."""
        live = [color for color, state in self.states().items() if color in COLORS and state.live]
        if len(live) > 1:
            raise AcciOpsError("haproxy sends traffic to both blue and green: a switch was interrupted; "
                               "finish it with switch_to(<color>)")
        return live[0] if live else None

    def _healthy(self, color: str) -> tuple[bool, str]:
        """Whether haproxy's own checks see ``color`` at full health (rise + fall - 1). A server leaving
        maintenance comes back at health ``rise`` with the check result it had before (maybe at another
        address), so full health is reached only by a check passed since."""
        row = self.stats().get(color, {})
        try:
            full = int(row["check_rise"]) + int(row["check_fall"]) - 1
            ok = int(row["check_health"]) >= full and row["check_status"].startswith("L7OK")
        except (KeyError, ValueError):
            return False, "no health check reported"
        return ok, f"{row.get('check_status') or 'no check yet'} {row.get('check_code') or ''}".strip()

    def switch_to(self, color: str, log: Log = _log_nothing) -> SwitchResult:
        """Make ``color`` the live one: it leaves maintenance as draining (checked, no traffic), must pass
        haproxy's /health check, then takes traffic; the old color drains (finishes its requests, up to
        drain_timeout) and goes to maintenance. Read back from haproxy before returning."""
        color = check_color(color)
        started = time.monotonic()
        states = self.states()
        previous = [c for c in COLORS if c != color and states[c].live]
        old = previous[0] if previous else None
        if states[color].maint:
            self._set(f"set server {BACKEND}/{color} state drain")
        deadline = time.monotonic() + self.check_timeout
        while True:
            healthy, last = self._healthy(color)
            if healthy and self.states()[color].op_state == RUNNING:
                break
            if time.monotonic() > deadline:
                if not states[color].live:
                    self._set(f"set server {BACKEND}/{color} state maint")
                raise AcciOpsError(f"{color} at {':'.join(map(str, self.servers[color]))} did not pass haproxy's "
                                   f"/health check within {self.check_timeout:g} s (last check: {last}); "
                                   f"traffic stays on {old or 'nothing'}")
            time.sleep(self.poll_seconds)
        self._set(f"set server {BACKEND}/{color} state ready")
        drained = True
        for other in COLORS:
            if other == color or states[other].maint:
                continue
            self._set(f"set server {BACKEND}/{other} state drain")
            drained = self._wait_drained(other) and drained
            self._set(f"set server {BACKEND}/{other} state maint")
        after = self.states()
        if not after[color].live or any(not after[c].maint for c in COLORS if c != color):
            raise AcciOpsError(f"haproxy did not take the switch to {color}: "
                               + ", ".join(after[c].describe() for c in COLORS))
        self._write_config(color)
        seconds = round(time.monotonic() - started, 3)
        log(f"haproxy: switched {old or 'nothing'} -> {color} in {seconds:.2f} s"
            + ("" if drained else f" (the old color still had requests after {self.drain_timeout:g} s)"))
        return SwitchResult(color, old, seconds, drained)

    def _wait_drained(self, color: str) -> bool:
        deadline = time.monotonic() + self.drain_timeout
        while time.monotonic() < deadline:
            try:
                if int(self.stats().get(color, {}).get("scur") or 0) == 0:
                    return True
            except ValueError:
                return False
            time.sleep(self.poll_seconds)
        return False

    def set_address(self, color: str, host: str, port: int, log: Log = _log_nothing) -> None:
        """Point ``color`` at ``host:port`` in the running haproxy (no reload) and in its config."""
        color = check_color(color)
        host = check_host(host, f"address of {color}")
        port = check_port(port, f"port of {color}")
        line = f"set server {BACKEND}/{color} addr {host} port {port}"
        answer = self.command(line).strip()
        if not (answer.startswith("IP changed") or answer.startswith("no need to change")):
            raise AcciOpsError(f"haproxy refused `{line}`: {answer or 'no answer'}")
        now = self.states()[color]
        if (now.address, now.port) != (host, port):
            raise AcciOpsError(f"haproxy still has {color} at {now.address}:{now.port} after `{line}`")
        self.servers = {**self.servers, color: (host, port)}
        self._write_config(self.active())
        log(f"haproxy: {color} now at {host}:{port}")


__all__ = ["BACKEND", "COLORS", "HaproxySwitch", "ServerState", "SwitchResult", "check_color", "check_port",
           "parse_servers_state"]
