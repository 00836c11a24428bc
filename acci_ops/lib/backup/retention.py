"""Grandfather-father-son retention, planned as a pure function so it can be tested on any calendar.

For each tier (daily, weekly, monthly) the newest backup of each of the most recent N periods
*that have backups* is kept (restic's ``--keep-daily`` semantics): a gap in the calendar does not
eat into what is kept. The newest backup, and any protected one (for example the newest
validated), are always kept, whatever the policy says.

Only backups acci_ops trusts take part in the ranking (lib/backup/inventory.py decides, from
signed manifests); everything else is passed in as ``untrusted`` and always kept, with its reason, so
keys a bucket writer adds (future-dated, unsigned) can neither push real backups out of the
policy's window nor be deleted by it.

``apply_retention`` is the whole pass for one store (plan, delete, remove orphan manifests, abort
incomplete uploads a killed run left behind, or only log in a dry run); the Dagster op only loops
over environments and stores and reports.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from acci_ops.lib.backup import signing
from acci_ops.lib.backup.inventory import inspect_backup
from acci_ops.lib.backup.layout import BackupKey, complete_backups, manifest_key_for
from acci_ops.lib.backup.manifest import MAX_MANIFEST_BYTES, BackupManifest
from acci_ops.lib.backup.records import newest_validated
from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.core.errors import BackupError, ConfigError, TransientError
from acci_ops.lib.storage.objectstore import IncompleteUpload, ObjectStore

Log = Callable[[str], None]


@dataclass(frozen=True)
class RetentionPolicy:
    daily: int = 7
    weekly: int = 4
    monthly: int = 12

    def __post_init__(self) -> None:
        for tier in ("daily", "weekly", "monthly"):
            value = getattr(self, tier)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"retention {tier} must be a whole number >= 0, got {value!r}")


@dataclass
class RetentionPlan:
    keep: dict[str, list[str]] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"keep {len(self.keep)}, delete {len(self.delete)}"


_TIERS: list[tuple[str, Callable[[date], object]]] = [
    ("daily", lambda d: d),
    ("weekly", lambda d: d.isocalendar()[:2]),
    ("monthly", lambda d: (d.year, d.month)),
]


def plan_retention(backups: Sequence[BackupKey], policy: RetentionPolicy, protect: Collection[str] = (), *,
                   snapshot_at: Mapping[str, datetime] | None = None,
                   untrusted: Mapping[str, str] | None = None) -> RetentionPlan:
    """Decide which backups to keep (with the reasons) and which to delete.

    ``backups`` are ranked newest first by ``snapshot_at`` (the manifest's snapshot time) where
    given, else by the key's time; ``untrusted`` maps keys that must not be ranked to the reason
    they are kept."""
    snapshot_at = snapshot_at or {}
    ordered = sorted(backups, key=lambda b: (snapshot_at.get(b.key, b.taken_at), b.key), reverse=True)
    plan = RetentionPlan()
    for key, reason in sorted((untrusted or {}).items()):
        plan.keep.setdefault(key, []).append(reason)
    if not ordered:
        return plan

    def keep(backup: BackupKey, reason: str) -> None:
        plan.keep.setdefault(backup.key, []).append(reason)

    keep(ordered[0], "newest")
    for backup in ordered:
        if backup.key in protect:
            keep(backup, "protected")
    for tier, period_of in _TIERS:
        limit = getattr(policy, tier)
        seen: set[object] = set()
        for backup in ordered:
            if len(seen) >= limit:
                break
            period = period_of(backup.day)
            if period not in seen:
                seen.add(period)
                keep(backup, tier)
    plan.delete = [b.key for b in ordered if b.key not in plan.keep]
    return plan


def untrusted_count(plan: RetentionPlan, trusted_reasons: Collection[str] = ("newest", "protected", "daily",
                                                                              "weekly", "monthly")) -> int:
    """How many kept backups were kept because they are not trusted (for the UI)."""
    return sum(1 for reasons in plan.keep.values() if not set(reasons) & set(trusted_reasons))


def plan_store_retention(store: ObjectStore, environment: str, policy: RetentionPolicy, keyring: Keyring | None,
                         *, now: datetime | None = None, protect: Collection[str] = ()
                         ) -> tuple[RetentionPlan, list[str]]:
    """Plan retention for one store: only trusted backups are ranked (by snapshot time) and may be
    deleted; the newest validated one is protected; everything else is kept with its reason.

    Cost: one listing of the environment, one bounded manifest read per complete backup, plus the
    validation records newest_validated reads. Returns the plan and the orphan manifests (manifest
    without dump, acci_ops-signed) that may be removed. Deletes nothing (see apply_retention)."""
    now = now or datetime.now(UTC)
    keys = [o.key for o in store.list(f"{environment}/")]
    backups, orphans = complete_backups(keys, environment)
    inspected = [inspect_backup(store, backup, keyring, now=now) for backup in backups]
    trusted = [t for t in inspected if t.trusted]
    untrusted = {t.backup.key: t.reason for t in inspected if not t.trusted}
    protected = set(protect)
    if keyring is not None:
        validated = newest_validated(store, environment, keyring, now=now)
        if validated:
            # The newest backup known to restore is what DR would use: never delete it.
            protected.add(validated[0].key)
    plan = plan_retention([t.backup for t in trusted], policy, protected,
                          snapshot_at={t.backup.key: t.snapshot_at for t in trusted}, untrusted=untrusted)
    removable = []
    for orphan in orphans if keyring is not None else []:
        try:
            manifest = BackupManifest.from_json(store.get_bytes(orphan, max_bytes=MAX_MANIFEST_BYTES),
                                                where=store.uri_for(orphan))
        except BackupError:
            continue
        if keyring.verify(manifest.document()) == signing.SIGNED:
            removable.append(orphan)
    return plan, removable


@dataclass(frozen=True)
class RetentionResult:
    """What one retention pass decided for one store, and whether it acted on it."""

    plan: RetentionPlan
    orphans: list[str]  # acci_ops-signed manifests whose dump is gone: removed (or, dry run, would be)
    dry_run: bool
    # Incomplete uploads older than the threshold: aborted (or, dry run, would be); and how many
    # younger ones were left alone because a running backup may still own them.
    aborted_uploads: list[IncompleteUpload] = field(default_factory=list)
    young_uploads: int = 0
    upload_error: str | None = None  # why incomplete uploads could not be listed or aborted (one line)

    @property
    def untrusted(self) -> int:
        """Kept because acci_ops cannot vouch for them (see untrusted_count)."""
        return untrusted_count(self.plan)


def stale_uploads(store: ObjectStore, environment: str, older_than: timedelta, *, now: datetime | None = None
                  ) -> tuple[list[IncompleteUpload], int]:
    """Incomplete uploads under the environment's prefix started more than ``older_than`` before
    ``now`` (to abort), and how many younger ones there are (to keep).

    Why it is safe: a run killed mid-upload (SIGKILL, OOM, node loss) never aborts its multipart
    upload, and nothing else would: it stays, invisible and billed. ``older_than`` is chosen longer
    than any of our runs may live, so an upload that old has no live owner; a younger one may
    belong to a backup running right now and is never touched."""
    if older_than < timedelta(0):
        raise ConfigError(f"the age after which incomplete uploads are aborted must be >= 0, got {older_than}")
    cutoff = (now or datetime.now(UTC)) - older_than
    stale, young = [], 0
    for upload in store.list_incomplete_uploads(f"{environment}/"):
        if upload.initiated < cutoff:
            stale.append(upload)
        else:
            young += 1
    return stale, young


def apply_retention(store: ObjectStore, environment: str, policy: RetentionPolicy, keyring: Keyring | None, *,
                    dry_run: bool = False, log: Log = print, now: datetime | None = None,
                    abort_uploads_older_than: timedelta | None = None) -> RetentionResult:
    """Retention for one store, end to end: plan (plan_store_retention), then, unless ``dry_run``,
    delete what the plan deletes and the signed manifests left without a dump, and abort the
    environment's incomplete uploads older than ``abort_uploads_older_than`` (None: leave uploads
    alone; see stale_uploads). Every deletion or abort (or, in a dry run, every one that would
    happen) is logged with the object's URI. Without a signing key no backup is trusted, so none is
    deleted; stale uploads are not backups (nothing was stored) and are aborted all the same."""
    plan, orphans = plan_store_retention(store, environment, policy, keyring, now=now)
    verb = "would delete" if dry_run else "deleting"
    stale, young, upload_error = [], 0, None
    if abort_uploads_older_than is not None:
        try:
            stale, young = stale_uploads(store, environment, abort_uploads_older_than, now=now)
        except (BackupError, TransientError) as exc:
            # Hygiene must not block the policy: a writer role without s3:ListBucketMultipartUploads
            # still gets its backups retained; the caller reports the refusal.
            upload_error = f"incomplete uploads not cleaned: {exc}"
    for key in plan.delete:
        log(f"{verb} {store.uri_for(key)}")
        if not dry_run:
            delete_backup(store, key)
    for orphan in orphans:
        log(f"{verb} manifest without dump {store.uri_for(orphan)}")
        if not dry_run:
            store.delete(orphan)
    aborted = []
    for upload in stale:
        log(f"{'would abort' if dry_run else 'aborting'} incomplete upload {store.uri_for(upload.key)} "
            f"started {upload.initiated.isoformat(timespec='seconds')}")
        if not dry_run:
            try:
                store.abort_incomplete_upload(upload)
            except (BackupError, TransientError) as exc:
                upload_error = f"incomplete uploads not cleaned: {exc}"
                break
        aborted.append(upload)
    if young:
        log(f"keeping {young} incomplete upload(s) under {store.uri_for(environment + '/')} younger than "
            f"{abort_uploads_older_than}: a running backup may own them")
    return RetentionResult(plan, orphans, dry_run, aborted, young, upload_error)


def delete_backup(store: ObjectStore, backup_key: str) -> None:
    """Remove a dump, its sidecars, then its manifest: an interruption leaves at worst a manifest
    without a dump, which retention recognises and removes on its next run."""
    store.delete(backup_key)
    manifest = manifest_key_for(backup_key)
    for item in store.list(backup_key + "."):
        if item.key != manifest:
            store.delete(item.key)
    store.delete(manifest)
