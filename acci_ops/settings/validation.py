"""The validation section: every backup restored into a scratch database to prove it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from acci_ops.lib.core.errors import ConfigError
from acci_ops.settings._fields import check_env_fields, file_keys, load_section, setting
from acci_ops.settings._registry import Section, register

# Written at the top level of an environment in the file (as documented before the section existed).
VALIDATION_TOP_LEVEL_KEYS = ("scratch_database_url_env", "scratch_allow_superuser")


@dataclass(frozen=True)
class ValidationSpec:
    """Restoring every backup into a scratch database to prove it; on when a scratch server is named."""

    scratch_database_url_env: str | None = setting(
        None, var="ACCI_SCRATCH_DATABASE_URL", inherit=True,
        help=("PostgreSQL maintenance database (role with LOGIN CREATEDB and nothing more) where validation "
              "restores and drills go, kept in ACCI_SCRATCH_DATABASE_URL or scratch_database_url_env."))
    scratch_allow_superuser: bool = setting(
        False, var="ACCI_SCRATCH_ALLOW_SUPERUSER", inherit=True,
        help=("Accept a scratch role that is a superuser (or a member of pg_execute_server_program, "
              "pg_write_server_files or pg_read_server_files, or has CREATEROLE). Validation and drills "
              "restore archives from the bucket; as such a role, a crafted archive can run shell commands "
              "on the scratch server. Off by default: those roles are refused."))
    mode: str = setting("auto", var="ACCI_VALIDATION_MODE", inherit=True, choices=("auto", "parallel", "stream"),
                        help="auto, parallel (decompress to a local file, pg_restore -j) or stream (no disk).")
    jobs: int = setting(2, var="ACCI_VALIDATION_JOBS", inherit=True, minimum=1,
                        help="pg_restore --jobs for parallel validation restores.")
    work_dir: str | None = setting(None, var="ACCI_VALIDATION_WORK_DIR", inherit=True,
                                   help="Where the parallel-mode local file goes (default: the system temp dir).")
    amcheck: str = setting("auto", var="ACCI_VALIDATION_AMCHECK", inherit=True, choices=("auto", "off", "required"),
                           help="pg_amcheck --heapallindexed: auto, off or required.")
    assertions_file: str | None = setting(None, var="ACCI_VALIDATION_ASSERTIONS_FILE", inherit=True,
                                          help="YAML list of {name, sql} assertions each restore must pass.")

    @property
    def enabled(self) -> bool:
        return self.scratch_database_url_env is not None


def _from_file(body: Mapping[str, object], where: str, environ: Mapping[str, str]) -> ValidationSpec:
    """``validation:`` plus the two keys written at the top of the environment."""
    section = body.get("validation")
    check_env_fields(section, where, "validation.")
    if section is None:
        section = {}
    allowed = file_keys(ValidationSpec, exclude=VALIDATION_TOP_LEVEL_KEYS)
    if not isinstance(section, dict) or set(section) - allowed:
        raise ConfigError(f"validation in {where} must be a mapping with optional {', '.join(sorted(allowed))}")
    raw = {**section, **{k: body[k] for k in VALIDATION_TOP_LEVEL_KEYS if k in body}}

    def label(key: str) -> str:
        return key if key in VALIDATION_TOP_LEVEL_KEYS else f"validation.{key}"

    return load_section(ValidationSpec, environ, raw, where=where, label=label)


register(Section(name="validation", spec=ValidationSpec, per_environment=True,
                 file_keys=frozenset({"validation", *VALIDATION_TOP_LEVEL_KEYS}), from_file=_from_file))
