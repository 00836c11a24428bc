"""The sections of the settings model, by name. A section module registers its section once, and
from then on ``load_settings`` reads it, ``Settings``/``EnvironmentSpec`` hold it, the environments
file accepts its keys and scripts/gen_configuration.py documents it: nothing else is edited to add one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from acci_ops.settings._fields import load_section, nested_from_file

# (environ) -> the section; (environment's body in the file, where for messages, environ) -> the section.
FromVariables = Callable[[Mapping[str, str]], object]
FromFile = Callable[[Mapping[str, object], str, Mapping[str, str]], object]

# Names Settings and EnvironmentSpec already use for themselves.
RESERVED = frozenset({"name", "environments", "timezone", "start_date", "from_file", "sections", "environment",
                      "validates"})
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
TOP_LEVEL_KEYS = frozenset({"environments", "timezone"})  # what load_settings reads from the file itself


@dataclass(frozen=True, kw_only=True)
class Section:
    """One section: ``spec`` is a frozen dataclass whose every field is declared with ``setting(...)``.

    - ``name``: the attribute that holds it (``spec.<name>`` per environment, ``settings.<name>``
      for the whole code location) and its key in an environment of the environments file.
    - ``per_environment``: one value per environment (from the variables, or from the file) or one
      for the whole code location (from the variables only: the file cannot set it).
    - ``from_variables`` / ``from_file``: only for a section that is more than flat fields; by
      default every field comes from its ``var``, and in the file from the mapping under ``name``.
    - ``file_keys``: the keys of an environment it reads (default: ``name``); for a location-wide
      section, the top-level keys of the environments file it reads (default: none), each the name
      of one of its fields (``promotion_order:``).
    - ``enabled_by``: a variable that turns the section on; until it is set (in the file: until the
      environment has the key) the section is None, and its checks do not run.
    - ``required``: an ``EnvironmentSpec`` cannot be built without it; else the default is
      ``spec()`` (or None with ``enabled_by``).
    """

    name: str
    spec: type
    per_environment: bool
    from_variables: FromVariables | None = None
    from_file: FromFile | None = None
    file_keys: frozenset[str] | None = None
    enabled_by: str | None = None
    required: bool = False

    def load_variables(self, environ: Mapping[str, str]) -> object:
        if self.from_variables is not None:
            return self.from_variables(environ)
        if self.enabled_by and not environ.get(self.enabled_by, "").strip():
            return None
        return load_section(self.spec, environ, None, where="variables")

    def load_file(self, body: Mapping[str, object], where: str, environ: Mapping[str, str]) -> object:
        if self.from_file is not None:
            return self.from_file(body, where, environ)
        raw = body.get(self.name)
        if raw is None:
            if self.enabled_by:
                return None
            # Absent: the defaults, and the `inherit` fields' variables.
            return load_section(self.spec, environ, {}, where=where, label=lambda k: f"{self.name}.{k}")
        return nested_from_file(self.spec, self.name, raw, where, environ)

    def load_top_level(self, doc: Mapping[str, object], where: str, environ: Mapping[str, str]) -> object:
        """A location-wide section with an environments file: its top-level keys there, else its
        variables as without a file."""
        if not self.file_keys:
            return self.load_variables(environ)
        raw = {key: doc[key] for key in self.file_keys if doc.get(key) is not None}
        if not raw:
            return self.load_variables(environ)
        return load_section(self.spec, environ, raw, where=where)

    def keys(self) -> frozenset[str]:
        if not self.per_environment:
            return frozenset()
        return self.file_keys if self.file_keys is not None else frozenset({self.name})

    def default(self) -> object:
        """The value a ``Settings``/``EnvironmentSpec`` built without this section holds."""
        return None if self.enabled_by else self.spec()


_SECTIONS: dict[str, Section] = {}


def register(section: Section) -> Section:
    """Add a section (a section module calls this once, at import). A mistake in the declaration
    stops the import with one line naming the section."""
    what = f"settings section {section.name!r}"
    if not isinstance(section.name, str) or not _NAME.match(section.name) or section.name in RESERVED:
        raise ValueError(f"{what}: the name must be lowercase letters, digits and _ and not one of "
                         f"{', '.join(sorted(RESERVED))}")
    if section.name in _SECTIONS:
        raise ValueError(f"{what} is registered twice (by {_SECTIONS[section.name].spec.__qualname__} "
                         f"and {section.spec.__qualname__})")
    if not (dataclasses.is_dataclass(section.spec) and isinstance(section.spec, type)):
        raise ValueError(f"{what}: spec {section.spec!r} is not a dataclass")
    bare = [f.name for f in dataclasses.fields(section.spec) if "help" not in f.metadata]
    if bare:
        raise ValueError(f"{what}: {section.spec.__name__}.{bare[0]} is not declared with setting(help=...)")
    if not section.per_environment and section.from_file:
        raise ValueError(f"{what} is for the whole code location: the environments file sets it only by "
                         "top-level keys named after its fields (file_keys), not by from_file")
    if not section.per_environment and section.file_keys:
        names = {f.name for f in dataclasses.fields(section.spec)}
        stray = sorted(section.file_keys - names)
        if stray or section.file_keys & TOP_LEVEL_KEYS:
            raise ValueError(f"{what}: top-level key {(stray or sorted(section.file_keys & TOP_LEVEL_KEYS))[0]!r} "
                             "must be one of its fields and not a key the file already has")
    if section.required and section.enabled_by:
        raise ValueError(f"{what} cannot be both required and turned on by {section.enabled_by}")
    for other in _SECTIONS.values():
        shared = section.keys() & other.keys()
        if shared:
            raise ValueError(f"{what}: environments file key {sorted(shared)[0]!r} is already read by "
                             f"section {other.name!r}")
    _SECTIONS[section.name] = section
    return section


def unregister(name: str) -> None:
    """Remove a section: for a test that registers one of its own."""
    if _SECTIONS.pop(name, None) is None:
        raise ValueError(f"settings section {name!r} is not registered")


def registered(per_environment: bool | None = None) -> tuple[Section, ...]:
    """The sections in the order they were registered, optionally only one scope."""
    return tuple(s for s in _SECTIONS.values() if per_environment is None or s.per_environment == per_environment)


def environment_keys() -> frozenset[str]:
    """Every key an environment in the environments file may have."""
    return frozenset().union(*(s.keys() for s in registered(per_environment=True)))


def top_level_keys() -> frozenset[str]:
    """Every top-level key the environments file may have."""
    return TOP_LEVEL_KEYS.union(*(s.file_keys or () for s in registered(per_environment=False)))


def complete(values: Mapping[str, object], *, per_environment: bool, owner: str) -> Mapping[str, object]:
    """One value for every registered section of the scope: the given ones, defaults for the rest;
    a name that is no section is refused (a typo would otherwise vanish)."""
    known = {s.name: s for s in registered(per_environment)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise TypeError(f"{owner} has no section {unknown[0]!r}; its sections: {', '.join(known)}")
    out = {}
    for name, section in known.items():
        if name in values:
            out[name] = values[name]
        elif section.required:
            raise TypeError(f"{owner} needs the {name} section")
        else:
            out[name] = section.default()
    return MappingProxyType(out)
