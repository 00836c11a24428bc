"""Helm releases by digest: ``helm upgrade --install`` with ``--rollback-on-failure``, stuck-release
recovery, and ``helm rollback`` to a recorded digest or revision.

Why each step is there:

- The chart is rendered locally first (``helm template``, no cluster) and the Deployment must run exactly
  ``repo@sha256:...``: a chart that ignores ``image.digest`` would otherwise deploy its default tag while
  the release believes it deployed the digest.
- A client killed mid-upgrade (an OOM-killed step, a cancelled run) leaves the release ``pending-upgrade``
  (or ``pending-install``/``pending-rollback``) and helm then refuses every later upgrade ("another
  operation (install/upgrade/rollback) is in progress"). ``recover_stuck`` rolls such a release back to its
  last deployed revision (or uninstalls a first install that never finished), with a timeout of its own.
  A pending revision younger than ``stale_after_seconds`` may belong to a client that is still running, so
  it is left alone and the deploy stops saying so.
- ``--history-max`` keeps the release history bounded (each revision is a Secret in the namespace) while
  leaving revisions to roll back to; the previous digest is read from the revision's own values
  (``helm get values --revision N``), not guessed from a tag.

helm's JSON answers (``history``, ``get values``, ``upgrade --output json``) are read as hostile input:
anything of an unexpected shape is a one-line AcciOpsError. ``get values`` and ``upgrade --output json``
hold the app's secrets, so they are captured in memory and parsed, never written to the log.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from acci_ops.lib.core.commands import HELM_ENV, CommandFailed, CommandResult, CommandTimeout, run_command
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.platform.backends import AppRuntime, HelmPlatform
from acci_ops.lib.releases.deployers import (
    MAX_STDOUT,
    CurrentState,
    DeployFailed,
    DeployResult,
    ImageRef,
    Log,
    ReleaseTarget,
    RollbackTarget,
    Runner,
    expect,
    load_json,
    parse_image_ref,
    private_dir,
    shown,
    write_private_yaml,
)

PENDING = ("pending-install", "pending-upgrade", "pending-rollback")
RAN = ("deployed", "superseded")  # revisions that were live at some point: the only rollback targets
READ_TIMEOUT = 120
HISTORY_MAX_LIMIT = 100
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class _NotFound:
    def __repr__(self) -> str:
        return "NOT_FOUND"


NOT_FOUND: Any = _NotFound()  # what a read returns when helm says "release: not found"


@dataclass(frozen=True)
class Revision:
    """One entry of ``helm history --output json``."""

    number: int
    status: str
    updated: datetime | None
    description: str = ""


def parse_history(data: Any, release: str) -> list[Revision]:
    """``helm history --output json`` as revisions sorted by number; AcciOpsError on any odd shape."""
    what = f"helm history of release {release}"
    entries = expect(data, list, what)
    revisions: list[Revision] = []
    for index, entry in enumerate(entries):
        item = expect(entry, dict, f"entry {index} of {what}")
        number = expect(item.get("revision"), int, f"'revision' of entry {index} of {what}")
        if number < 1:
            raise AcciOpsError(f"'revision' of entry {index} of {what} is {number}, not a positive revision number")
        status = expect(item.get("status"), str, f"'status' of revision {number} of release {release}")
        updated = item.get("updated")
        when = None
        if updated is not None:
            when = _parse_time(expect(updated, str, f"'updated' of revision {number} of release {release}"))
        description = item.get("description", "")
        revisions.append(Revision(number, status, when, description if isinstance(description, str) else ""))
    numbers = [r.number for r in revisions]
    if len(set(numbers)) != len(numbers):
        raise AcciOpsError(f"{what} lists a revision twice; the tool's output format is not what acci_ops reads")
    return sorted(revisions, key=lambda r: r.number)


def _parse_time(value: str) -> datetime | None:
    """helm's RFC 3339 times ("2026-12-02T12:59:46.123456789Z"); None when unreadable (age unknown)."""
    text = value.strip().replace("Z", "+00:00")
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if match:  # Python reads at most 6 fractional digits; helm writes up to 9
        text = match.group(1) + (match.group(2) or "")[:7] + match.group(3)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else None


def image_in_values(data: Any, release: str, revision: int) -> str | None:
    """The pinned image a revision's user-supplied values record (``image.repository`` +
    ``image.digest``), None when it records none (a tag-only deploy); AcciOpsError on odd shapes."""
    what = f"values of revision {revision} of release {release}"
    if data is None:  # `helm get values` prints null for a release deployed without any values
        return None
    values = expect(data, dict, what)
    image = values.get("image")
    if image is None:
        return None
    image = expect(image, dict, f"'image' in the {what}")
    digest = image.get("digest")
    if digest is None or digest == "":
        return None
    digest = expect(digest, str, f"'image.digest' in the {what}")
    repository = expect(image.get("repository"), str, f"'image.repository' in the {what}")
    try:
        return str(parse_image_ref(f"{repository}@{digest}"))
    except ConfigError:
        raise AcciOpsError(f"the {what} record image {shown(f'{repository}@{digest}')}, which is not "
                           "repo@sha256:<64 hex digits>") from None


def rendered_images(manifest: str) -> list[str]:
    """The container images of every Deployment in a rendered manifest (``helm template`` output)."""
    images: list[str] = []
    try:
        documents = list(yaml.safe_load_all(manifest))
    except yaml.YAMLError as exc:
        raise AcciOpsError(f"helm template printed YAML that does not parse ({type(exc).__name__})") from None
    for doc in documents:
        if isinstance(doc, dict) and doc.get("kind") == "Deployment":
            spec = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
            for container in spec.get("containers") or []:
                if isinstance(container, dict) and isinstance(container.get("image"), str):
                    images.append(container["image"])
    return images


@dataclass
class HelmRelease(ReleaseTarget):
    """A Helm release the release jobs deploy to, by digest.

    ``app_url`` may name ``{namespace}`` and ``{release}``. ``values_files`` are applied as given;
    the app's DATABASE_URL/REDIS_URL come from the ``runtime`` passed to ``deploy`` (a private 0600
    values file), or, without one, from the values files (``existingSecret``). ``history_max`` (2 to
    100) bounds the revisions helm keeps. ``stale_after_seconds``: how old a pending revision must be
    before it is taken for an interrupted client's (default: the timeout plus two minutes)."""

    release: str
    namespace: str
    chart: str
    app_url: str
    values_files: Sequence[str] = ()
    helm: str = "helm"
    kube_context: str | None = None
    timeout_seconds: int = 600
    history_max: int = 10
    stale_after_seconds: float | None = None
    create_namespace: bool = False
    runner: Runner = run_command
    clock: Callable[[], float] = time.time
    backend = "helm"

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.release) or len(self.release) > 53:
            raise ConfigError(f"Helm release name {shown(self.release)} is not a lowercase DNS name of at most "
                              "53 characters")
        if not _NAME.fullmatch(self.namespace) or len(self.namespace) > 63:
            raise ConfigError(f"Kubernetes namespace {shown(self.namespace)} is not a lowercase DNS label")
        if not Path(self.chart).joinpath("Chart.yaml").is_file():
            raise ConfigError(f"Helm chart {self.chart} not found (no Chart.yaml there)")
        for values in self.values_files:
            if not Path(values).is_file():
                raise ConfigError(f"Helm values file {values} not found")
        if not self.app_url:
            raise ConfigError("the helm release target needs the app URL to verify (app_url)")
        if isinstance(self.timeout_seconds, bool) or not isinstance(self.timeout_seconds, int) \
                or self.timeout_seconds < 1:
            raise ConfigError(f"helm timeout must be a positive number of seconds, got {shown(self.timeout_seconds)}")
        if isinstance(self.history_max, bool) or not isinstance(self.history_max, int) \
                or not 2 <= self.history_max <= HISTORY_MAX_LIMIT:
            raise ConfigError(f"helm history_max must be 2 to {HISTORY_MAX_LIMIT} (a bounded history that still "
                              f"holds a revision to roll back to), got {shown(self.history_max)}")

    @classmethod
    def from_platform(cls, platform: HelmPlatform, **overrides: Any) -> HelmRelease:
        """The release target for the release and chart DR drives (same namespace, values, helm)."""
        fields = dict(release=platform.release, namespace=platform.namespace, chart=platform.chart,
                      app_url=platform.app_url, values_files=tuple(platform.values_files), helm=platform.helm,
                      kube_context=platform.kube_context, timeout_seconds=platform.timeout_seconds,
                      runner=platform.runner)
        return cls(**{**fields, **overrides})

    def describe(self) -> str:
        return f"helm release {self.release} in namespace {self.namespace}"

    @property
    def url(self) -> str:
        return self.app_url.format(namespace=self.namespace, release=self.release)

    # --- argv ---------------------------------------------------------------------------------

    def _base(self, *args: str) -> list[str]:
        argv = [self.helm, *args, "--namespace", self.namespace]
        if self.kube_context:
            argv += ["--kube-context", self.kube_context]
        return argv

    def _values_args(self, image: ImageRef, secret_values: str | None) -> list[str]:
        argv: list[str] = []
        for values in self.values_files:
            argv += ["--values", values]
        if secret_values:
            argv += ["--values", secret_values]
        # --set-string: a value is never re-typed (a repository "1234" stays a string). The reference
        # grammar parse_image_ref enforces has no ',', '=', '[' or '\\', which --set would split on.
        return argv + ["--set-string", f"image.repository={image.repository}",
                       "--set-string", f"image.digest={image.digest}"]

    def template_argv(self, image: ImageRef, secret_values: str | None) -> list[str]:
        return [self.helm, "template", self.release, self.chart, "--namespace", self.namespace,
                *self._values_args(image, secret_values)]

    def upgrade_argv(self, image: ImageRef, secret_values: str | None) -> list[str]:
        argv = self._base("upgrade", "--install", self.release, self.chart)
        if self.create_namespace:
            argv.append("--create-namespace")
        # --rollback-on-failure (helm 4's --atomic) waits for readiness and restores the previous
        # revision when the new one does not become ready within --timeout.
        return argv + self._values_args(image, secret_values) + [
            "--rollback-on-failure", "--wait", "--timeout", f"{self.timeout_seconds}s",
            "--history-max", str(self.history_max), "--output", "json"]

    def rollback_argv(self, revision: int) -> list[str]:
        return self._base("rollback", self.release, str(revision)) + [
            "--wait", "--timeout", f"{self.timeout_seconds}s", "--history-max", str(self.history_max)]

    def uninstall_argv(self) -> list[str]:
        return self._base("uninstall", self.release) + ["--wait", "--timeout", f"{self.timeout_seconds}s"]

    # --- reading state ------------------------------------------------------------------------

    def _read(self, argv: list[str], what: str, log: Log) -> Any:
        """A read-only helm command's JSON answer; ``NOT_FOUND`` when the release does not exist."""
        result = self.runner(argv, timeout=READ_TIMEOUT, on_line=log, allow_env=HELM_ENV, capture_stdout=True,
                             max_stdout_bytes=MAX_STDOUT, check=False)
        if result.returncode != 0:
            if any("release: not found" in line for line in result.tail):
                return NOT_FOUND
            raise CommandFailed(result)
        return load_json(result.stdout, what)

    def history(self, log: Log) -> list[Revision]:
        """The release's revisions, oldest first; empty when it is not installed."""
        data = self._read(self._base("history", self.release) + ["--output", "json"],
                          f"helm history of release {self.release}", log)
        return [] if data is NOT_FOUND else parse_history(data, self.release)

    def revision_image(self, revision: int, log: Log, memo: dict[int, str | None] | None = None) -> str | None:
        """The pinned image revision ``revision`` deployed, from its recorded values (``memo``: answers
        already read during this operation, so no revision is asked twice)."""
        if memo is not None and revision in memo:
            return memo[revision]
        data = self._read(self._base("get", "values", self.release) + ["--revision", str(revision), "--output", "json"],
                          f"helm get values of revision {revision} of release {self.release}", log)
        if data is NOT_FOUND:
            raise AcciOpsError(f"helm has no values for revision {revision} of release {self.release}")
        image = image_in_values(data, self.release, revision)
        if memo is not None:
            memo[revision] = image
        return image

    @staticmethod
    def _deployed(history: list[Revision]) -> Revision | None:
        return next((r for r in reversed(history) if r.status == "deployed"), None)

    @staticmethod
    def _last_good(history: list[Revision], below: int) -> Revision | None:
        """The revision to return to from a pending one: the newest deployed, else the newest superseded."""
        older = [r for r in history if r.number < below]
        return next((r for r in reversed(older) if r.status == "deployed"), None) or \
            next((r for r in reversed(older) if r.status == "superseded"), None)

    def current(self, log: Log) -> CurrentState:
        history = self.history(log)
        if not history:
            return CurrentState(None, None, "absent")
        latest, deployed = history[-1], self._deployed(history)
        image = self.revision_image(deployed.number, log) if deployed else None
        return CurrentState(image, deployed.number if deployed else None, latest.status,
                            stuck=latest.status in PENDING)

    # --- changing state -----------------------------------------------------------------------

    def _change(self, argv: list[str], what: str, log: Log) -> CommandResult:
        """A mutating helm command with its own full timeout (never what is left of an earlier one)."""
        try:
            return self.runner(argv, timeout=self.timeout_seconds + 60, on_line=log, allow_env=HELM_ENV)
        except CommandTimeout:
            raise AcciOpsError(f"{what} did not finish within {self.timeout_seconds + 60} s and was killed; "
                               "the release may be left pending, which the next deploy recovers") from None
        except CommandFailed as exc:
            raise AcciOpsError(f"{what} failed: {exc}") from None

    def _check_stale(self, pending: Revision) -> None:
        limit = self.stale_after_seconds if self.stale_after_seconds is not None else self.timeout_seconds + 120
        if pending.updated is None:
            return  # helm always records the time; without it the revision cannot be a live client's
        age = self.clock() - pending.updated.timestamp()
        if age < limit:
            raise AcciOpsError(
                f"release {self.release} is {pending.status} at revision {pending.number} since {max(age, 0):.0f} s: "
                f"another helm client may still be deploying it; acci_ops recovers a pending release only once "
                f"it is {limit:.0f} s old (retry then, or look at `helm history {self.release} -n {self.namespace}`)")

    def _recover(self, history: list[Revision], log: Log) -> str | None:
        if not history or history[-1].status not in PENDING:
            return None
        pending = history[-1]
        self._check_stale(pending)
        left = f"release {self.release} was left {pending.status} at revision {pending.number} by an interrupted client"
        good = self._last_good(history, below=pending.number)
        if good is not None:
            self._change(self.rollback_argv(good.number), f"{left}; helm rollback to revision {good.number}", log)
            line = f"{left}; rolled back to revision {good.number}"
        elif pending.status == "pending-install":
            self._change(self.uninstall_argv(), f"{left}; helm uninstall", log)
            line = f"{left} and had no deployed revision; uninstalled it"
        else:
            raise AcciOpsError(f"{left} and has no deployed revision to roll back to; repair it by hand "
                               f"(`helm history {self.release} -n {self.namespace}`)")
        log(line)
        return line

    def recover_stuck(self, log: Log, *, last_image_ref: str | None = None,
                      runtime: AppRuntime | None = None) -> str | None:
        """Roll a release an interrupted client left pending back to its last deployed revision (or
        uninstall a first install that never finished); helm's history says which, so the image and
        runtime arguments of the interface are not needed here."""
        return self._recover(self.history(log), log)

    def check_render(self, image: ImageRef, secret_values: str | None, log: Log) -> None:
        """``helm template`` with the deploy's values (locally, no cluster): the Deployment must run
        exactly ``image``, else the chart ignores ``image.digest`` and the deploy stops before it starts."""
        result = self.runner(self.template_argv(image, secret_values), timeout=READ_TIMEOUT, on_line=log,
                             allow_env=HELM_ENV, capture_stdout=True, max_stdout_bytes=MAX_STDOUT, check=False)
        if result.returncode != 0:
            said = next((line for line in reversed(result.tail) if line.startswith("Error:")), result.last_line)
            raise ConfigError(f"chart {self.chart} does not render with these values: {said or 'no output'}")
        images = rendered_images(result.stdout.decode(errors="replace"))
        if str(image) not in images:
            found = ", ".join(sorted(set(images))) or "no Deployment image"
            raise ConfigError(f"chart {self.chart} renders {shown(found)}, not {image}: it does not use image.digest "
                              "(the chart must render image.repository@image.digest when a digest is set)")

    def deploy(self, image_ref: str, runtime: AppRuntime | None, log: Log) -> DeployResult:
        image = parse_image_ref(image_ref)
        started = time.monotonic()
        history = self.history(log)
        recovered = self._recover(history, log)
        if recovered:
            history = self.history(log)
        deployed = self._deployed(history)
        previous = self.revision_image(deployed.number, log) if deployed else None
        if deployed and previous is None:
            log(f"revision {deployed.number} of release {self.release} ran an image not pinned by digest; "
                "there is no previous digest to roll back to")
        with private_dir(prefix="acci-helm-") as private:
            secret_values = None
            if runtime is not None:
                env = runtime.env()
                secrets = {"secrets": {"databaseUrl": env["DATABASE_URL"], "redisUrl": env["REDIS_URL"]}}
                secret_values = str(write_private_yaml(private / "secret-values.yaml", secrets))
            self.check_render(image, secret_values, log)
            log(f"helm: deploying {image} to release {self.release} in namespace {self.namespace} "
                f"(replacing {previous or 'nothing pinned'}, timeout {self.timeout_seconds} s)")
            try:
                result = self.runner(self.upgrade_argv(image, secret_values), timeout=self.timeout_seconds + 60,
                                     on_line=log, allow_env=HELM_ENV, capture_stdout=True,
                                     max_stdout_bytes=MAX_STDOUT)
            except CommandTimeout:
                raise DeployFailed(f"helm upgrade of release {self.release} to {image} did not finish within "
                                   f"{self.timeout_seconds + 60} s and was killed; the release may be left "
                                   "pending-upgrade, which the next deploy recovers",
                                   previous_image_ref=previous, rolled_back=False) from None
            except CommandFailed as exc:
                raise DeployFailed(f"helm upgrade of release {self.release} to {image} failed; with "
                                   f"--rollback-on-failure helm put the previous revision back: {exc}",
                                   previous_image_ref=previous, rolled_back=True) from None
        revision = self._upgraded_revision(result.stdout)
        seconds = round(time.monotonic() - started, 3)
        log(f"helm: release {self.release} is at revision {revision} running {image} ({seconds:.1f} s)")
        return DeployResult(self.url, revision, previous, seconds, str(image), recovered)

    def _upgraded_revision(self, stdout: bytes) -> int:
        what = f"helm upgrade --output json of release {self.release}"
        release = expect(load_json(stdout, what), dict, what)
        info = expect(release.get("info"), dict, f"'info' of {what}")
        status = expect(info.get("status"), str, f"'info.status' of {what}")
        revision = expect(release.get("version"), int, f"'version' of {what}")
        if status != "deployed":
            raise AcciOpsError(f"helm upgrade of release {self.release} ended with revision {revision} "
                               f"{shown(status)}, not deployed")
        return revision

    def _revision_running(self, image_ref: str, history: list[Revision], log: Log,
                          memo: dict[int, str | None]) -> tuple[Revision, str] | None:
        """The newest revision that ran ``image_ref`` (deployed or superseded), read from its values."""
        for revision in reversed(history):
            if revision.status in RAN and self.revision_image(revision.number, log, memo) == image_ref:
                return revision, image_ref
        return None

    def rollback(self, to: RollbackTarget, log: Log, *, runtime: AppRuntime | None = None) -> DeployResult:
        """``helm rollback`` to a revision, given or found by the digest it ran, with a fresh timeout.
        The revision's own recorded values (secrets included) come back with it; ``runtime`` is unused."""
        started = time.monotonic()
        history = self.history(log)
        if not history:
            raise AcciOpsError(f"release {self.release} is not installed in namespace {self.namespace}: "
                               "nothing to roll back")
        latest = history[-1]
        if latest.status in PENDING:
            self._check_stale(latest)  # a stale pending release is repaired by the rollback itself
        deployed = self._deployed(history)
        memo: dict[int, str | None] = {}
        previous = self.revision_image(deployed.number, log, memo) if deployed else None
        if to.revision is not None:
            target = next((r for r in history if r.number == to.revision), None)
            if target is None:
                raise ConfigError(f"release {self.release} has no revision {to.revision} (its history holds "
                                  f"{history[0].number} to {latest.number}; --history-max {self.history_max} "
                                  "keeps only the newest)")
            if target.status not in RAN:
                raise ConfigError(f"revision {to.revision} of release {self.release} is {shown(target.status)}, "
                                  "not one that ran; pick a deployed or superseded revision")
            image = self.revision_image(target.number, log, memo)
        else:
            found = self._revision_running(str(to.image_ref), history, log, memo)
            if found is None:
                raise AcciOpsError(f"no revision in the history of release {self.release} ran {to.image_ref}; "
                                   "deploy that image instead")
            target, image = found
            if deployed is not None and target.number == deployed.number and latest.status not in PENDING:
                log(f"release {self.release} already runs {image} (revision {target.number}); nothing to roll back")
                return DeployResult(self.url, target.number, previous, round(time.monotonic() - started, 3), image)
        log(f"helm: rolling release {self.release} back to revision {target.number} ({image or 'image not pinned'}), "
            f"timeout {self.timeout_seconds} s")
        self._change(self.rollback_argv(target.number), f"helm rollback of release {self.release} to revision "
                     f"{target.number}", log)
        after = self.history(log)
        now = self._deployed(after)
        if now is None:
            raise AcciOpsError(f"after helm rollback, release {self.release} has no deployed revision")
        seconds = round(time.monotonic() - started, 3)
        log(f"helm: release {self.release} is at revision {now.number} (a copy of revision {target.number})")
        return DeployResult(self.url, now.number, previous, seconds, image)
