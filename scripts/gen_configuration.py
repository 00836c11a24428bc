#!/usr/bin/env python3
"""Render docs/configuration.md, the configuration reference, from the settings model.

Why: every field of ``acci_ops.settings`` already declares its default, variable, file key, limits
and help once (``setting(...)``). A reference kept by hand beside it drifts (the README's tables
did: ImagesSpec was never checked against them). So the reference is generated, the way Ansible
renders its configuration reference from ``base.yml``, and ``acci_ops_tests/test_docs.py`` fails
when the committed file is not what this script renders now.

The sections are found in the model's registry, not listed here: every registered section
(``acci_ops.settings.registered()``: per environment backup, validation, dr; location-wide alerts,
images) and the sections nested in them (``BackupSpec.offsite``). A new section therefore
appears without editing this file; a field this script cannot place (no variable and no rule
below) stops it with one line instead of being left out.

What the model does not declare field by field is written here once: the location-wide variables
that ``load_settings`` reads itself (environment, environments file, time zone, start date), the
variables the loaders hand to fields that have no ``var`` (``ACCI_DATABASE_URL``,
``ACCI_BACKUP_URL``, the retention counts), and the standard AWS variables.

Usage::

    python scripts/gen_configuration.py           # write docs/configuration.md
    python scripts/gen_configuration.py --check   # exit 1 with one line when the file is stale
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from dataclasses import MISSING, Field
from datetime import date
from pathlib import Path

from acci_ops import settings as model
from acci_ops.lib.backup.retention import RetentionPolicy
from acci_ops.lib.core.commands import CHILD_ENV_ALLOW

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "configuration.md"
COMMAND = "python scripts/gen_configuration.py"

# Headings and the page that explains each section; a section not named here still renders
# (titled after its field), so these only make the page read better.
TITLES = {"backup": "Backups", "offsite": "Offsite copies", "validation": "Backup validation",
          "dr": "Disaster recovery and drills", "alerts": "Alerts", "images": "Image builds",
          "releases": "Releases", "promotion": "Promotion order", "kubernetes": "Kubernetes run pods",
          "ops_image": "The acci_ops image"}
PAGES = {"backup": "backups.md", "offsite": "backups.md#offsite-copies", "validation": "backups.md#backup-validation",
         "dr": "disaster-recovery.md", "alerts": "alerts.md", "images": "images.md",
         "releases": "releases.md", "promotion": "releases.md#promotion"}
# What turns a section on; without it the section's settings are read but nothing uses them.
TURNED_ON_BY = {
    "offsite": "On when `ACCI_OFFSITE_URL` is set (in the file: an environment's `offsite:`).",
    "validation": "On when `ACCI_SCRATCH_DATABASE_URL` is set (in the file: `scratch_database_url_env`, "
                  "or the variable as its default).",
    "dr": "On when `ACCI_PLATFORM` is set (in the file: an environment's `dr:`); drills also need validation.",
    "releases": "Used by the environments whose DR section names a helm or compose platform.",
    "images": "On when both `ACCI_SOURCE_REPO` and `ACCI_IMAGE_REPOSITORY` are set; one without the other "
              "stops the code location from loading.",
}
# Fields without ``var`` that a loader fills from a variable (the backup section's ``_from_variables``).
LOADER_VARIABLES = {("backup", "database_url_env"): "ACCI_DATABASE_URL",
                    ("backup", "backup_url_env"): "ACCI_BACKUP_URL"}
# Fields nobody sets: the loader derives them.
DERIVED = {("backup", "backup_url_scheme"): "the scheme of `ACCI_BACKUP_URL`"}
# Fields the environments file sets while the variables reach them through another field.
FILE_ONLY = {("backup", "backup_url"): "without a file: `ACCI_BACKUP_URL` (the row below)",
             ("releases", "analysis"): "without a file: the `ACCI_RELEASE_ANALYSIS_*` and threshold rows",
             ("releases", "windows"): "without a file: `ACCI_RELEASE_ALLOW_WINDOWS` / `ACCI_RELEASE_DENY_WINDOWS`"}
# A default that means something else when its variable is unset: the variable turns the section on.
DEFAULT_NOTES = {("dr", "platform"): "unset: DR off (a file's `dr:` without `platform`: `local`)",
                 ("releases", "analysis"): "6 measurements 10 s apart: /health, 5xx ratio, p95 latency",
                 ("releases", "windows"): "none: always open"}


@dataclasses.dataclass(frozen=True)
class Row:
    variable: str
    default: str
    file: str
    limits: str
    help: str


@dataclasses.dataclass(frozen=True)
class Section:
    name: str           # the model's field name: backup, offsite, ...
    cls: type
    per_environment: bool
    file_prefix: str    # "" (environment body), "dr.", "offsite.", ...


def _sections() -> list[Section]:
    """Every registered section of the model (``acci_ops.settings.registered()``) and the sections
    nested in them, in the order a reader meets them: per environment, then the whole code location."""
    out: list[Section] = []

    def walk(owner: type, per_environment: bool, prefix: str) -> None:
        hints = typing.get_type_hints(owner)
        for f in dataclasses.fields(owner):
            kind, _ = model.base_type(hints[f.name])
            if _is_section(kind):  # BackupSpec.offsite
                out.append(Section(f.name, kind, per_environment, f"{prefix}{f.name}."))
                walk(kind, per_environment, f"{prefix}{f.name}.")

    for entry in model.registered():
        # A section that does not read its own name is the environment's body in the file (backup);
        # the others are keys in it (`dr:`).
        prefix = f"{entry.name}." if entry.name in entry.keys() else ""
        out.append(Section(entry.name, entry.spec, entry.per_environment, prefix))
        walk(entry.spec, entry.per_environment, prefix)
    return sorted(out, key=lambda s: not s.per_environment)  # stable: the registry's order within each group


def _is_section(kind: object) -> bool:
    return dataclasses.is_dataclass(kind) and isinstance(kind, type) and any(
        "help" in f.metadata for f in dataclasses.fields(kind))


# --- rendering one value ------------------------------------------------------------------------

def _code(text: object) -> str:
    return f"`{text}`"


def render_default(f: Field) -> str:
    """A default as a reader writes it: tuples as comma lists, None as unset, booleans lowercase."""
    if f.default_factory is not MISSING:
        value = f.default_factory()
    elif f.default is MISSING:
        return "required"
    else:
        value = f.default
    return render_value(value)


def render_value(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return _code(str(value).lower())
    if isinstance(value, tuple):
        return ", ".join(_code(v) for v in value) if value else "none"
    if isinstance(value, float | int):
        return _code(f"{value:g}")
    if isinstance(value, date):
        return _code(value.isoformat())
    if dataclasses.is_dataclass(value):
        return ", ".join(f"{f.name} {render_value(getattr(value, f.name))}" for f in dataclasses.fields(value))
    return _code(value) if value != "" else "empty"


def _cell(text: str) -> str:
    """Help text in a table cell: one line, and a literal | cannot end the cell."""
    return re.sub(r"\s+", " ", text).strip().replace("|", "\\|")


def _limits(f: Field) -> str:
    parts = []
    if f.metadata.get("choices"):
        parts.append("one of " + ", ".join(_code(c) for c in f.metadata["choices"]))
    if f.metadata.get("minimum") is not None:
        parts.append(f"at least {f.metadata['minimum']:g}")
    return "; ".join(parts) or "–"


def _file_key(section: Section, f: Field) -> str:
    """Where the environments file sets the field, and how the variable relates to it there."""
    if not section.per_environment:
        return "–"
    var = f.metadata.get("var")
    if not f.metadata.get("in_file"):
        if var and f.metadata.get("inherit"):
            return "no; the variable applies to every environment"
        return "no"
    key = f"{section.file_prefix}{f.name}"
    if section.name == "validation" and f.name in model.VALIDATION_TOP_LEVEL_KEYS:
        key = f.name  # written at the top of the environment, as documented before the section existed
    if section.file_prefix == "" and key not in model.ENVIRONMENT_KEYS:
        raise SystemExit(f"{section.cls.__name__}.{f.name}: file key {key!r} is not in settings.ENVIRONMENT_KEYS")
    text = _code(key)
    if f.name.endswith("_env"):
        text += " (names the variable)"
    if var and f.metadata.get("inherit"):
        text += "; the variable is the default"
    return text


def _variable(section: Section, f: Field) -> str:
    where = (section.name, f.name)
    var = f.metadata.get("var") or LOADER_VARIABLES.get(where)
    if var:
        return _code(var) + (" · secret" if f.name.endswith("_env") else "")
    if where in DERIVED:
        return f"– (derived: {DERIVED[where]})"
    if where in FILE_ONLY:
        return f"– (file only; {FILE_ONLY[where]})"
    raise SystemExit(f"{section.cls.__name__}.{f.name} has no variable and {__file__} has no rule for it; "
                     "give it var= or add it to LOADER_VARIABLES, DERIVED or FILE_ONLY")


def section_rows(section: Section) -> list[Row]:
    """One row per field; a nested section points at its own table, retention becomes its three
    counts (each with its own variable)."""
    rows: list[Row] = []
    hints = typing.get_type_hints(section.cls)
    by_name = {s.name: s for s in _sections()}
    for f in dataclasses.fields(section.cls):
        kind, _ = model.base_type(hints[f.name])
        help_text = _cell(f.metadata["help"])
        if kind is RetentionPolicy:
            policy = RetentionPolicy()
            for tier, var in model.RETENTION_VARIABLES.items():
                rows.append(Row(_code(var), render_value(getattr(policy, tier)),
                                _code(f"{section.file_prefix}{f.name}.{tier}"), "at least 0",
                                f"{help_text} This one: the {tier} count."))
            continue
        if _is_section(kind):
            nested = by_name[f.name]
            title = TITLES.get(nested.name, nested.name)
            rows.append(Row("–", "unset", _code(f"{section.file_prefix}{f.name}"), "–",
                            f"{help_text} Its settings: [{title}](#{slug(title)})."))
            continue
        default = DEFAULT_NOTES.get((section.name, f.name)) or render_default(f)
        rows.append(Row(_variable(section, f), default, _file_key(section, f), _limits(f), help_text))
    return rows


LOCATION_WIDE = (
    Row(_code("ACCI_ENVIRONMENT"), _code(model.DEFAULT_ENVIRONMENT), "–", "lowercase letters, digits, `_`",
        "The environment's name without an environments file; with one, serve only this environment "
        "(one code location per environment)."),
    Row(_code("ACCI_ENVIRONMENTS_FILE"), "unset", "–", "–",
        "YAML file declaring several environments (see [Environments](environments.md))."),
    Row(_code("ACCI_TIMEZONE"), _code(model.DEFAULT_TIMEZONE), "`timezone` (the variable wins)", "an IANA zone",
        "Time zone of the daily partitions and the schedules."),
    Row(_code("ACCI_BACKUP_START_DATE"), _code(model.DEFAULT_START_DATE.isoformat()), "–", "`YYYY-MM-DD`",
        "First daily partition, in `ACCI_TIMEZONE`. Set it to the day you first deploy, the same in every "
        "process (see [When partitions start](environments.md#when-partitions-start))."),
    Row(_code(CHILD_ENV_ALLOW), "unset", "–", "–",
        "Comma-separated extra variable names (or `PREFIX_*`) the tools acci_ops starts may inherit (see "
        "[What child processes see](trust-model.md#what-child-processes-see))."),
    Row("`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_PROFILE`, "
        "`AWS_ENDPOINT_URL`", "boto3's", "–", "–",
        "Standard AWS variables of the primary store (boto3 reads them). S3 is addressed path-style, so "
        "MinIO, Ceph and R2 work: set `AWS_ENDPOINT_URL` for them."),
)


# --- the page -------------------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _table(rows: typing.Iterable[Row], *, file_column: bool = True) -> list[str]:
    """A section's table; location-wide sections have no environments-file column (the file cannot
    set them)."""
    if not file_column:
        lines = ["| variable | default | limits | what it is |", "|---|---|---|---|"]
        return lines + [f"| {r.variable} | {r.default} | {r.limits} | {r.help} |" for r in rows]
    lines = ["| variable | default | environments file | limits | what it is |", "|---|---|---|---|---|"]
    return lines + [f"| {r.variable} | {r.default} | {r.file} | {r.limits} | {r.help} |" for r in rows]


def render() -> str:
    sections = _sections()
    out = [
        "<!-- Generated by scripts/gen_configuration.py from acci_ops/settings/; do not edit.",
        f"     After changing a setting, run `{COMMAND}`. -->",
        "",
        "# Configuration reference",
        "",
        "Every setting, generated from the settings model (`acci_ops/settings/`), where each field declares "
        "its default, variable, file key and help once. How the settings are read, how several environments "
        "work and the environments file's format: [Environments](environments.md).",
        "",
        "- **variable**: sets the value for the one environment served without an environments file. "
        "`· secret` marks a variable whose value stays in the environment: only its name enters the "
        "definitions, and Dagster reads the value (`EnvVar`) when a run starts, so it never appears in the UI, "
        "run config, tags, logs or metadata.",
        "- **environments file**: the key of an environment in `ACCI_ENVIRONMENTS_FILE` "
        "(`dr.platform` is `platform:` under `dr:`). A key marked *names the variable* holds the NAME of a "
        "variable that holds the value (`database_url_env: PRODUCTION_DATABASE_URL`), never the value. "
        "With a file, a variable marked *the variable is the default* still applies to every environment "
        "that does not set the key; the other per-environment variables are ignored.",
        "- **limits**: anything else stops the code location from loading with one line naming the variable "
        "or key, e.g. `ACCI_VALIDATION_JOBS='two' must be a whole number`.",
        "",
        "Sections: " + ", ".join(f"[{t}](#{slug(t)})" for t in
                                 ["Location-wide", *(TITLES.get(s.name, s.name) for s in sections)]) + ".",
        "",
        "## Location-wide",
        "",
        "Read by `load_settings` itself, one value for the whole code location.",
        "",
        *_table(LOCATION_WIDE),
    ]
    for section in sections:
        title = TITLES.get(section.name, section.name)
        doc = " ".join((section.cls.__doc__ or "").split())
        scope = ("Per environment." if section.per_environment else
                 "One value for the whole code location, from variables only (the environments file cannot set it).")
        intro = [f"`{section.cls.__name__}`: {doc}", scope, TURNED_ON_BY.get(section.name, "")]
        if section.name in PAGES:
            intro.append(f"How it works: [{PAGES[section.name].split('#')[0]}]({PAGES[section.name]}).")
        out += ["", f"## {title}", "", " ".join(p for p in intro if p), "",
                *_table(section_rows(section), file_column=section.per_environment)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(REPO)} is stale: run `{COMMAND}`")
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
