"""The ACCI Framework source: its release tags, and a clean checkout of one ref.

A build always starts from a fresh clone at the exact commit (detached), never from a working tree
someone may have edited: an image must be reproducible from its ``revision`` label alone.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from acci_ops.lib.core.commands import CommandFailed, LineSink, find_tool, run_command
from acci_ops.lib.core.errors import AcciOpsError, ConfigError

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_SAFE_REF = re.compile(r"^[A-Za-z0-9._/+@-]+$")
GIT_TIMEOUT = 300


@dataclass(frozen=True)
class SourceTag:
    """A release tag: ``v1.2.0`` -> version ``1.2.0`` at ``commit`` (annotated tags peeled)."""

    tag: str
    version: str
    commit: str


@dataclass(frozen=True)
class Checkout:
    """A clean checkout of ``ref`` at ``commit`` in ``path``; ``commit_epoch`` is the committer time
    (the image's timestamp); ``version`` is set for a release tag, else None."""

    path: Path
    commit: str
    commit_epoch: int
    ref: str
    is_release: bool
    version: str | None
    repo: str

    @property
    def short(self) -> str:
        return self.commit[:12]


def _git() -> str:
    return find_tool("git", hint="install it with `apt-get install -y git`")


def _display(repo: str) -> str:
    """The repo for messages, without any credentials embedded in a URL (https://user:token@host/...)."""
    return re.sub(r"//[^/@]+@", "//", repo)


def _git_run(args: list[str], *, cwd: str | None = None, log: LineSink | None = None) -> list[str]:
    lines: list[str] = []

    def sink(line: str) -> None:
        lines.append(line)
        if log:
            log(line)

    run_command([_git(), *args], cwd=cwd, on_line=sink, timeout=GIT_TIMEOUT, env={"GIT_TERMINAL_PROMPT": "0"},
                allow_env=("GIT_SSH_COMMAND", "SSH_AUTH_SOCK", "GIT_ASKPASS"))
    return lines


def version_of(tag: str) -> str:
    """The version a release tag names: the tag without one leading ``v``."""
    return tag[1:] if tag.startswith("v") else tag


def _ls_remote(repo: str) -> dict[str, str]:
    """refs -> commit for every tag and branch of ``repo`` (annotated tags peeled)."""
    try:
        lines = _git_run(["ls-remote", "--tags", "--heads", repo])
    except CommandFailed as exc:
        raise AcciOpsError(f"cannot list the refs of {_display(repo)}: {exc.result.last_line}") from None
    refs: dict[str, str] = {}
    peeled: dict[str, str] = {}
    for line in lines:
        parts = line.split("\t")
        if len(parts) != 2 or not _HEX40.match(parts[0]):
            continue
        sha, name = parts
        if name.endswith("^{}"):
            peeled[name[:-3]] = sha
        else:
            refs[name] = sha
    refs.update(peeled)
    return refs


def list_release_tags(repo: str, pattern: str = "v*") -> list[SourceTag]:
    """Release tags of ``repo`` matching ``pattern`` (fnmatch), oldest version first."""
    refs = _ls_remote(repo)
    tags = [SourceTag(name[len("refs/tags/"):], version_of(name[len("refs/tags/"):]), sha)
            for name, sha in refs.items()
            if name.startswith("refs/tags/") and fnmatch.fnmatchcase(name[len("refs/tags/"):], pattern)]
    return sorted(tags, key=lambda t: _version_key(t.version))


def _version_key(version: str) -> tuple:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.+-]", version))


def resolve_ref(repo: str, ref: str, pattern: str = "v*") -> tuple[str, str | None]:
    """(commit, tag or None) for a tag, a version (``1.2.0`` -> tag ``v1.2.0``), a branch or a commit
    id (full, or a prefix of at least 7 hex digits, checked after cloning)."""
    if not ref or not _SAFE_REF.match(ref) or ref.startswith("-"):
        raise ConfigError(f"'{ref}' is not a valid git ref")
    refs = _ls_remote(repo)
    for candidate in (ref, f"v{ref}"):
        if f"refs/tags/{candidate}" in refs:
            return refs[f"refs/tags/{candidate}"], candidate
    if f"refs/heads/{ref}" in refs:
        return refs[f"refs/heads/{ref}"], None
    if re.fullmatch(r"[0-9a-f]{7,40}", ref):
        return ref, None
    raise ConfigError(f"unknown tag or ref '{ref}' in {_display(repo)}")


def is_release_tag(tag: str | None, pattern: str) -> bool:
    return bool(tag) and fnmatch.fnmatchcase(tag, pattern)


def checkout(repo: str, ref: str, dest: Path, *, pattern: str = "v*", log: LineSink | None = None,
             ) -> Checkout:
    """A fresh clone of ``repo`` with ``ref`` checked out (detached) in ``dest`` (emptied first).

    Unknown ref -> ConfigError "unknown tag or ref 'x' in <repo>"."""
    commit, tag = resolve_ref(repo, ref, pattern)
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _git_run(["clone", "--quiet", "--no-checkout", "--", repo, str(dest)], log=log)
    except CommandFailed as exc:
        raise AcciOpsError(f"cannot clone {_display(repo)}: {exc.result.last_line}") from None
    try:
        full = _git_run(["rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"], cwd=str(dest))
    except CommandFailed:
        raise ConfigError(f"unknown tag or ref '{ref}' in {_display(repo)}") from None
    commit = full[-1].strip()
    _git_run(["-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit], cwd=str(dest), log=log)
    epoch = int(_git_run(["show", "-s", "--format=%ct", commit], cwd=str(dest))[-1].strip())
    release = is_release_tag(tag, pattern)
    return Checkout(path=dest, commit=commit, commit_epoch=epoch, ref=ref, is_release=release,
                    version=version_of(tag) if release and tag else None, repo=repo)
