"""The deployment's shape: the one place that reads ``os.environ``, and the one typed model of it.

``Settings`` holds the environments this code location serves, each an ``EnvironmentSpec``, and
the location-wide sections. A section is a module of this package that registers itself
(``_registry.register``): ``backup``, ``validation`` and ``dr`` per environment (DR is ``None``
until a platform is set), ``alerts`` and ``images`` for the whole code location. Every field of a
section is declared ONCE, with ``setting(...)`` (``_fields``): its default, the variable that sets
it and whether the environments file may set it. Both sources map onto the same fields:

- one environment (the default): the ``ACCI_*`` variables;
- several: ``ACCI_ENVIRONMENTS_FILE`` names a YAML file (docs/environments.md "Several environments"). A field
  marked ``inherit`` (validation tuning, the signing key, the tool paths) takes its variable as the
  default there too; the others come from the file or their default.

Only names and locations live here; a secret (database URL with password, storage key, Redis URL,
signing key, webhook URL) is referred to by the NAME of the variable holding it (the ``*_env``
fields) and resolved by Dagster's ``EnvVar`` at run time, so it never enters the definitions, the UI
or run config. A bad value stops the code location from loading with one line naming the variable
or the file's key (secrets pasted by mistake are never echoed).

Adding a section: docs/development.md "Adding a settings section".
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import MappingProxyType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from acci_ops.lib.core.errors import ConfigError
from acci_ops.settings._fields import base_type, file_keys, load_section, setting, url_scheme
from acci_ops.settings._registry import (
    Section,
    complete,
    environment_keys,
    register,
    registered,
    top_level_keys,
    unregister,
)

# The sections. Importing a section's module registers it, and the order here is the order the
# configuration reference shows them in: adding a section is its module and one line here.
# isort: off
from acci_ops.settings.backup import RETENTION_VARIABLES, BackupSpec, OffsiteSpec
from acci_ops.settings.validation import VALIDATION_TOP_LEVEL_KEYS, ValidationSpec
from acci_ops.settings.dr import DEFAULT_COMPOSE_FILES, PLATFORMS, DrSpec
from acci_ops.settings.alerts import AlertSpec
from acci_ops.settings.images import BUILD_BACKENDS, CONTAINER_ENGINES, SCAN_SEVERITIES, ImagesSpec
from acci_ops.settings.releases import PromotionSpec, ReleasesSpec
from acci_ops.settings.kubernetes import KubernetesSpec
from acci_ops.settings.ops_image import OpsImageSpec
# isort: on

__all__ = [
    "BUILD_BACKENDS", "CONTAINER_ENGINES", "DEFAULT_COMPOSE_FILES", "DEFAULT_ENVIRONMENT", "DEFAULT_START_DATE",
    "DEFAULT_TIMEZONE", "ENVIRONMENT_KEYS", "PLATFORMS", "RETENTION_VARIABLES", "SCAN_SEVERITIES",
    "VALIDATION_TOP_LEVEL_KEYS", "AlertSpec", "BackupSpec", "DrSpec", "EnvironmentSpec", "ImagesSpec",
    "KubernetesSpec", "OffsiteSpec", "OpsImageSpec", "PromotionSpec", "ReleasesSpec", "Section", "Settings",
    "ValidationSpec", "base_type",
    "environment_keys", "file_keys",
    "load_section", "load_settings", "parse_start_date", "register", "registered", "setting",
    "start_date_from", "unregister", "url_scheme",
]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

DEFAULT_ENVIRONMENT = "production"
DEFAULT_TIMEZONE = "UTC"
DEFAULT_START_DATE = date(2026, 1, 1)


def __getattr__(name: str) -> object:
    if name == "ENVIRONMENT_KEYS":
        # Live, not a constant: a section registered after this module loaded adds its keys.
        return environment_keys()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _section_value(owner: object, name: str) -> object:
    sections = owner.__dict__.get("sections", {})  # __dict__: no recursion before __init__ ran (copy, pickle)
    if name in sections:
        return sections[name]
    raise AttributeError(f"{type(owner).__name__} has no attribute or section {name!r}")


def _repr(owner: object, core: Mapping[str, object]) -> str:
    items = {**core, **owner.sections}
    return f"{type(owner).__name__}({', '.join(f'{k}={v!r}' for k, v in items.items())})"


@dataclass(frozen=True, init=False, repr=False)
class EnvironmentSpec:
    """One environment: its name and one value per per-environment section, read as attributes
    (``spec.backup``, ``spec.validation``, ``spec.dr``). The sections are not fields written here,
    so a new one edits nothing: built by keyword only, ``EnvironmentSpec(name="production",
    backup=BackupSpec(...))``; a section left out takes its registered default, a name that is no
    section is refused."""

    name: str
    sections: Mapping[str, object]

    def __init__(self, *, name: str, sections: Mapping[str, object] = MappingProxyType({}),
                 **named: object) -> None:
        # ``sections=`` is what dataclasses.replace passes back; the keywords win over it.
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "sections", complete({**sections, **named}, per_environment=True,
                                                      owner="EnvironmentSpec"))

    def __getattr__(self, name: str) -> object:
        return _section_value(self, name)

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return _repr(self, {"name": self.name})

    @property
    def validates(self) -> bool:
        return self.validation.enabled


@dataclass(frozen=True, init=False, repr=False)
class Settings:
    """The environments this code location serves, the partitions' calendar, and one value per
    location-wide section (``settings.alerts``, ``settings.images``), built by keyword only like
    ``EnvironmentSpec``."""

    environments: tuple[EnvironmentSpec, ...]
    timezone: str
    start_date: date
    from_file: str | None  # the environments file, when one is used
    sections: Mapping[str, object]

    def __init__(self, *, environments: tuple[EnvironmentSpec, ...], timezone: str = DEFAULT_TIMEZONE,
                 start_date: date = DEFAULT_START_DATE, from_file: str | None = None,
                 sections: Mapping[str, object] = MappingProxyType({}), **named: object) -> None:
        for key, value in (("environments", tuple(environments)), ("timezone", timezone),
                           ("start_date", start_date), ("from_file", from_file)):
            object.__setattr__(self, key, value)
        object.__setattr__(self, "sections", complete({**sections, **named}, per_environment=False,
                                                      owner="Settings"))

    def __getattr__(self, name: str) -> object:
        return _section_value(self, name)

    def __hash__(self) -> int:
        return hash((self.environments, self.timezone, self.start_date, self.from_file))

    def __repr__(self) -> str:
        return _repr(self, {"environments": self.environments, "timezone": self.timezone,
                            "start_date": self.start_date, "from_file": self.from_file})

    def environment(self, name: str) -> EnvironmentSpec:
        for spec in self.environments:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.environments)
        raise ConfigError(f"unknown environment {name!r}; declared: {known}")


# --- whole environments --------------------------------------------------------------------------

def _check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"environment name {name!r} in {where} must be lowercase letters, digits and _ "
                          "starting with a letter (it becomes part of asset keys)")
    return name


def _environment_from_file(name: object, body: object, path: str, environ: Mapping[str, str]) -> EnvironmentSpec:
    where = f"{path} environment {name!r}"
    _check_name(name, path)
    if not isinstance(body, dict):
        raise ConfigError(f"{where} must be a mapping")
    allowed = environment_keys()
    unknown = set(body) - allowed
    if unknown:
        raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    return EnvironmentSpec(name=name, **{s.name: s.load_file(body, where, environ)
                                         for s in registered(per_environment=True)})


def _environment_from_variables(environ: Mapping[str, str]) -> EnvironmentSpec:
    name = _check_name(environ.get("ACCI_ENVIRONMENT", "").strip() or DEFAULT_ENVIRONMENT, "ACCI_ENVIRONMENT")
    return EnvironmentSpec(name=name, **{s.name: s.load_variables(environ) for s in registered(per_environment=True)})


def _read_file(path: str) -> dict:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"ACCI_ENVIRONMENTS_FILE {path} does not exist") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", exc)
        raise ConfigError(f"ACCI_ENVIRONMENTS_FILE {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("environments"), dict) or not doc["environments"]:
        raise ConfigError(f"ACCI_ENVIRONMENTS_FILE {path} must have a non-empty 'environments:' mapping")
    unknown = sorted(str(k) for k in doc if k not in top_level_keys())
    if unknown:
        raise ConfigError(f"ACCI_ENVIRONMENTS_FILE {path} has unknown top-level key {unknown[0]!r}; allowed: "
                          f"{', '.join(sorted(top_level_keys()))}")
    return doc


def _check_timezone(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"ACCI_TIMEZONE {tz!r} is not a known IANA time zone (e.g. UTC, Europe/Madrid)") from None
    return tz


def parse_start_date(raw: str, what: str) -> date:
    """A first partition day as written (``2026-01-01``); ``what`` names where it was read."""
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ConfigError(f"{what} {raw!r} must be a date like 2026-01-01") from None


def start_date_from(environ: Mapping[str, str]) -> date:
    """The first daily partition: ACCI_BACKUP_START_DATE, else DEFAULT_START_DATE.

    Never computed from "today" here: the definitions are built in every process (webserver,
    daemon, each run worker, after every restart) and must be identical in all of them, or a run
    is launched for a partition its worker does not know. A deployment sets the variable once, to
    its first day, in the environment all its processes share; ``./run dev`` records that day once
    in its DAGSTER_HOME (acci_ops.dev.start_date) and exports it. The default stays put so an upgraded
    deployment that never set the variable keeps its partitions and their history."""
    raw = environ.get("ACCI_BACKUP_START_DATE", "").strip()
    return parse_start_date(raw, "ACCI_BACKUP_START_DATE") if raw else DEFAULT_START_DATE


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the deployment's shape; a malformed file or unknown name fails with one clear line."""
    environ = os.environ if environ is None else environ
    start = start_date_from(environ)
    location = {s.name: s.load_variables(environ) for s in registered(per_environment=False)}
    path = environ.get("ACCI_ENVIRONMENTS_FILE", "").strip()
    if not path:
        tz = _check_timezone(environ.get("ACCI_TIMEZONE", "").strip() or DEFAULT_TIMEZONE)
        return Settings(environments=(_environment_from_variables(environ),), timezone=tz, start_date=start,
                        **location)
    doc = _read_file(path)
    location = {s.name: s.load_top_level(doc, path, environ) for s in registered(per_environment=False)}
    specs = tuple(_environment_from_file(name, body, path, environ) for name, body in doc["environments"].items())
    tz = _check_timezone(environ.get("ACCI_TIMEZONE", "").strip() or str(doc.get("timezone") or DEFAULT_TIMEZONE))
    settings = Settings(environments=specs, timezone=tz, start_date=start, from_file=path, **location)
    chosen = environ.get("ACCI_ENVIRONMENT", "").strip()
    if chosen:
        # One code location per environment: serve only the named one.
        settings = Settings(environments=(settings.environment(chosen),), timezone=tz, start_date=start,
                            from_file=path, **location)
    return settings
