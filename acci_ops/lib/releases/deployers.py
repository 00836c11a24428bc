"""Release deployers: put one image, named by its digest, into an environment, and take it back out.

A release is only as repeatable as the name of what it deploys: a moving tag (``:latest``, ``:1.4``)
can point at a different image tomorrow, so a rollback "to the previous tag" may deploy something that
never ran. Every deployer therefore takes ``repo@sha256:<64 hex>`` and nothing else, records the
digest it replaced (``DeployResult.previous_image_ref``), and rolls back to a digest or a recorded
revision.

``ReleaseTarget`` is the interface the release jobs drive; ``HelmRelease``
(``acci_ops.lib.releases.helm_release``) and ``ComposeRelease`` (``acci_ops.lib.releases.compose_release``)
implement it. Both run their tools through an injectable runner with ``run_command``'s signature, so the
exact argv is testable and secrets stay in the environment or in 0600 files, never in argv.

A deploy that a killed client left half done (a Helm release stuck ``pending-upgrade``, Compose
containers left ``created``/``exited``) blocks or corrupts the next one; ``recover_stuck`` detects and
repairs that and returns the line saying what it did, and ``HelmRelease.deploy`` calls it first.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from acci_ops.lib.core.commands import CommandResult
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.platform.backends import AppRuntime

Log = Callable[[str], None]
Runner = Callable[..., CommandResult]

# The distribution spec's reference grammar, restricted to what a release may name: an optional
# registry host (with port), lowercase path components, and a sha256 digest. No tag: "repo:tag@digest"
# is refused too, because people read the tag and the engine uses the digest.
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?/)"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_HOST}?{_COMPONENT}(?:/{_COMPONENT})*$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_STDOUT = 64 * 2**20  # JSON answers of helm/compose/docker are far smaller; a runaway tool is stopped


def shown(value: object, limit: int = 120) -> str:
    """A value for a one-line message: repr'd (control characters visible) and cut to ``limit``."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class ImageRef:
    """An image named by content: ``repository@sha256:<64 hex>``."""

    repository: str
    digest: str

    def __str__(self) -> str:
        return f"{self.repository}@{self.digest}"


def parse_image_ref(value: object, what: str = "image reference") -> ImageRef:
    """``repo@sha256:<64 hex>`` split into repository and digest; a ConfigError (one line, the value
    shown) for anything else: a tag, a short or upper-case digest, another algorithm, spaces."""
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string repo@sha256:<64 hex digits>, got {type(value).__name__}")
    repository, at, digest = value.partition("@")
    if not at or not _DIGEST.fullmatch(digest):
        raise ConfigError(f"{what} {shown(value)} is not repo@sha256:<64 lowercase hex digits>: a release deploys "
                          "an image by digest, never by a tag that can move")
    if not _REPOSITORY.fullmatch(repository):
        last = repository.rsplit("/", 1)[-1]
        why = "it also carries a tag; give the repository and digest only" if ":" in last else \
            "the repository is not a valid lowercase image name"
        raise ConfigError(f"{what} {shown(value)} is not repo@sha256:<64 hex digits>: {why}")
    return ImageRef(repository, digest)


def image_ref_or_none(repository: object, digest: object) -> str | None:
    """``repository@digest`` when both form a valid pinned reference, else None (a tag-only record)."""
    if not isinstance(repository, str) or not isinstance(digest, str) or not digest:
        return None
    try:
        return str(parse_image_ref(f"{repository}@{digest}"))
    except ConfigError:
        return None


@dataclass(frozen=True)
class DeployResult:
    """What a deploy or rollback left running.

    ``revision``: the Helm revision now deployed (None for Compose, which keeps no revisions).
    ``previous_image_ref``: the digest that ran before, the rollback target (None when nothing ran or
    it was not pinned by digest). ``recovered``: the line ``recover_stuck`` logged, when it had to.
    ``analysis``: the verdict the deployer itself already reached on what now serves (blue/green judges
    the new color before the switch, a canary its 100 % step); the release takes it instead of
    measuring the same version again."""

    app_url: str
    revision: int | None
    previous_image_ref: str | None
    seconds: float
    image_ref: str | None = None
    recovered: str | None = None
    analysis: Any = None


@dataclass(frozen=True)
class RollbackTarget:
    """Where to roll back to: an image digest, or (Helm only) a revision number; exactly one."""

    image_ref: str | None = None
    revision: int | None = None

    def __post_init__(self) -> None:
        if (self.image_ref is None) == (self.revision is None):
            raise ConfigError("a rollback target is either an image_ref (repo@sha256:...) or a revision, "
                              "exactly one of them")
        if self.image_ref is not None:
            parse_image_ref(self.image_ref, "rollback image reference")
        if self.revision is not None and (isinstance(self.revision, bool) or not isinstance(self.revision, int)
                                          or self.revision < 1):
            raise ConfigError(f"rollback revision must be a positive integer, got {shown(self.revision)}")


@dataclass(frozen=True)
class CurrentState:
    """What the environment runs now.

    ``image_ref``: the pinned image of the last good deploy (Helm: the last ``deployed`` revision's
    values; Compose: the running app container), None when unknown or not pinned. ``status``: Helm's
    status of the newest revision, or the app containers' states ("running", "exited", ...);
    "absent" when nothing is deployed. ``stuck``: a half-finished deploy that ``recover_stuck`` repairs."""

    image_ref: str | None
    revision: int | None
    status: str
    stuck: bool = False


class DeployFailed(AcciOpsError):
    """A deploy did not become healthy. ``rolled_back``: the tool already restored the previous version
    (Helm's --rollback-on-failure); otherwise ``previous_image_ref`` is what to roll back to.
    ``analysis``: the analysis that stopped it, when a deployer judged the version itself (blue/green's
    idle color, a canary step), so its measurements are recorded with the release."""

    def __init__(self, message: str, *, previous_image_ref: str | None, rolled_back: bool,
                 analysis: Any = None) -> None:
        super().__init__(message)
        self.previous_image_ref = previous_image_ref
        self.rolled_back = rolled_back
        self.analysis = analysis


class ReleaseTarget:
    """One environment a release deploys to. Implementations: HelmRelease, ComposeRelease."""

    backend = "abstract"

    def deploy(self, image_ref: str, runtime: AppRuntime | None, log: Log) -> DeployResult:
        """Deploy ``image_ref`` (``repo@sha256:...``) and wait until it is up; raise DeployFailed if not."""
        raise NotImplementedError

    def rollback(self, to: RollbackTarget, log: Log, *, runtime: AppRuntime | None = None) -> DeployResult:
        """Put ``to`` back (a digest, or a Helm revision), with a timeout of its own."""
        raise NotImplementedError

    def recover_stuck(self, log: Log, *, last_image_ref: str | None = None,
                      runtime: AppRuntime | None = None) -> str | None:
        """Repair a deploy an interrupted client left half done; the line saying what was done, or None."""
        raise NotImplementedError

    def current(self, log: Log) -> CurrentState:
        """What runs now (read-only)."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.backend


# --- helpers shared by the implementations ------------------------------------------------------

@contextmanager
def private_dir(run_dir: str | os.PathLike | None = None, prefix: str = "acci-release-") -> Iterator[Path]:
    """A directory only this user can read: ``run_dir`` when given (created 0700, kept), else a
    temporary one removed afterwards. Values and override files are written in it."""
    if run_dir is not None:
        path = Path(run_dir)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` with mode 0600 from the first byte (a secret is never readable by
    others, not even briefly), replacing an older file atomically."""
    partial = path.with_name(path.name + ".partial")
    if partial.exists():
        partial.unlink()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    partial.replace(path)
    return path


def write_private_yaml(path: Path, data: object, header: str = "") -> Path:
    return write_private(path, header + yaml.safe_dump(data, sort_keys=False))


def load_json(data: bytes, what: str) -> Any:
    """A tool's JSON answer, or an AcciOpsError naming which answer was not JSON."""
    try:
        return json.loads(data.decode("utf-8", errors="strict") or "null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AcciOpsError(f"{what} is not valid JSON ({type(exc).__name__} at {getattr(exc, 'pos', '?')})") from None


def expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it has the expected JSON type (a bool is not an int), else a one-line AcciOpsError."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        names = " or ".join({dict: "an object", list: "a list", str: "a string", int: "an integer"}.get(k, k.__name__)
                            for k in kinds)
        got = "null" if value is None else type(value).__name__
        raise AcciOpsError(f"{what} is not {names} (got {got}); the tool's output format is not what acci_ops reads")
    return value
