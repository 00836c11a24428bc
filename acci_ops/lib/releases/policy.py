"""The promotion gate: may this version go to this environment now, and if not, why not.

Pure decisions over the declared environments, the release ledger and the promotion windows, made
before anything is deployed, so a refused release changes nothing. Every refusal is one line that
names the cause and what to do about it; bad input is a ConfigError, a release the rules do not
allow now is a ReleaseRefused (an AcciOpsError). The overrides (``allow_unverified``,
``override_window``) never pass silently: the decision says it was overridden, so the caller records
it in the ledger and alerts.

The rules, in the spirit of GitOps promotion pipelines (Kargo, Argo CD Image Updater, Spinnaker):

- environments are promoted in ``promotion_order``: a version may go to an environment only once it
  is verified (passed analysis, not since failed or rolled back) on the environment before it;
- optionally it must have soaked there: stayed verified for ``soak_minutes``;
- promotion windows hold automatic promotions until they open and refuse manual ones (unless
  ``override_window``); rollbacks are never held.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.releases.ledger import ReleaseLedger, Verification, check_image_ref, check_version, iso
from acci_ops.lib.releases.windows import PromotionWindows

GO = "go"
WAIT = "wait"


class ReleaseRefused(AcciOpsError):
    """The rules do not allow this release now; the line says why and what would allow it."""


def _declared(environment: object, environments: Collection[str]) -> str:
    if not isinstance(environment, str) or environment not in environments:
        raise ConfigError(f"unknown environment {environment!r}; declared: {', '.join(sorted(environments))}")
    return environment


def check_promotion_order(order: Sequence[object] | None, environments: Collection[str],
                          where: str = "promotion_order") -> tuple[str, ...]:
    """The promotion order as declared environment names, each once (empty: no order, every
    environment stands alone)."""
    if order is None:
        return ()
    if isinstance(order, str | bytes) or not isinstance(order, Sequence):
        raise ConfigError(f"{where} must be a list of environment names, not {type(order).__name__}")
    seen: list[str] = []
    for name in order:
        if not isinstance(name, str) or name not in environments:
            raise ConfigError(f"{where} names {name!r}, which is not a declared environment "
                              f"(declared: {', '.join(sorted(environments))})")
        if name in seen:
            raise ConfigError(f"{where} lists {name!r} twice; each environment has one place in the order")
        seen.append(name)
    return tuple(seen)


@dataclass(frozen=True)
class ReleaseRequest:
    """A release request that names a declared environment, a version, who asks, and (for the
    environments that need it) the typed confirmation."""

    environment: str
    version: str | None
    operator: str
    confirmed: bool


def check_release_request(environment: object, version: object, operator: object, confirm: object,
                          environments: Collection[str], production_names: Collection[str], *,
                          action: str = "releasing to") -> ReleaseRequest:
    """Refuse a malformed request before anything happens: unknown environment, bad version, nobody
    named as the operator, or a missing/wrong confirmation. Environments in ``production_names``
    need ``confirm`` equal to their name (typing it is the "are you sure"); a confirm given for any
    other environment must match too, because it means the operator thinks they are elsewhere.
    ``version`` None means "the default" (a rollback to the last verified version)."""
    name = _declared(environment, environments)
    if version is not None:
        check_version(version)
    if not isinstance(operator, str) or not operator.strip():
        raise ConfigError("operator is empty: say who is releasing (your name, or the automation's); "
                          "the release ledger records it")
    typed = confirm.strip() if isinstance(confirm, str) else confirm
    if confirm is not None and not isinstance(confirm, str):
        raise ConfigError(f"confirm must be the environment's name as text, not {type(confirm).__name__}")
    if name in production_names and not typed:
        raise ConfigError(f"{action} {name} needs confirmation: set confirm: {name} (type the environment's name)")
    if typed and typed != name:
        raise ConfigError(f"confirm {typed!r} does not match the environment: {action} {name}, "
                          f"set confirm: {name}")
    return ReleaseRequest(name, version, operator.strip(), bool(typed))


@dataclass(frozen=True)
class PromotionDecision:
    """A promotion the order allows. ``unverified`` means it is allowed only because of
    ``allow_unverified``: the caller records that in the ledger and alerts."""

    environment: str
    version: str
    previous_environment: str | None
    verification: Verification | None
    unverified: bool
    reason: str


def _not_verified(ledger: ReleaseLedger, environment: str, version: str) -> str:
    judged = ledger.judgement(environment, version)
    return judged.summary if judged else "it has never been analysed there"


def check_promotion(ledger: ReleaseLedger, order: Sequence[str], environment: str, version: str,
                    allow_unverified: bool, *, image_ref: str | None = None) -> PromotionDecision:
    """The order's gate: an environment after the first in ``order`` takes only versions verified on
    the one before it (and, when ``image_ref`` is given, only the very image that passed there).
    ``allow_unverified`` lets an unverified version through, flagged."""
    check_version(version)
    if image_ref is not None:
        check_image_ref(image_ref)
    if environment not in order:
        return PromotionDecision(environment, version, None, None, False,
                                 f"{environment} is not in promotion_order: nothing to verify first")
    position = list(order).index(environment)
    if position == 0:
        return PromotionDecision(environment, version, None, None, False,
                                 f"{environment} is first in promotion_order: nothing to verify first")
    previous = order[position - 1]
    verified = ledger.verified(previous, version)
    if verified and (image_ref is None or image_ref == verified.image_ref):
        return PromotionDecision(environment, version, previous, verified, False,
                                 f"version {version} is verified on {previous}: it passed analysis there at "
                                 f"{iso(verified.verified_at)}")
    if verified:
        problem = (f"version {version} passed on {previous} as {verified.image_ref}, but {environment} would get "
                   f"{image_ref}")
        fix = "promote the image that passed"
    else:
        problem = f"version {version} is not verified on {previous}: {_not_verified(ledger, previous, version)}"
        fix = "release it there first"
    if allow_unverified:
        return PromotionDecision(environment, version, previous, verified, True,
                                 f"allow_unverified: {problem}; releasing anyway (recorded and alerted)")
    raise ReleaseRefused(f"{problem}; {fix}, or set allow_unverified: true")


def soak_satisfied(ledger: ReleaseLedger, previous_env: str, version: str, soak_minutes: int,
                   now: datetime) -> tuple[bool, str]:
    """Whether ``version`` has stayed verified on ``previous_env`` for ``soak_minutes`` (counted from
    the start of its unbroken run of passing analyses there), and why in one line."""
    if isinstance(soak_minutes, bool) or not isinstance(soak_minutes, int) or soak_minutes < 0:
        raise ConfigError(f"soak_minutes must be a whole number >= 0, not {soak_minutes!r}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ConfigError("the soak check needs a timezone-aware time, not a naive one")
    if soak_minutes == 0:
        return True, "no soak time required"
    verified = ledger.verified(previous_env, version)
    if verified is None:
        return False, (f"version {version} is not verified on {previous_env}: "
                       f"{_not_verified(ledger, previous_env, version)}")
    soaked = now - verified.since
    minutes = max(0, int(soaked.total_seconds() // 60))
    if soaked >= timedelta(minutes=soak_minutes):
        return True, (f"version {version} has been verified on {previous_env} for {minutes} minutes "
                      f"(since {iso(verified.since)}; {soak_minutes} required)")
    ready = verified.since + timedelta(minutes=soak_minutes)
    return False, (f"version {version} has soaked on {previous_env} for {minutes} of the {soak_minutes} minutes "
                   f"required (verified since {iso(verified.since)}); it may be promoted from {iso(ready)}")


@dataclass(frozen=True)
class WindowGate:
    """``go`` or ``wait`` (automatic promotions, until ``next_open``). ``overridden``: going only
    because of ``override_window``, which the caller records."""

    action: str
    reason: str
    next_open: datetime | None
    overridden: bool = False


def check_window(windows: PromotionWindows | None, now: datetime, automatic: bool, override_window: bool,
                 is_rollback: bool) -> WindowGate:
    """Apply the promotion windows: rollbacks always go; automatic promotions wait for the window;
    a manual release outside it (inside a deny window, or outside every allow window) is refused
    unless ``override_window``."""
    if automatic and override_window:
        raise ConfigError("override_window is for manual releases; an automatic promotion waits for its window")
    if windows is None:
        windows = PromotionWindows((), (), "UTC")
    decision = windows.is_open(now)
    if is_rollback:
        state = "" if decision.open else f" (the window is closed: {decision.reason})"
        return WindowGate(GO, f"rollbacks are never held by promotion windows{state}", None)
    if decision.open:
        return WindowGate(GO, decision.reason, None)
    if automatic:
        return WindowGate(WAIT, f"{windows.where} is closed for promotions: {decision.reason}; waiting",
                          decision.next_open)
    if override_window:
        return WindowGate(GO, f"override_window: releasing although {decision.reason} (recorded)", None,
                          overridden=True)
    raise ReleaseRefused(f"{windows.where} is closed for releases: {decision.reason}; release then, "
                         "or set override_window: true (it is recorded)")
