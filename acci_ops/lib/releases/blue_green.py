"""Blue/green releases on Compose: two Compose projects, ``<project>-blue`` and ``<project>-green``, behind
one haproxy (``acci_ops.lib.releases.proxy``; its docstring says why haproxy).

A deploy goes to the idle color only, on that color's own port, while the live color keeps serving. The
idle color must pass the release analysis on its own URL (not through the proxy, so nothing the live
color answers can make it pass) before haproxy moves traffic to it; a failed verdict removes the idle
color and raises DeployFailed with traffic never moved. After a switch the old color keeps running for
``rollback_window_minutes`` (default 30): a rollback inside the window is a switch back, seconds, no
image pulled and no container started. ``expire`` removes it after the window; from then on a rollback
is a deploy of the earlier digest to the idle color, analysis and switch included, like any release.

Which color is live is asked of haproxy (``show servers state``) and what each color runs of its Compose
project, so a restarted acci_ops process finds both. The one thing neither of them knows is when the
switch happened, which starts the rollback window: it is recorded (0600) next to haproxy's config.

Each color publishes the app on its own port through the shipped Compose files'
``${ACCI_FRAMEWORK_PORT}``, given in the compose commands' environment. With the shipped files each
color project also gets its own db and cache; a real blue/green stack shares one database, so give
``files`` that wire the app to the shared database instead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from acci_ops.lib.core.commands import COMPOSE_ENV, CommandFailed, CommandResult, CommandTimeout, run_command
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.platform.backends import AppRuntime
from acci_ops.lib.releases.analysis import AnalysisSpec, Target, run_analysis
from acci_ops.lib.releases.compose_release import DEFAULT_FILES, DEFAULT_SERVICE, ComposeRelease
from acci_ops.lib.releases.deployers import (
    CurrentState,
    DeployFailed,
    DeployResult,
    Log,
    ReleaseTarget,
    RollbackTarget,
    Runner,
    parse_image_ref,
    shown,
    write_private,
)
from acci_ops.lib.releases.proxy import COLORS, HaproxySwitch, check_color, check_port

DEFAULT_PORTS = {"blue": 8081, "green": 8082}
RECORD_NAME = "switch.json"
DOWN_TIMEOUT = 300

Analyse = Callable[[Target], Any]  # returns an AnalysisResult, or anything with .verdict (and .reason)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def other(color: str) -> str:
    return COLORS[1 - COLORS.index(check_color(color))]


def analysis_gate(spec: AnalysisSpec, *, log: Log | None = None) -> Analyse:
    """The usual ``analyse``: the release analysis of ``spec`` on the color's own URL."""
    return lambda target: run_analysis(spec, target, log=log)


def verdict_of(result: object) -> tuple[str, str]:
    """(verdict, reason) of what ``analyse`` returned: an AnalysisResult, a verdict string or a bool."""
    if isinstance(result, bool):
        return ("passed", "") if result else ("failed", "")
    if isinstance(result, str):
        return result, ""
    verdict = getattr(result, "verdict", None)
    if not isinstance(verdict, str):
        raise ConfigError(f"the analysis returned {shown(result)}, not a verdict (an AnalysisResult, 'passed', ...)")
    return verdict, str(getattr(result, "reason", "") or "")


def with_port(runner: Runner, port: int) -> Runner:
    """``runner`` giving every compose command the color's ``ACCI_FRAMEWORK_PORT`` (the port is not a secret,
    but the environment is where the shipped files read it)."""
    def run(argv: Sequence[str], *args: Any, env: Mapping[str, str] | None = None, **kwargs: Any) -> CommandResult:
        return runner(argv, *args, env={**(env or {}), "ACCI_FRAMEWORK_PORT": str(port)}, **kwargs)
    return run


def compose_env(runtime: AppRuntime | None) -> dict[str, str]:
    """What the Compose files interpolate (``down`` reads them too), as ComposeRelease passes it."""
    if runtime is None:
        return {}
    db = runtime.database
    return {**runtime.env(), "POSTGRES_USER": db.user or "acci", "POSTGRES_DB": db.dbname,
            "POSTGRES_PASSWORD": db.password or ""}


@dataclass(frozen=True)
class SwitchRecord:
    """The last switch: to ``live`` from ``previous`` at ``switched_at``; ``removed`` once the old color
    was taken down (by expire, or by a failed deploy)."""

    live: str
    previous: str | None
    switched_at: datetime
    image_ref: str | None = None
    previous_image_ref: str | None = None
    removed: bool = False

    def to_json(self) -> str:
        return json.dumps({"live": self.live, "previous": self.previous, "switched_at": self.switched_at.isoformat(),
                           "image_ref": self.image_ref, "previous_image_ref": self.previous_image_ref,
                           "removed": self.removed}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> SwitchRecord:
        try:
            data = json.loads(text)
            when = datetime.fromisoformat(data["switched_at"])
            record = cls(check_color(data["live"]), data["previous"] and check_color(data["previous"]),
                         when if when.tzinfo else when.replace(tzinfo=UTC), data.get("image_ref"),
                         data.get("previous_image_ref"), bool(data.get("removed")))
        except (ValueError, KeyError, TypeError, AcciOpsError) as exc:
            raise AcciOpsError(f"the blue/green switch record {where} is not readable ({type(exc).__name__}); "
                               "delete it to start the rollback window now") from None
        return record


@dataclass
class BlueGreenRelease(ReleaseTarget):
    """Blue/green on one Docker host. ``project``: the base name (the colors are ``<project>-blue`` and
    ``-green``); ``run_dir``: a persistent private directory for haproxy, the overrides and the switch
    record; ``proxy_port``: where haproxy serves the app; ``ports``: each color's own published port;
    ``analyse``: judges a color on its own URL before traffic moves to it."""

    project: str
    run_dir: str
    proxy_port: int
    analyse: Analyse
    ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    files: Sequence[str] = DEFAULT_FILES
    service: str = DEFAULT_SERVICE
    host: str = "127.0.0.1"
    compose: Sequence[str] | None = None
    runner: Runner = run_command
    timeout_seconds: int = 600
    rollback_window_minutes: float = 30
    haproxy: str = "haproxy"
    check_timeout: float = 30.0
    drain_timeout: float = 30.0
    check_interval_ms: int = 500
    now: Callable[[], datetime] = _utc_now
    backend = "compose-blue-green"
    colors: dict[str, ComposeRelease] = field(default_factory=dict, init=False)
    switch: HaproxySwitch = field(init=False)

    def __post_init__(self) -> None:
        if not callable(self.analyse):
            raise ConfigError("blue/green needs analyse, a function judging a color by its URL (see analysis_gate)")
        if not isinstance(self.ports, Mapping) or sorted(self.ports) != sorted(COLORS):
            raise ConfigError(f"blue/green ports must name blue and green, got {shown(self.ports)}")
        ports = {c: check_port(self.ports[c], f"port of the {c} color") for c in COLORS}
        check_port(self.proxy_port, "proxy port")
        if len({*ports.values(), self.proxy_port}) != 3:
            raise ConfigError(f"the proxy port and the two colors' ports must differ, got proxy {self.proxy_port}, "
                              f"blue {ports['blue']}, green {ports['green']}")
        window = self.rollback_window_minutes
        if isinstance(window, bool) or not isinstance(window, int | float) or window < 0:
            raise ConfigError(f"rollback_window_minutes must be a number of minutes >= 0, got {shown(window)}")
        self.ports = ports
        base = Path(self.run_dir)
        self.colors = {c: ComposeRelease(project=f"{self.project}-{c}", files=self.files, service=self.service,
                                         app_url=f"http://{self.host}:{ports[c]}", compose=self.compose,
                                         runner=with_port(self.runner, ports[c]), timeout_seconds=self.timeout_seconds,
                                         run_dir=str(base / c))
                       for c in COLORS}
        self.switch = HaproxySwitch(base / "haproxy", self.proxy_port, {c: (self.host, ports[c]) for c in COLORS},
                                    haproxy=self.haproxy, check_timeout=self.check_timeout,
                                    drain_timeout=self.drain_timeout, check_interval_ms=self.check_interval_ms)

    def describe(self) -> str:
        return (f"blue/green compose projects {self.project}-blue and {self.project}-green (service {self.service}) "
                f"behind haproxy on {self.switch.url}")

    # --- state ---------------------------------------------------------------------------------

    @property
    def record_path(self) -> Path:
        return Path(self.run_dir) / RECORD_NAME

    def record(self) -> SwitchRecord | None:
        try:
            text = self.record_path.read_text()
        except FileNotFoundError:
            return None
        return SwitchRecord.from_json(text, str(self.record_path))

    def _save(self, record: SwitchRecord) -> None:
        Path(self.run_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.record_path, record.to_json())

    def proxy(self, log: Log) -> HaproxySwitch:
        """haproxy, started if it does not run, with each color at its configured port."""
        Path(self.run_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.switch.start(log)
        states = self.switch.states()
        for color in COLORS:
            if (states[color].address, states[color].port) != (self.host, self.ports[color]):
                self.switch.set_address(color, self.host, self.ports[color], log)
        return self.switch

    def live(self, log: Log) -> str | None:
        """The live color, as haproxy says."""
        return self.proxy(log).active()

    def current(self, log: Log) -> CurrentState:
        live = self.live(log)
        if live is None:
            return CurrentState(None, None, "absent")
        return self.colors[live].current(log)

    def kept(self, log: Log) -> tuple[str, str | None, datetime] | None:
        """The old color kept for a rollback: (color, the digest it runs, when it expires); None when gone."""
        live = self.live(log)
        if live is None:
            return None
        old = other(live)
        state = self.colors[old].current(log)
        if state.status == "absent":
            return None
        record = self.record()
        since = record.switched_at if record and record.live == live else self.now()
        return old, state.image_ref, since + timedelta(minutes=self.rollback_window_minutes)

    # --- changing state ------------------------------------------------------------------------

    def remove(self, color: str, log: Log, *, runtime: AppRuntime | None = None) -> None:
        """``down`` the color's project (its named volumes stay): never the live one."""
        color = check_color(color)
        if self.switch.running() and self.switch.active() == color:
            raise AcciOpsError(f"the {color} color is live; switch away from it before removing it")
        target = self.colors[color]
        argv = [*target.flavor(log).argv, "--project-name", target.project]
        for path in target.files:
            argv += ["--file", str(path)]
        argv += ["down", "--remove-orphans"]
        try:
            target.runner(argv, env=compose_env(runtime), timeout=DOWN_TIMEOUT, on_line=log, allow_env=COMPOSE_ENV)
        except CommandTimeout:
            raise AcciOpsError(f"compose down of project {target.project} did not finish within {DOWN_TIMEOUT} s") \
                from None
        except CommandFailed as exc:
            raise AcciOpsError(f"compose down of project {target.project} failed: {exc}") from None
        log(f"blue/green: removed the {color} color (compose project {target.project})")

    def _abandon(self, color: str, live: str | None, message: str, previous: str | None, log: Log,
                 runtime: AppRuntime | None, analysis: Any = None) -> DeployFailed:
        """The idle color did not make it: take it down, say that traffic never moved."""
        try:
            self.remove(color, log, runtime=runtime)
            removed = f"the {color} color was removed"
        except AcciOpsError as exc:
            removed = f"removing the {color} color failed too ({exc})"
        return DeployFailed(f"{message}; traffic never moved from {live or 'nothing'}; {removed}",
                            previous_image_ref=previous, rolled_back=True, analysis=analysis)

    def deploy(self, image_ref: str, runtime: AppRuntime | None, log: Log) -> DeployResult:
        """Deploy to the idle color, judge it on its own port, switch only when it passed."""
        image = parse_image_ref(image_ref)
        started = time.monotonic()
        proxy = self.proxy(log)
        live = proxy.active()
        idle = other(live) if live else COLORS[0]
        previous = self.colors[live].current(log).image_ref if live else None
        waiting = self.colors[idle].current(log)
        if waiting.status != "absent":
            log(f"blue/green: the idle {idle} color still runs {waiting.image_ref or waiting.status} (an older "
                "release kept for rollback); it is replaced")
        log(f"blue/green: deploying {image} to the idle {idle} color ({self.colors[idle].url}); "
            f"{live or 'no color'} stays live")
        try:
            self.colors[idle].deploy(str(image), runtime, log)
        except DeployFailed as exc:
            raise self._abandon(idle, live, f"the {idle} color did not come up with {image}: {exc}", previous, log,
                                runtime) from None
        target = Target(self.colors[idle].url)
        try:
            judged = self.analyse(target)
            verdict, reason = verdict_of(judged)
        except AcciOpsError as exc:
            raise self._abandon(idle, live, f"the analysis of {image} on the {idle} color could not run: {exc}",
                                previous, log, runtime) from None
        if verdict != "passed":
            raise self._abandon(idle, live, f"the analysis of {image} on the {idle} color ({target.app_url}) "
                                f"{verdict}" + (f": {reason}" if reason else ""), previous, log, runtime, judged)
        log(f"blue/green: {idle} passed its analysis on {target.app_url}; switching traffic")
        try:
            switched = proxy.switch_to(idle, log)
        except AcciOpsError as exc:
            raise self._abandon(idle, live, f"haproxy did not switch to {idle}: {exc}", previous, log,
                                runtime) from None
        self._save(SwitchRecord(idle, live, self.now(), str(image), previous))
        seconds = round(time.monotonic() - started, 3)
        log(f"blue/green: {idle} is live with {image} (switch {switched.seconds:.2f} s); {live or 'nothing'} is kept "
            f"{self.rollback_window_minutes:g} min for a rollback")
        return DeployResult(proxy.url, None, previous, seconds, str(image), analysis=judged)

    def rollback(self, to: RollbackTarget | None, log: Log, *, runtime: AppRuntime | None = None) -> DeployResult:
        """Inside the window (the old color still runs ``to``, or ``to`` is None): switch back. Already
        live: nothing to do. Otherwise the old color is gone: deploy ``to`` again, analysis included."""
        if to is not None and to.image_ref is None:
            raise ConfigError(f"blue/green {self.project} keeps no revisions: roll back to an image_ref "
                              "(the previous_image_ref a deploy returned)")
        started = time.monotonic()
        proxy = self.proxy(log)
        live = proxy.active()
        running = self.colors[live].current(log).image_ref if live else None
        if to is not None and live is not None and running == to.image_ref:
            log(f"blue/green: {live} already serves {to.image_ref}; nothing to roll back")
            return DeployResult(proxy.url, None, running, 0.0, running)
        kept = self.kept(log)
        if kept is not None and kept[1] is not None and (to is None or kept[1] == to.image_ref):
            old, image, _ = kept
            switched = proxy.switch_to(old, log)
            self._save(SwitchRecord(old, live, self.now(), image, running))
            log(f"blue/green: rolled back by switching {live} -> {old} ({image}) in {switched.seconds:.2f} s")
            return DeployResult(proxy.url, None, running, round(time.monotonic() - started, 3), image)
        if to is None:
            raise AcciOpsError(f"blue/green {self.project}: no older color is kept (its rollback window is over); "
                               "roll back to an image_ref, which is deployed again")
        why = "the kept color runs " + (kept[1] or "an unpinned image") if kept else "no older color is kept"
        log(f"blue/green: {why}; rolling back by deploying {to.image_ref} again")
        return self.deploy(to.image_ref, runtime, log)

    def expire(self, now: datetime | None = None, log: Log = print, *,
               runtime: AppRuntime | None = None) -> str | None:
        """Remove the old color once ``rollback_window_minutes`` have passed since the switch; the line
        saying so, or None. Without a switch record the window starts now (it is written)."""
        now = now or self.now()
        kept = self.kept(log)
        if kept is None:
            return None
        old, image, _ = kept
        record = self.record()
        live = other(old)
        if record is None or record.live != live:
            self._save(SwitchRecord(live, old, now, None, image))
            log(f"blue/green: no record of when {live} went live; the {old} color's rollback window starts now")
            return None
        until = record.switched_at + timedelta(minutes=self.rollback_window_minutes)
        if now < until:
            return None
        self.remove(old, log, runtime=runtime)
        self._save(SwitchRecord(record.live, record.previous, record.switched_at, record.image_ref,
                                record.previous_image_ref, removed=True))
        line = (f"removed the {old} color ({image or 'unpinned'}): its rollback window of "
                f"{self.rollback_window_minutes:g} min ended at {until.isoformat(timespec='seconds')}")
        log(f"blue/green: {line}")
        return line

    def recover_stuck(self, log: Log, *, last_image_ref: str | None = None,
                      runtime: AppRuntime | None = None) -> str | None:
        """The live color is repaired like a Compose project; a stuck idle color is only removed."""
        live = self.live(log)
        if live is None:
            return None
        line = self.colors[live].recover_stuck(log, last_image_ref=last_image_ref, runtime=runtime)
        idle = other(live)
        if self.colors[idle].current(log).stuck:
            self.remove(idle, log, runtime=runtime)
            line = (line + "; " if line else "") + f"removed the idle {idle} color left half deployed"
        return line


__all__ = ["BlueGreenRelease", "DEFAULT_PORTS", "SwitchRecord", "analysis_gate", "other", "verdict_of"]
