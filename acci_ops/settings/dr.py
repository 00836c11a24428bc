"""The DR section: how an environment is deployed and verified, for drills and on-call recovery.
Off (None) until ``ACCI_PLATFORM`` is set, or the environment has ``dr:`` in the file."""

from __future__ import annotations

from dataclasses import dataclass

from acci_ops.lib.core.errors import ConfigError
from acci_ops.settings._fields import setting
from acci_ops.settings._registry import Section, register

PLATFORMS = ("local", "helm", "compose")
DEFAULT_COMPOSE_FILES = ("deploy/compose/docker-compose.yml", "deploy/compose/docker-compose.prod.yml")


@dataclass(frozen=True)
class DrSpec:
    """How an environment is deployed and verified, for DR drills and on-call recovery."""

    platform: str = setting("local", var="ACCI_PLATFORM",
                            help="How ACCI Framework is deployed: local, helm or compose.")
    app_url: str | None = setting(None, var="ACCI_APP_URL",
                                  help="The environment's public app URL, verified after a recovery.")
    redis_url_env: str | None = setting(None, var="ACCI_REDIS_URL",
                                        help="The environment's Redis (FLUSHALL after a restore).")
    drill_redis_url_env: str | None = setting(None, var="ACCI_DRILL_REDIS_URL",
                                              help="A Redis database for drills, never production's.")
    local_command: str | None = setting(None, var="ACCI_LOCAL_APP_COMMAND",
                                        help="Command that starts the app (local backend; {port} is replaced).")
    helm_bin: str = setting("helm", var="ACCI_HELM_BIN", inherit=True, help="helm binary.")
    helm_release: str = setting("acci-framework", var="ACCI_HELM_RELEASE", help="Helm release name.")
    helm_namespace: str = setting("acci", var="ACCI_HELM_NAMESPACE", help="Namespace of the environment's release.")
    helm_chart: str = setting("deploy/helm/acci-framework", var="ACCI_HELM_CHART",
                              help="Chart directory (relative to the acci_ops checkout unless absolute).")
    helm_dr_values: str = setting("deploy/helm/dr-values.yaml", var="ACCI_HELM_DR_VALUES",
                                  help="Values file for DR installs.")
    helm_drill_values: str = setting("deploy/helm/drill-values.yaml", var="ACCI_HELM_DRILL_VALUES",
                                     help="Values file for drill installs.")
    helm_drill_app_url: str = setting("http://acci-framework.{namespace}.svc.cluster.local:8080",
                                      var="ACCI_HELM_DRILL_APP_URL",
                                      help="URL of a drill release; {namespace} is replaced.")
    compose_files: tuple[str, ...] = setting(DEFAULT_COMPOSE_FILES, var="ACCI_COMPOSE_FILES",
                                             help="Compose files (base, then the prod override).")
    compose_project: str = setting("acci", var="ACCI_COMPOSE_PROJECT", help="Compose project of the environment.")
    compose_drill_app_url: str = setting("http://127.0.0.1:8080", var="ACCI_COMPOSE_DRILL_APP_URL",
                                         help="URL of a drill project (its port is replaced by the published one).")
    required_metrics: tuple[str, ...] = setting((), var="ACCI_REQUIRED_METRICS",
                                                help="Metric names /metrics must expose.")
    rto_target_minutes: float = setting(30, var="ACCI_RTO_TARGET_MINUTES", help="A drill fails when RTO exceeds this.")
    rpo_target_hours: float = setting(26, var="ACCI_RPO_TARGET_HOURS", help="A drill fails when RPO exceeds this.")
    health_deadline_seconds: float = setting(300, var="ACCI_HEALTH_DEADLINE_SECONDS",
                                             help="How long /health may take to answer 2xx.")

    def __post_init__(self) -> None:
        if self.platform not in PLATFORMS:
            raise ConfigError(f"platform {self.platform!r} is not a backend; use one of {', '.join(PLATFORMS)}")
        if self.platform == "local" and not self.local_command:
            raise ConfigError("the local platform needs ACCI_LOCAL_APP_COMMAND (the command that starts the app)")
        if not self.drill_redis_url_env:
            raise ConfigError("DR needs a Redis for drills: set ACCI_DRILL_REDIS_URL (never production's Redis)")


register(Section(name="dr", spec=DrSpec, per_environment=True, enabled_by="ACCI_PLATFORM"))
