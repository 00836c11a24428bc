"""What every domain's definitions use alike: asset keys and partitions, engine-call error
translation, resource keys and lookup, and resources generated from the settings model. Nothing here
knows a domain (``acci_ops_tests/defs/test_domain_imports.py``); what one domain relies on in another
is in ``_contracts.py``, and a helper one domain uses lives in that domain.

Asset keys follow ONE rule (``asset_key``): prefixed by the environment (``production/db_backup``)
whenever an environments file is used, however many environments it declares or serves; never
prefixed without one (``db_backup``). Adding a second environment to a file therefore renames
nothing.

Resources are built mechanically from the settings model (``spec_resource`` generates the class
from a section's fields, ``resource_from_spec`` fills it): a field ``X_env`` naming a variable
becomes a field ``X`` holding ``dg.EnvVar(<that variable>)``, so secrets are read when a run
starts and never appear in the definitions, the UI or run config.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import MISSING, fields, is_dataclass
from datetime import date
from typing import Any, TypeVar

import dagster as dg
from pydantic import Field, create_model

from acci_ops.lib.core.errors import AcciOpsError, ConfigError, TransientError
from acci_ops.settings import EnvironmentSpec, Settings, base_type

T = TypeVar("T")
MAX_TRANSIENT_RETRIES = 3


# --- asset keys ----------------------------------------------------------------------------------

def asset_key(settings: Settings, environment: str, name: str) -> dg.AssetKey:
    """``<environment>/<name>`` when an environments file is used, ``<name>`` otherwise."""
    return dg.AssetKey([environment, name]) if settings.from_file else dg.AssetKey(name)


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=settings.start_date.isoformat(), timezone=settings.timezone)


def partition_day(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> date:
    return date.fromisoformat(context.partition_key)


# --- engine calls ----------------------------------------------------------------------------------

@contextmanager
def engine_errors(prefix: str = "") -> Iterator[None]:
    """An engine's refusal or failure becomes the step's failure with its one-line cause (and no
    chained traceback, which could carry connection details)."""
    try:
        yield
    except AcciOpsError as exc:
        raise dg.Failure(description=f"{prefix}{exc}") from None


def run_step(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, action: Callable[[], T]) -> T:
    """As ``engine_errors``, and a transient failure (network, throttling) retries with backoff."""
    try:
        return action()
    except TransientError as exc:
        if context.retry_number < MAX_TRANSIENT_RETRIES:
            wait = 30 * 2**context.retry_number
            context.log.warning(f"transient failure, retrying in {wait} s: {exc}")
            raise dg.RetryRequested(max_retries=MAX_TRANSIENT_RETRIES, seconds_to_wait=wait) from None
        raise dg.Failure(description=str(exc)) from None
    except AcciOpsError as exc:
        raise dg.Failure(description=str(exc)) from None


# --- run tags ----------------------------------------------------------------------------------------

K8S_CONFIG_TAG = "dagster-k8s/config"
# The Kubernetes Job deadline of a heavy job with no maximum runtime of its own: a net for a Job the run
# monitor no longer watches (dagster#16535), long enough for any real restore.
DEFAULT_DEADLINE_SECONDS = 86400


def k8s_run_tags(settings: Settings, kind: str, max_runtime_seconds: int | None = None) -> dict[str, str]:
    """``dagster-k8s/config`` for a heavy job's run pod under K8sRunLauncher: requests and limits of the
    kind (``kubernetes`` settings; CPU is requested, not capped), ``activeDeadlineSeconds`` = the job's
    maximum runtime (so Kubernetes stops a pod the run monitor gave up on) and ``ttlSecondsAfterFinished``.
    Other launchers ignore the tag."""
    spec = settings.kubernetes
    requests = spec.resources(kind)
    limits = {name: value for name, value in requests.items() if name != "cpu"}
    config = {"container_config": {"resources": {"requests": requests, "limits": limits}},
              "job_spec_config": {"active_deadline_seconds": int(max_runtime_seconds or DEFAULT_DEADLINE_SECONDS),
                                  "ttl_seconds_after_finished": spec.ttl_seconds_after_finished},
              "pod_template_spec_metadata": {"labels": {"acci/operation-kind": kind.replace("_", "-")}}}
    return {K8S_CONFIG_TAG: json.dumps(config, sort_keys=True)}


# --- resources: keys and lookup --------------------------------------------------------------------

def resource_key(section: str, environment: str) -> str:
    """``acci_env_<env>`` (backup: database and stores), ``acci_validation_<env>``, ``acci_dr_<env>``."""
    return f"acci_{'env' if section == 'backup' else section}_{environment}"


def resource_keys(specs: typing.Iterable[EnvironmentSpec], *sections: str) -> set[str]:
    return {resource_key(section, spec.name) for spec in specs for section in sections}


def section_resource(context: Any, section: str, environment: str) -> Any:  # noqa: ANN401
    """The environment's resource for a section (the op or asset must require its key)."""
    return getattr(context.resources, resource_key(section, environment))


# --- resources: built from the settings model ------------------------------------------------------

_NESTED: dict[type, type[dg.Config]] = {}


def _resource_fields(spec_cls: type) -> dict[str, tuple[object, Any]]:
    """Pydantic field definitions for a settings section: ``X_env`` -> ``X`` (the secret's value),
    tuples -> lists, nested sections -> nested ``dg.Config``; ``resource=False`` fields are left out."""
    hints = typing.get_type_hints(spec_cls)
    names = {f.name for f in fields(spec_cls)}
    out: dict[str, tuple[object, Any]] = {}
    for f in fields(spec_cls):
        if not f.metadata.get("resource", True):
            continue
        kind, optional = base_type(hints[f.name])
        name = f.name
        if name.endswith("_env"):
            name = name[:-4]
            if name in names:  # a literal that the variable may replace (backup_url / backup_url_env)
                continue
            kind = str
        if kind is tuple:
            kind = list[str]
        elif is_dataclass(kind):
            kind = _NESTED.setdefault(kind, create_model(f"{kind.__name__}Config", __base__=dg.Config,
                                                         **_resource_fields(kind)))
        annotation = kind | None if optional else kind
        if f.default is not MISSING:
            default = list(f.default) if isinstance(f.default, tuple) else f.default
            out[name] = (annotation, Field(default=default, description=f.metadata["help"]))
        else:
            out[name] = (annotation, Field(description=f.metadata["help"]))
    return out


def spec_resource(spec_cls: type, class_name: str, /, **extra: tuple[object, Any]) -> type[dg.ConfigurableResource]:
    """A ConfigurableResource class whose fields are the section's (plus ``extra``), with the
    section's defaults and help texts; subclass it to add the methods the ops call."""
    return create_model(class_name, __base__=dg.ConfigurableResource, **extra, **_resource_fields(spec_cls))


def _values(spec: object) -> dict[str, object]:
    values: dict[str, object] = {}
    secrets: dict[str, object] = {}
    for f in fields(spec):
        if not f.metadata.get("resource", True):
            continue
        value = getattr(spec, f.name)
        if f.name.endswith("_env"):
            if value:
                secrets[f.name[:-4]] = dg.EnvVar(value)
        elif isinstance(value, tuple):
            values[f.name] = list(value)
        elif is_dataclass(value):
            values[f.name] = _NESTED[type(value)](**_values(value))
        else:
            values[f.name] = value
    return {**values, **secrets}


def resource_from_spec(resource_cls: type[T], spec: object, **extra: object) -> T:
    """Fill a ``spec_resource`` class from a settings section; secrets stay ``EnvVar`` references."""
    return resource_cls(**extra, **_values(spec))


# --- resources: fixed copies for guarded jobs ------------------------------------------------------

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
    """``resources`` (every resource of the code location, by key, as ``acci_ops/definitions.py``
    hands them to the domains built last), fixed, for a job whose Launchpad must not offer
    resource config (disaster_recovery, release, rollback_release). Job-level resources take
    precedence over the Definitions-level ones with the same key, so none of them can be edited
    there; a new domain's resources arrive here without any change to the guarded jobs."""
    fixed = {}
    for key, resource in sorted(resources.items()):
        if not isinstance(resource, dg.ConfigurableResource):
            raise ConfigError(f"resource {key!r} is a {type(resource).__name__}, not a ConfigurableResource: "
                              "a guarded job (disaster_recovery, release) cannot bind it as the code location "
                              "configured it")
        fixed[key] = fixed_resource(resource)
    return fixed
