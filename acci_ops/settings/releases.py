"""The releases sections: how each environment takes a new version (``releases``, per environment)
and the order versions travel through the environments (``promotion``, for the whole code location).

An environment releases with the platform its DR section already declares (helm or compose): the
section here only says how a release is judged and guarded, unless it names Compose files of its own
(``compose_files``): then releases go to that Compose project whatever DR drives (``./run dev``, whose
DR stand-in is a local process, releases the app's images this way). Defaults follow from whether the
environment is *protected* (by default: the one named ``production``): a protected environment
needs a typed confirmation, gets a backup before each release, sends no synthetic load, promotes
nothing by itself and rolls back an inconclusive analysis; any other (staging) releases by itself,
sends a small load when the app gets no traffic and holds an inconclusive version unverified.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.releases.analysis import AnalysisSpec, LoadSpec, default_metrics
from acci_ops.lib.releases.windows import PromotionWindows
from acci_ops.settings._fields import check_env_fields, file_keys, load_section, setting
from acci_ops.settings._registry import Section, register

STRATEGIES = ("rolling", "blue_green", "canary")
ON_INCONCLUSIVE = ("hold", "rollback")
PROTECTED_BY_DEFAULT = "production"
DEFAULT_CANARY_STEPS = (10, 50, 100)
# One color of a blue/green release: the app alone (acci_ops/deploy/compose/docker-compose.blue-green.yml).
BLUE_GREEN_FILE = "deploy/compose/docker-compose.blue-green.yml"
# Keys of `releases:` in the environments file that are not flat fields: parsed by their engines.
NESTED_KEYS = ("analysis", "windows")


@dataclass(frozen=True)
class ReleasesSpec:
    """How the environment takes a new version of ACCI Framework: the strategy, the analysis that
    judges it, the promotion windows and the guards. Releases exist for the environments whose DR
    section names a helm or compose platform (the same deployment DR recovers)."""

    strategy: str = setting("rolling", var="ACCI_RELEASE_STRATEGY", choices=STRATEGIES,
                            help="rolling (the platform's own update), blue_green (compose: two projects behind "
                                 "haproxy) or canary (helm: weighted traffic to a canary Deployment).")
    protected: bool | None = setting(
        None, var="ACCI_RELEASE_PROTECTED",
        help="A release needs confirm = the environment's name, a backup is taken first, and nothing is "
             "released automatically unless `automatic` says so. Unset: true for an environment named production.")
    automatic: bool | None = setting(
        None, var="ACCI_RELEASE_AUTOMATIC",
        help="Release versions by themselves: the first environment of the promotion order when a version's "
             "image checks pass; a later one after the soak on the one before. Unset: on unless protected.")
    soak_minutes: int = setting(60, var="ACCI_RELEASE_SOAK_MINUTES", minimum=0,
                                help="How long a version must stay verified on the previous environment before "
                                     "an automatic promotion here.")
    on_inconclusive: str | None = setting(
        None, var="ACCI_RELEASE_ON_INCONCLUSIVE", choices=ON_INCONCLUSIVE,
        help="What an analysis without data does: hold (stay deployed, not verified, alert) or rollback. "
             "Unset: rollback when protected, hold otherwise.")
    load: bool | None = setting(
        None, var="ACCI_RELEASE_LOAD",
        help="Send a small bounded load (60 GETs at 10/s to the app URL only) during the analysis, so an app "
             "without traffic still gives data. Unset: on unless protected.")
    backup_first: bool | None = setting(
        None, var="ACCI_RELEASE_BACKUP_FIRST",
        help="Take a backup of the environment's database before deploying (its key is recorded on the "
             "release). Unset: on when protected.")
    metrics_url: str | None = setting(None, var="ACCI_RELEASE_METRICS_URL",
                                      help="The app's /metrics when it is not <app URL>/metrics (a management port).")
    prometheus_url: str | None = setting(None, var="ACCI_RELEASE_PROMETHEUS_URL",
                                         help="A Prometheus server for `prometheus` (PromQL) analysis metrics.")
    analysis_interval_seconds: float = setting(10, var="ACCI_RELEASE_ANALYSIS_INTERVAL_SECONDS", in_file=False,
                                               minimum=0, help="Seconds between two measurements.")
    analysis_count: int = setting(6, var="ACCI_RELEASE_ANALYSIS_COUNT", in_file=False, minimum=1,
                                  help="Measurements in the analysis window.")
    max_error_ratio: float = setting(0.01, var="ACCI_RELEASE_MAX_ERROR_RATIO", in_file=False,
                                     help="Largest accepted share of 5xx answers between two scrapes (0.01 = 1 %).")
    latency_p95_seconds: float = setting(0.5, var="ACCI_RELEASE_LATENCY_P95_SECONDS", in_file=False,
                                         help="Largest accepted p95 request latency, from the app's histogram.")
    allow_windows: tuple[str, ...] = setting(
        (), var="ACCI_RELEASE_ALLOW_WINDOWS", in_file=False,
        help="Promotion windows releases may happen in, e.g. `mon-fri 09:00-16:00` (comma-separated; unset: "
             "always). In ACCI_TIMEZONE.")
    deny_windows: tuple[str, ...] = setting(
        (), var="ACCI_RELEASE_DENY_WINDOWS", in_file=False,
        help="Windows no release may happen in (deny wins over allow), e.g. `fri 15:00-mon 08:00`.")
    rollback_window_minutes: int = setting(30, var="ACCI_RELEASE_ROLLBACK_WINDOW_MINUTES", minimum=0,
                                           help="blue_green: how long the previous color stays up, so a rollback "
                                                "is a switch back.")
    blue_green_ports: tuple[str, ...] = setting(
        ("8081", "8082"), var="ACCI_RELEASE_BLUE_GREEN_PORTS",
        help="blue_green: the blue and the green color's own ports on 127.0.0.1 (each color is judged there "
             "before traffic moves to it); haproxy serves the app on the port of the environment's app URL.")
    blue_green_files: tuple[str, ...] = setting(
        (BLUE_GREEN_FILE,), var="ACCI_RELEASE_BLUE_GREEN_FILES",
        help="blue_green: the Compose files of one color: the app alone, wired to the environment's one "
             "database and Redis (the shipped file; the DR files start a database per project).")
    blue_green_dir: str | None = setting(
        None, var="ACCI_RELEASE_BLUE_GREEN_DIR",
        help="blue_green: a persistent private directory for haproxy's config, socket and pidfile and the "
             "switch record. Unset: $DAGSTER_HOME/acci_ops/blue_green/<environment>.")
    compose_files: tuple[str, ...] = setting(
        (), var="ACCI_RELEASE_COMPOSE_FILES",
        help="Compose files releases deploy with instead of the DR platform (empty: releases use the DR "
             "platform, helm or compose). For an environment whose releases go to a Compose project DR "
             "does not drive.")
    compose_project: str | None = setting(
        None, var="ACCI_RELEASE_COMPOSE_PROJECT",
        help="With compose_files: their Compose project (default: the DR section's compose_project).")
    app_url: str | None = setting(
        None, var="ACCI_RELEASE_APP_URL",
        help="With compose_files: where that project serves the app, judged by the analysis (default: the "
             "DR section's app_url).")
    canary_steps: tuple[str, ...] = setting(tuple(str(s) for s in DEFAULT_CANARY_STEPS),
                                            var="ACCI_RELEASE_CANARY_STEPS",
                                            help="canary: the traffic weights (percent) stepped through, each "
                                                 "analysed, ending at 100.")
    timeout_seconds: int = setting(600, var="ACCI_RELEASE_TIMEOUT_SECONDS", minimum=30,
                                   help="How long a deploy (helm --timeout, compose --wait) may take to become "
                                        "healthy.")
    # Built from the flat fields above, or from `analysis:` / `windows:` in the environments file.
    analysis: AnalysisSpec | None = setting(None, resource=False,
                                            help="The analysis (file: `releases.analysis`, see docs/releases.md).")
    windows: tuple[tuple[object, ...], tuple[object, ...]] | None = setting(
        None, resource=False,
        help="The allow and deny windows (file: `releases.windows.allow` / `.deny`).")

    def __post_init__(self) -> None:
        steps = []
        for raw in self.canary_steps:
            try:
                steps.append(int(str(raw).strip()))
            except ValueError:
                raise ConfigError(f"canary_steps {raw!r} is not a whole percentage (e.g. 10, 50, 100)") from None
        if not steps or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise ConfigError(f"canary_steps {', '.join(map(str, steps))} must rise strictly from above 0 to 100, "
                              "e.g. 10, 50, 100")
        ports = []
        for raw in self.blue_green_ports:
            text = str(raw).strip()
            if not text.isdigit() or not 0 < int(text) < 65536:
                raise ConfigError(f"blue_green_ports {raw!r} is not a TCP port (1..65535)")
            ports.append(int(text))
        if len(ports) != 2 or ports[0] == ports[1]:
            raise ConfigError(f"blue_green_ports must be two different ports, blue's then green's (e.g. 8081, 8082), "
                              f"got {', '.join(map(str, ports)) or 'none'}")
        if not self.blue_green_files:
            raise ConfigError("blue_green_files is empty: give the Compose files of one color (default: the shipped "
                              f"{BLUE_GREEN_FILE})")
        if self.analysis is None:
            analysis = AnalysisSpec(
                interval_seconds=self.analysis_interval_seconds, count=self.analysis_count,
                metrics=default_metrics(self.latency_p95_seconds, max_error_ratio=self.max_error_ratio))
            object.__setattr__(self, "analysis", analysis)
        if self.windows is None:
            object.__setattr__(self, "windows", (tuple(self.allow_windows), tuple(self.deny_windows)))
        # A window that does not parse stops the code location here (the zone is checked again later).
        PromotionWindows.parse(list(self.windows[0]), list(self.windows[1]), "UTC", "release windows")

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(int(str(s).strip()) for s in self.canary_steps)

    @property
    def color_ports(self) -> dict[str, int]:
        blue, green = (int(str(p).strip()) for p in self.blue_green_ports)
        return {"blue": blue, "green": green}

    def blue_green_run_dir(self, environment: str, dagster_home: str | None = None) -> str:
        """Where haproxy and the switch record live: kept across runs (haproxy outlives the run).
        ``dagster_home``: default the DAGSTER_HOME the run sees (Dagster's own variable, read here)."""
        if self.blue_green_dir:
            return self.blue_green_dir
        dagster_home = dagster_home or os.environ.get("DAGSTER_HOME")
        if not dagster_home:
            raise ConfigError(f"environment {environment!r} releases blue_green but neither "
                              "ACCI_RELEASE_BLUE_GREEN_DIR nor DAGSTER_HOME is set: name a persistent directory for "
                              "haproxy and the switch record")
        return os.path.join(dagster_home, "acci_ops", "blue_green", environment)

    def is_protected(self, environment: str) -> bool:
        return self.protected if self.protected is not None else environment == PROTECTED_BY_DEFAULT

    def is_automatic(self, environment: str) -> bool:
        return self.automatic if self.automatic is not None else not self.is_protected(environment)

    def inconclusive_action(self, environment: str) -> str:
        if self.on_inconclusive:
            return self.on_inconclusive
        return "rollback" if self.is_protected(environment) else "hold"

    def takes_backup(self, environment: str) -> bool:
        return self.backup_first if self.backup_first is not None else self.is_protected(environment)

    def sends_load(self, environment: str) -> bool:
        return self.load if self.load is not None else not self.is_protected(environment)

    def analysis_for(self, environment: str) -> AnalysisSpec:
        """The analysis with its load step: the configured one, a default one when load is on and
        none was configured, none when load is off."""
        spec = self.analysis or AnalysisSpec()
        if not self.sends_load(environment):
            return replace(spec, load=None)
        return spec if spec.load is not None else replace(spec, load=LoadSpec())

    def promotion_windows(self, timezone: str, environment: str) -> PromotionWindows:
        allow, deny = self.windows or ((), ())
        return PromotionWindows.parse(list(allow), list(deny), timezone, f"environment {environment!r}")


def _from_file(body: Mapping[str, object], where: str, environ: Mapping[str, str]) -> ReleasesSpec:
    """``releases:``: flat fields, plus ``analysis:`` (lib/releases/analysis.AnalysisSpec.from_mapping)
    and ``windows: {allow: [...], deny: [...]}``."""
    raw = body.get("releases")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"releases in {where} must be a mapping")
    allowed = file_keys(ReleasesSpec) | set(NESTED_KEYS)
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise ConfigError(f"releases in {where} has unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    check_env_fields(raw, where, "releases.")
    given: dict[str, object] = {}
    if raw.get("analysis") is not None:
        given["analysis"] = AnalysisSpec.from_mapping(raw["analysis"], f"{where}: releases.analysis")
    if raw.get("windows") is not None:
        windows = raw["windows"]
        if not isinstance(windows, dict) or set(windows) - {"allow", "deny"}:
            raise ConfigError(f"{where}: releases.windows must be a mapping with optional allow and deny lists")
        for kind in ("allow", "deny"):
            items = windows.get(kind) or []
            if not isinstance(items, list):
                raise ConfigError(f"{where}: releases.windows.{kind} must be a list of windows")
        allow, deny = tuple(windows.get("allow") or ()), tuple(windows.get("deny") or ())
        PromotionWindows.parse(list(allow), list(deny), "UTC", f"{where}: releases.windows")
        given["windows"] = (allow, deny)
    flat = {k: v for k, v in raw.items() if k not in NESTED_KEYS}
    return load_section(ReleasesSpec, environ, flat, where=where, label=lambda k: f"releases.{k}", given=given)


@dataclass(frozen=True)
class PromotionSpec:
    """The order a version travels through the environments: each takes only versions verified on
    the one before it."""

    promotion_order: tuple[str, ...] | None = setting(
        None, var="ACCI_PROMOTION_ORDER",
        help="Environment names, first to last (environments file: top-level `promotion_order: [staging, "
             "production]`). Unset: the order the environments file declares them in; empty list: no order.")



register(Section(name="releases", spec=ReleasesSpec, per_environment=True, from_file=_from_file))
register(Section(name="promotion", spec=PromotionSpec, per_environment=False,
                 file_keys=frozenset({"promotion_order"})))
