"""The ACCI Framework source: its release tags, and a clean tree of one exact commit.

A build always starts from a fresh clone at the exact commit, never from a working tree someone
may have edited: an image must be reproducible from its ``revision`` label alone.

Credentials in ``ACCI_SOURCE_REPO`` (``https://user:token@host/repo.git``) never reach git's argv,
the URL git is given, or any file: git gets the URL without them, and a credential helper given
on the command line (its text holds no secret) answers from variables set only for that one git
child, and only for the URL's own protocol and host (a redirect elsewhere gets nothing). Helpers
from the operator's git config are switched off for such a URL, so none of them stores the token.

The tree that is built (``Checkout.path``) holds no ``.git``: the clone is a bare repository
beside it, the commit is checked out into the tree from there, and the repository is deleted once
the commit id and time are read. ``COPY . /app`` therefore never publishes a remote URL or a ref.

How a partition key resolves (``resolve_ref``), first match wins:

1. 40 hex digits: that commit.
2. 7-39 hex digits with a letter among them: a commit prefix (a branch or tag of the same
   name is never used: it would let a ref pusher shadow the commit an operator asked for).
3. a version: the release tag the sensor derives it from (a tag matching the pattern whose
   version is the key: ``v1.2.0`` for ``1.2.0`` under ``v*``); two such tags are refused.
4. a release tag itself (``v1.2.0``).
5. 7-39 decimal digits: a commit prefix (after 3, so date versions such as ``20260101`` work).
6. anything that looks like a version (``1.2...``, ``v1.2...``) and is not one of the above:
   unknown. A bare tag ``1.2.0`` or a branch ``1.2.0`` never stands in for the release.
7. a branch, then a tag that is not a release tag (non-release builds added by hand).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import shutil
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from acci_ops.lib.core.commands import CommandFailed, LineSink, find_tool, run_command
from acci_ops.lib.core.errors import AcciOpsError, ConfigError

_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX_PREFIX = re.compile(r"[0-9a-f]{7,40}")
_HEX_WITH_LETTER = re.compile(r"(?=[0-9a-f]*[a-f])[0-9a-f]{7,39}")
_DECIMAL_PREFIX = re.compile(r"[0-9]{7,39}")
_SAFE_REF = re.compile(r"^[A-Za-z0-9._/+@-]+$")
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() accepts '²', which int() refuses
_VERSION_LIKE = re.compile(r"[0-9]+\.[0-9]")
# The OCI distribution spec's tag grammar: a release version becomes a registry tag as it is.
_IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
GIT_TIMEOUT = 300

# Answers git's "get" only for the URL's protocol and host, from variables of this git child; the
# helper's text (in git's argv and config) holds no secret. printf and test are shell built-ins, so
# the values never appear in an argv either.
_CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || exit 0; p=; h=; '
    'while IFS= read -r line && test -n "$line"; do case "$line" in '
    'protocol=*) p="${line#protocol=}";; host=*) h="${line#host=}";; esac; done; '
    'if test "$p" = "$ACCI_GIT_PROTOCOL" && test "$h" = "$ACCI_GIT_HOST"; then '
    'printf "username=%s\\npassword=%s\\n" "$ACCI_GIT_USERNAME" "$ACCI_GIT_PASSWORD"; fi; }; f')


@dataclass(frozen=True)
class SourceTag:
    """A release tag: ``v1.2.0`` -> version ``1.2.0`` at ``commit`` (annotated tags peeled)."""

    tag: str
    version: str
    commit: str


@dataclass(frozen=True)
class Checkout:
    """The tree of ``commit`` in ``path`` (no ``.git``: exactly what a build may read);
    ``commit_epoch`` is the committer time (the image's timestamp); ``version`` is set for a release
    tag, else None; ``repo`` is the source without credentials."""

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


@dataclass(frozen=True)
class _Remote:
    """What git is given for a repository: the URL without credentials, and the config and
    environment that hand them over (both empty when the URL carries none)."""

    url: str
    config: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict, repr=False)


def _git() -> str:
    return find_tool("git", hint="install it with `apt-get install -y git`")


def public_url(repo: str) -> str:
    """``repo`` without the credentials of a URL (``https://user:p@ss@host/x`` -> ``https://host/x``):
    everything up to the authority's LAST ``@`` goes, as a URL parser reads it, so an ``@`` inside a
    password leaves none of it behind."""
    scheme, sep, rest = repo.partition("://")
    if not sep:
        return repo
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    return f"{scheme}://{authority.rpartition('@')[2]}{rest[end:]}"



def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _remote(repo: str) -> _Remote:
    """How git reaches ``repo``; ConfigError (never echoing a secret) for credentials git would
    expose: in a URL other than http(s), or over plain http to a host that is not loopback."""
    if "://" not in repo:
        return _Remote(repo)
    scheme, _, rest = repo.partition("://")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, hostport = rest[:end].rpartition("@")
    if not at:
        return _Remote(repo)
    url = public_url(repo)
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        if ":" in userinfo:
            raise ConfigError(f"ACCI_SOURCE_REPO {url} carries a password in a {scheme} URL: git would put it in "
                              "a command line; use an https URL, or keys for ssh (SSH_AUTH_SOCK / GIT_SSH_COMMAND)")
        return _Remote(repo)  # ssh://git@host/...: a user name, no secret
    host = urllib.parse.urlsplit(f"{scheme}://{hostport}").hostname or ""
    if scheme == "http" and not _is_loopback(host):
        raise ConfigError(f"ACCI_SOURCE_REPO {url} would send its credentials over plain http to {host}: use "
                          "https (plain http with credentials is accepted for a loopback address only)")
    username, _, password = userinfo.partition(":")
    username, password = urllib.parse.unquote(username), urllib.parse.unquote(password)
    if any(c in username + password for c in "\n\r\0"):
        raise ConfigError(f"the credentials in ACCI_SOURCE_REPO {url} contain a line break or NUL byte")
    return _Remote(url, ("-c", "credential.helper=", "-c", f"credential.helper={_CREDENTIAL_HELPER}"),
                   {"ACCI_GIT_USERNAME": username, "ACCI_GIT_PASSWORD": password, "ACCI_GIT_HOST": hostport,
                    "ACCI_GIT_PROTOCOL": scheme})


def _git_run(args: list[str], *, cwd: str | None = None, log: LineSink | None = None,
             remote: _Remote | None = None) -> list[str]:
    lines: list[str] = []

    def sink(line: str) -> None:
        lines.append(line)
        if log:
            log(line)

    extra = remote or _Remote("")
    run_command([_git(), *extra.config, *args], cwd=cwd, on_line=sink, timeout=GIT_TIMEOUT,
                env={"GIT_TERMINAL_PROMPT": "0", **extra.env},
                allow_env=("GIT_SSH_COMMAND", "SSH_AUTH_SOCK", "GIT_ASKPASS"))
    return lines


def version_of(tag: str) -> str:
    """The version a release tag names: the tag without one leading ``v``."""
    return tag[1:] if tag.startswith("v") else tag


def image_tag_problem(version: str) -> str | None:
    """Why ``version`` cannot be pushed as a registry tag, or None. A ``+`` (semver build metadata,
    ``1.2.0+build.5``) is refused, not mapped: a mapped ``1.2.0_build.5`` could collide with a real
    version of that name, and a tag must name one release."""
    if _IMAGE_TAG.fullmatch(version):
        return None
    if "+" in version:
        return (f"version {version!r} cannot be an image tag: '+' (build metadata) is not allowed in tags; "
                "publish the release without it")
    return (f"version {version!r} cannot be an image tag: use ASCII letters, digits, _ . - (at most 128, not "
            "starting with . or -)")


def _ls_remote(repo: str) -> dict[str, str]:
    """refs -> commit for every tag and branch of ``repo`` (annotated tags peeled)."""
    remote = _remote(repo)
    try:
        lines = _git_run(["ls-remote", "--tags", "--heads", "--", remote.url], remote=remote)
    except CommandFailed as exc:
        raise AcciOpsError(f"cannot list the refs of {public_url(repo)}: {exc.result.last_line}") from None
    refs: dict[str, str] = {}
    peeled: dict[str, str] = {}
    for line in lines:
        parts = line.split("\t")
        if len(parts) != 2 or not _HEX40.fullmatch(parts[0]):
            continue
        sha, name = parts
        if name.endswith("^{}"):
            peeled[name[:-3]] = sha
        else:
            refs[name] = sha
    refs.update(peeled)
    return refs


def list_release_tags(repo: str, pattern: str = "v*") -> list[SourceTag]:
    """Release tags of ``repo`` matching ``pattern`` (fnmatch), oldest version first. A tag whose
    version is unusable is listed too (sorted as text): the caller reports it, a listing never fails."""
    refs = _ls_remote(repo)
    tags = [SourceTag(name[len("refs/tags/"):], version_of(name[len("refs/tags/"):]), sha)
            for name, sha in refs.items()
            if name.startswith("refs/tags/") and fnmatch.fnmatchcase(name[len("refs/tags/"):], pattern)]
    return sorted(tags, key=lambda t: _version_key(t.version))


def _version_key(version: str) -> tuple:
    return tuple((0, int(p), "") if _DIGITS.fullmatch(p) else (1, 0, p) for p in re.split(r"[.+-]", version))


def _release_tags_for(refs: dict[str, str], version: str, pattern: str) -> list[str]:
    return sorted(name[len("refs/tags/"):] for name in refs
                  if name.startswith("refs/tags/") and fnmatch.fnmatchcase(name[len("refs/tags/"):], pattern)
                  and version_of(name[len("refs/tags/"):]) == version)


def _pick(refs: dict[str, str], ref: str, pattern: str, repo: str) -> tuple[str, str | None, str]:
    """``(commit or commit prefix, tag or None, what it is for messages)`` by the module's precedence."""
    if _HEX40.fullmatch(ref):
        return ref, None, f"commit {ref[:12]}"
    if _HEX_WITH_LETTER.fullmatch(ref):
        return ref, None, f"commit {ref}"
    releases = _release_tags_for(refs, ref, pattern)
    if len(releases) > 1:
        raise ConfigError(f"version {ref} is named by {len(releases)} release tags ({', '.join(releases)}) in "
                          f"{public_url(repo)}; not built: delete all but one")
    if releases:
        return refs[f"refs/tags/{releases[0]}"], releases[0], f"tag {releases[0]}"
    if f"refs/tags/{ref}" in refs and fnmatch.fnmatchcase(ref, pattern):
        return refs[f"refs/tags/{ref}"], ref, f"tag {ref}"
    if _DECIMAL_PREFIX.fullmatch(ref):
        return ref, None, f"commit {ref}"
    if _VERSION_LIKE.match(version_of(ref)):
        shadow = next((kind for kind, prefix in (("tag", "refs/tags/"), ("branch", "refs/heads/"))
                       if f"{prefix}{ref}" in refs), None)
        hint = (f": a version builds only its release tag (pattern {pattern}); {shadow} {ref} is not one"
                if shadow else "")
        raise ConfigError(f"unknown tag or ref '{ref}' in {public_url(repo)}{hint}")
    if f"refs/heads/{ref}" in refs:
        return refs[f"refs/heads/{ref}"], None, f"branch {ref}"
    if f"refs/tags/{ref}" in refs:
        return refs[f"refs/tags/{ref}"], ref, f"tag {ref}"
    raise ConfigError(f"unknown tag or ref '{ref}' in {public_url(repo)}")


def _same_commit(commit: str, expected: str) -> bool:
    return commit.startswith(expected) or expected.startswith(commit)


def _moved(ref: str, what: str, commit: str, expected: str) -> AcciOpsError:
    return AcciOpsError(f"partition {ref}: {what} now names {commit[:12]}, the sensor saw {expected[:12]}; not "
                        "built (tags are immutable: publish a new version)")


def resolve_ref(repo: str, ref: str, pattern: str = "v*", *,
                expected_commit: str | None = None) -> tuple[str, str | None]:
    """(commit, tag or None) for ``ref`` by the precedence in the module docstring (a commit prefix
    is returned as given, and checked after cloning).

    ``expected_commit``: the commit the run was requested for (the sensor's ``acci/revision``); a
    ref that now names another commit is refused in one line, so a run never builds a tag that
    moved after the sensor saw it. A release whose version cannot be an image tag is refused
    before anything is built."""
    if not ref or not _SAFE_REF.match(ref) or ref.startswith("-"):
        raise ConfigError(f"'{ref}' is not a valid git ref")
    if expected_commit is not None and not _HEX_PREFIX.fullmatch(expected_commit):
        raise ConfigError(f"partition {ref}: the expected commit {expected_commit[:48]!r} is not a commit id "
                          "(run tag acci/revision)")
    commit, tag, what = _pick(_ls_remote(repo), ref, pattern, repo)
    if is_release_tag(tag, pattern):
        problem = image_tag_problem(version_of(tag or ""))
        if problem:
            raise ConfigError(f"release tag {tag}: {problem}")
    if expected_commit and not _same_commit(commit, expected_commit):
        raise _moved(ref, what, commit, expected_commit)
    return commit, tag


def is_release_tag(tag: str | None, pattern: str) -> bool:
    return bool(tag) and fnmatch.fnmatchcase(tag, pattern)


def _commits_named(where: list[str], commit: str) -> list[str]:
    """The commits ``commit`` (an id or a prefix) names in the clone, looked up as object ids only:
    ``rev-parse <prefix>`` would prefer a branch or tag of that name."""
    if _HEX40.fullmatch(commit):
        candidates = [commit]
    else:
        candidates = [line.strip() for line in _git_run([*where, "rev-parse", f"--disambiguate={commit}"])
                      if _HEX40.fullmatch(line.strip())]
    commits = []
    for candidate in candidates:
        try:
            if _git_run([*where, "cat-file", "-t", candidate])[-1].strip() == "commit":
                commits.append(candidate)
        except CommandFailed:
            continue
    return commits


def checkout(repo: str, ref: str, dest: Path, *, pattern: str = "v*", log: LineSink | None = None,
             expected_commit: str | None = None) -> Checkout:
    """The tree of ``ref``'s commit in ``dest`` (emptied first), from a fresh clone.

    Unknown ref -> ConfigError "unknown tag or ref 'x' in <repo>"; ``expected_commit`` as in
    ``resolve_ref``, and checked again against the commit actually checked out."""
    commit, tag = resolve_ref(repo, ref, pattern, expected_commit=expected_commit)
    remote = _remote(repo)
    dest = Path(dest)
    git_dir = dest.with_name(dest.name + ".git")
    for path in (dest, git_dir):
        if path.exists():
            shutil.rmtree(path)
    dest.mkdir(parents=True)
    where = ["--git-dir", str(git_dir)]
    try:
        try:
            _git_run(["clone", "--quiet", "--bare", "--", remote.url, str(git_dir)], log=log, remote=remote)
        except CommandFailed as exc:
            raise AcciOpsError(f"cannot clone {public_url(repo)}: {exc.result.last_line}") from None
        found = _commits_named(where, commit)
        if len(found) > 1:
            raise ConfigError(f"commit prefix '{ref}' names {len(found)} commits in {public_url(repo)}: use more "
                              "digits")
        if not found:
            raise ConfigError(f"unknown tag or ref '{ref}' in {public_url(repo)}")
        full = found[0]
        if expected_commit and not full.startswith(expected_commit):
            raise _moved(ref, f"tag {tag}" if tag else f"ref {ref}", full, expected_commit)
        _git_run([*where, "--work-tree", str(dest), "-c", "advice.detachedHead=false", "checkout", "--quiet",
                  "--detach", "--force", full], log=log)
        epoch = int(_git_run([*where, "show", "-s", "--format=%ct", full])[-1].strip())
    finally:
        shutil.rmtree(git_dir, ignore_errors=True)
    release = is_release_tag(tag, pattern)
    return Checkout(path=dest, commit=full, commit_epoch=epoch, ref=ref, is_release=release,
                    version=version_of(tag) if release and tag else None, repo=public_url(repo))
