"""The per-environment DR resource (``acci_dr_<env>``): how the environment is deployed and verified."""

from __future__ import annotations

from pydantic import Field

from acci_ops.defs._shared import resource_from_spec, spec_resource
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.platform.backends import ComposePlatform, HelmPlatform, LocalPlatform, Platform
from acci_ops.lib.platform.paths import deploy_dir
from acci_ops.lib.platform.paths import resolve_deploy_path as _path
from acci_ops.settings import DrSpec, EnvironmentSpec

PROJECT_ROOT = deploy_dir().parent  # holds deploy/ (package data): the same in a checkout and installed


class AcciDisasterRecovery(spec_resource(DrSpec, "AcciDisasterRecoveryFields",
                                         environment=(str, Field(description="Environment name.")))):
    """How one environment is deployed and verified, for drills and on-call recovery."""

    def platform_for(self, *, drill: bool, stamp: str = "") -> Platform:
        if self.platform == "local":
            return LocalPlatform(self.local_command or "", cwd=str(PROJECT_ROOT))
        if self.platform == "helm":
            namespace = f"{self.helm_namespace}-drill-{stamp}" if drill else self.helm_namespace
            values = _path(self.helm_drill_values if drill else self.helm_dr_values)
            url = self.helm_drill_app_url if drill else (self.app_url or "")
            return HelmPlatform(release=self.helm_release, namespace=namespace, chart=_path(self.helm_chart),
                                values_files=[values], app_url=url, helm=self.helm_bin)
        if self.platform == "compose":
            project = f"{self.compose_project}-drill-{stamp}" if drill else self.compose_project
            url = self.compose_drill_app_url if drill else (self.app_url or "http://127.0.0.1:8080")
            return ComposePlatform(project=project, files=[_path(f) for f in self.compose_files], app_url=url,
                                   drill=drill)
        raise ConfigError(f"platform {self.platform!r} is not a backend; use local, helm or compose")


def dr_resource(spec: EnvironmentSpec) -> AcciDisasterRecovery:
    return resource_from_spec(AcciDisasterRecovery, spec.dr, environment=spec.name)
