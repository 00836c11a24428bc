"""A production ``dagster.yaml`` checked before Dagster reads it, with one line naming the key.

Dagster validates the file itself, but only when a process starts, and its errors are a schema dump;
and it accepts what acci_ops must not run with: SQLite storage on a shared deployment, a password
written in the file, ``env_vars: [NAME=value]`` (a value in the file, then in every run container's
spec), a launcher image named by a tag (a run could start another version than its code server), run
monitoring off (a run worker that dies leaves the run STARTING forever: dagster#8312) or without
freeing a dead run's pool slots (every later run of that pool stays QUEUED). Run it where
the file is deployed, before the processes start:

    python -m acci_ops.lib.instance.check /opt/dagster/dagster_home/dagster.yaml [--env-file acci-ops.env]

``--env-file``: the Compose env file of the code server; each name in it must be in the launcher's
``env_vars``, or run containers would run without it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.releases.deployers import parse_image_ref

POSTGRES_KEYS = ("username", "password", "hostname", "db_name")
LAUNCHERS = {"DockerRunLauncher": "dagster_docker", "K8sRunLauncher": "dagster_k8s"}
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _mapping(value: object, key: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping, not {type(value).__name__}")
    return value


def _from_env(value: object, key: str) -> None:
    """A secret is ``{env: NAME}``: the value stays in the environment, never in the file."""
    if isinstance(value, Mapping) and set(value) == {"env"} and isinstance(value["env"], str) \
            and _VARIABLE.fullmatch(value["env"]):
        return
    raise ConfigError(f"{key} is written in the file: give it as {{env: NAME}} (the variable that holds it)")


def _digest(value: object, key: str) -> None:
    try:
        parse_image_ref(value, key)  # the reference grammar releases deploy by
    except ConfigError:
        raise ConfigError(f"{key} {value!r} is not an image by digest (repo@sha256:<64 hex>): a tag can move, "
                          "and a run would start another version than its code server") from None


def check_storage(doc: Mapping) -> None:
    storage = doc.get("storage")
    if storage is None:
        raise ConfigError("storage is missing: production needs storage.postgres (without it Dagster keeps runs "
                          "in SQLite under DAGSTER_HOME, which only one machine can use)")
    postgres = _mapping(storage, "storage").get("postgres")
    if postgres is None:
        raise ConfigError(f"storage.postgres is missing (storage has {', '.join(map(str, storage)) or 'nothing'}): "
                          "production storage is PostgreSQL")
    db = _mapping(_mapping(postgres, "storage.postgres").get("postgres_db"), "storage.postgres.postgres_db")
    for key in POSTGRES_KEYS:
        if key not in db:
            raise ConfigError(f"storage.postgres.postgres_db.{key} is missing")
    _from_env(db["password"], "storage.postgres.postgres_db.password")


def check_launcher(doc: Mapping) -> None:
    launcher = _mapping(doc.get("run_launcher"), "run_launcher")
    name, module = launcher.get("class"), launcher.get("module")
    if name not in LAUNCHERS:
        raise ConfigError(f"run_launcher.class {name!r} is not one of {', '.join(LAUNCHERS)} (the default launcher "
                          "cannot detect a crashed run worker)")
    if module != LAUNCHERS[name]:
        raise ConfigError(f"run_launcher.module {module!r} must be {LAUNCHERS[name]!r} for {name}")
    config = _mapping(launcher.get("config", {}), "run_launcher.config")
    image_key = "image" if name == "DockerRunLauncher" else "job_image"
    if image_key in config:
        _digest(config[image_key], f"run_launcher.config.{image_key}")
    for entry in config.get("env_vars") or []:
        if not isinstance(entry, str) or not _VARIABLE.fullmatch(entry):
            raise ConfigError(f"run_launcher.config.env_vars entry {str(entry).split('=')[0]!r}... must be a "
                              "variable's name only: NAME=value writes the value into the file and every run's spec")
    if name == "K8sRunLauncher" and not config.get("service_account_name"):
        raise ConfigError("run_launcher.config.service_account_name is missing: run pods need the acci-ops-runs "
                          "account (deploy/dagster/k8s/rbac.yaml)")


def check_monitoring(doc: Mapping) -> None:
    monitoring = doc.get("run_monitoring")
    if not isinstance(monitoring, Mapping) or monitoring.get("enabled") is not True:
        raise ConfigError("run_monitoring.enabled must be true: without it a run worker that dies leaves its run "
                          "STARTING forever and no alert fires")
    free = monitoring.get("free_slots_after_run_end_seconds")
    if not isinstance(free, int) or isinstance(free, bool) or free <= 0:
        raise ConfigError("run_monitoring.free_slots_after_run_end_seconds must be a number of seconds (60): a run "
                          "worker that dies keeps its pool slot, and every later backup of that environment stays "
                          "QUEUED")


def env_file_names(text: str) -> list[str]:
    """The variable names a Compose ``env_file`` sets (``NAME=value`` lines; comments and blanks skipped)."""
    names = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name = line.removeprefix("export ").partition("=")[0].strip()
        if not _VARIABLE.fullmatch(name):
            raise ConfigError(f"line {number} is not NAME=value")
        names.append(name)
    return names


def check_env_names(doc: Mapping, names: list[str], where: str) -> None:
    """Every variable the code location gets must reach run containers too: a name the code server has
    but the launcher does not pass makes a run load other settings, or die before it reports (STARTING
    forever, dagster#8312)."""
    config = _mapping(_mapping(doc.get("run_launcher"), "run_launcher").get("config", {}), "run_launcher.config")
    passed = set(config.get("env_vars") or [])
    for name in names:
        if name not in passed:
            raise ConfigError(f"{name} is set in {where} but not in run_launcher.config.env_vars: run containers "
                              "would not get it")


def check_instance(doc: object) -> None:
    """Raise ConfigError (one line naming the key) for a configuration acci_ops must not run with."""
    doc = _mapping(doc, "dagster.yaml")
    check_storage(doc)
    check_launcher(doc)
    check_monitoring(doc)


def check_file(path: Path, env_file: Path | None = None) -> None:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        check_instance(doc)
        if env_file is not None:
            try:
                names = env_file_names(Path(env_file).read_text())
            except OSError as exc:
                raise ConfigError(f"{env_file} cannot be read ({exc.strerror})") from None
            except ConfigError as exc:
                raise ConfigError(f"{env_file}: {exc}") from None
            check_env_names(doc, names, str(env_file))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env_file = None
    if len(args) == 3 and args[1] == "--env-file":
        env_file = Path(args.pop(2))
        args.pop(1)
    if len(args) != 1:
        print("usage: python -m acci_ops.lib.instance.check DAGSTER_YAML [--env-file ENV_FILE]", file=sys.stderr)
        return 2
    try:
        check_file(Path(args[0]), env_file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args[0]}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
