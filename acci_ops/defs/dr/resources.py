"""The per-environment DR resource (``acci_dr_<env>``): how the environment is deployed and verified."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import dagster as dg
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


def fixed_resource(resource: dg.ConfigurableResource) -> dg.ResourceDefinition:
    """``resource`` as the code location configured it, with an empty config schema: a Launchpad
    cannot change it (any ``resources: {key: {config: ...}}`` entry is a config error, so a tired
    person cannot switch ``platform`` or a URL by accident). Its ``EnvVar`` references are still
    read when the run starts, never stored in the definitions or the run config."""
    def initialize(_context: dg.InitResourceContext) -> Iterator[object]:
        # The context manager form: process_config_and_initialize() enters a throwaway Dagster
        # instance and never leaves it, which left a dead instance current for later code.
        with resource.process_config_and_initialize_cm() as value:
            yield value

    return dg.ResourceDefinition(
        resource_fn=initialize,
        config_schema={},
        description=(f"{type(resource).__name__}: from the code location's settings (ACCI_* variables or the "
                     "environments file); not editable here."),
    )


def fixed_resources(resources: Mapping[str, object]) -> dict[str, dg.ResourceDefinition]:
    """``resources`` (every resource of the code location, by key: the other domains' as
    ``acci_ops/definitions.py`` hands them over, and DR's own), fixed, for a job whose Launchpad
    must not offer resource config. Job-level resources take precedence over the Definitions-level
    ones with the same key, so none of them can be edited there; a new domain's resources arrive
    here without any change to DR."""
    fixed = {}
    for key, resource in sorted(resources.items()):
        if not isinstance(resource, dg.ConfigurableResource):
            raise ConfigError(f"resource {key!r} is a {type(resource).__name__}, not a ConfigurableResource: "
                              "the disaster_recovery job cannot bind it as the code location configured it")
        fixed[key] = fixed_resource(resource)
    return fixed
