"""The field engine every section uses: a field is declared once (``setting``) and read from a
variable or from the environments file by the same rules, so a new section writes no parsing code.

Nothing here knows a section: the sections (``backup``, ``dr``, ...) declare fields and call
``load_section``; ``acci_ops.settings`` decides which sources exist (variables, or the file).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, field, fields
from types import NoneType, UnionType

from acci_ops.lib.core.errors import ConfigError

_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_NAME_HINT = ("letters, digits and _, not starting with a digit, e.g. PRODUCTION_DATABASE_URL; "
                  "the value given is not shown, as it may be a secret")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def setting(default: object = MISSING, *, help: str, var: str | None = None, in_file: bool = True,  # noqa: A002
            inherit: bool = False, resource: bool = True, choices: tuple[str, ...] = (),
            minimum: float | None = None, factory: typing.Callable[[], object] | None = None) -> Field:
    """One field of the model. ``help`` is what the UI shows for the resource field built from it;
    ``var`` the variable that sets it; ``in_file`` whether the environments file may set it;
    ``inherit`` whether ``var`` is also the default in the file; ``resource=False`` keeps a value
    that only the definitions need out of the resources. A field named ``*_env`` holds the NAME of
    the variable holding a secret: from variables it is ``var`` when that is set."""
    metadata = {"help": help, "var": var, "in_file": in_file, "inherit": inherit, "resource": resource,
                "choices": choices, "minimum": minimum}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def url_scheme(url: str | None) -> str | None:
    """The scheme of a URL, lowercased (``s3``, ``file``), or None when there is none. Only the scheme:
    the rest of a URL held in a variable may carry credentials and is not looked at."""
    head, sep, _ = (url or "").strip().partition("://")
    return head.lower() if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", head) else None


def _types(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def base_type(hint: object) -> tuple[object, bool]:
    """``str | None`` -> (str, True); ``tuple[str, ...]`` -> (tuple, False)."""
    optional = False
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not NoneType]
        optional, hint = True, args[0]
    return (typing.get_origin(hint) or hint), optional


def _env_name(value: object, label: str, where: str) -> str:
    """A ``*_env`` field holds the NAME of a variable. A secret pasted there by mistake must not be
    accepted (Dagster would later quote it in a config error), nor echoed by this refusal."""
    if not isinstance(value, str) or not _ENV_VAR.match(value):
        raise ConfigError(f"{where}: {label} must be the NAME of an environment variable holding the value, "
                          f"not the value itself ({_ENV_NAME_HINT})")
    return value


def check_env_fields(raw: object, where: str, prefix: str = "") -> None:
    """Every key ending in ``_env`` of a YAML mapping, present and future, is a variable name."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            if isinstance(key, str) and key.endswith("_env") and value is not None:
                _env_name(value, prefix + key, where)


def _from_variable(environ: Mapping[str, str], f: Field, kind: object) -> object:
    """The field's value from its variable, or MISSING when the variable is unset or empty."""
    name = f.metadata["var"]
    if f.name.endswith("_env"):
        return name if environ.get(name) else MISSING
    raw = environ.get(name, "").strip()
    if kind is bool:
        if raw.lower() not in _TRUE + _FALSE:
            raise ConfigError(f"{name}={raw!r} must be true or false")
        return raw.lower() in _TRUE if raw else MISSING
    if not raw:
        return MISSING
    if kind is tuple:
        items = tuple(item.strip() for item in raw.split(",") if item.strip())
        return items or MISSING
    if kind in (int, float):
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} must be a {'whole number' if kind is int else 'number'}") from None
        return _checked(value, f, f"{name}={raw!r}")
    return _checked(raw, f, f"{name}={raw!r}")


def _from_file(value: object, f: Field, kind: object, label: str, where: str) -> object:
    """The field's value from the environments file; the file's YAML types are checked, not coerced."""
    if f.name.endswith("_env"):
        return _env_name(value, label, where)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {label} must be true or false")
        return value
    if kind is tuple:
        # `required_metrics: abc` would otherwise become ('a', 'b', 'c'). Whole numbers are taken as their
        # text (`canary_steps: [10, 50, 100]`, `blue_green_ports: [8081, 8082]`); a true/false is not.
        def item(i: object) -> bool:
            return (isinstance(i, str) and bool(i.strip())) or (isinstance(i, int) and not isinstance(i, bool))
        if not isinstance(value, list) or not all(item(i) for i in value):
            raise ConfigError(f"{where}: {label} must be a list of non-empty strings or whole numbers, e.g. [a, b] "
                              "or one '- item' per line")
        return tuple(str(i) for i in value)
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, int if kind is int else int | float):
            raise ConfigError(f"{where}: {label} must be a {'whole number' if kind is int else 'number'}, "
                              f"not {value!r}")
        return _checked(kind(value), f, f"{where}: {label} {value!r}")
    if isinstance(value, bool) and ("off" if value is False else "on") in f.metadata["choices"]:
        return "off" if value is False else "on"  # YAML reads a bare `off` as false: `amcheck: off`
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: {label} must be a single value, not {type(value).__name__}")
    return _checked(str(value), f, f"{where}: {label} {value!r}")


def _checked(value: object, f: Field, what: str) -> object:
    choices, minimum = f.metadata["choices"], f.metadata["minimum"]
    if choices and value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(choices)}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{what} must be at least {minimum:g}")
    return value


def load_section(cls: type, environ: Mapping[str, str], raw: Mapping[str, object] | None, *, where: str,
                 label: typing.Callable[[str], str] = str, given: Mapping[str, object] | None = None) -> object:
    """Build one section: a value the caller already has (``given``), else the file's (``raw``, when
    an environments file is used), else the variable (always without a file; with one only when the
    field is ``inherit``), else the field's default."""
    values: dict[str, object] = dict(given or {})
    hints = _types(cls)
    for f in fields(cls):
        if f.name in values:
            continue
        kind, _ = base_type(hints[f.name])
        value = MISSING
        if raw is not None and f.metadata["in_file"] and raw.get(f.name) is not None:
            value = _from_file(raw[f.name], f, kind, label(f.name), where)
        elif f.metadata["var"] and (raw is None or f.metadata["inherit"]):
            value = _from_variable(environ, f, kind)
        if value is not MISSING:
            values[f.name] = value
    return cls(**values)


def file_keys(cls: type, exclude: tuple[str, ...] = ()) -> set[str]:
    """The keys the environments file may set in a section."""
    return {f.name for f in fields(cls) if f.metadata["in_file"] and f.name not in exclude}


def nested_from_file(cls: type, key: str, raw: object, where: str, environ: Mapping[str, str]) -> object:
    """A section written as one mapping under ``key`` in an environment (``dr:``, ``offsite:``):
    a mapping of the section's own file keys, each ``*_env`` a variable name."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} in {where} must be a mapping")
    unknown = set(raw) - file_keys(cls)
    if unknown:
        raise ConfigError(f"{key} in {where} has unknown keys {sorted(unknown)}")
    check_env_fields(raw, where, f"{key}.")
    return load_section(cls, environ, raw, where=where, label=lambda k: f"{key}.{k}")
