"""Promotion windows: when an environment takes releases, in its own time zone.

An environment declares ``allow`` and ``deny`` windows. Deny wins; when allow windows are declared,
any time outside all of them is closed; with no windows at all an environment is always open.
Rollbacks ignore windows altogether (``policy.check_window``): getting back to a good version must
never wait for Monday.

One window is either a weekly range of wall-clock time::

    mon-fri 09:00-17:00        every listed day, from the first time to the second
    sat,sun 00:00-24:00        24:00 ends a day; 22:00-06:00 runs past midnight into the next day
    daily 02:00-04:00          every day
    fri 18:00-mon 06:00        one span across days (the week wraps)

or a cron start with a duration (a mapping in YAML)::

    {cron: '0 22 * * 1-5', duration: 2h}

Cron is the classic five fields (minute hour day-of-month month day-of-week) with ``*``, lists,
ranges, steps, month and weekday names and Vixie cron's rule that a restricted day-of-month and a
restricted day-of-week match when either does; durations are ``90m``, ``2h``, ``1h30m``, ``1d``.

Everything is evaluated in local wall time, minute by minute: "09:00-17:00" means what the clock on
the office wall says, so it stays 09:00-17:00 across daylight saving changes. On the night the clocks
go forward a window over the skipped hour is an hour shorter; on the night they go back one over the
repeated hour is an hour longer, exactly as a person watching the clock would see it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from acci_ops.lib.core.errors import ConfigError

MINUTE = timedelta(minutes=1)
DAY_MINUTES = 24 * 60
WEEK_MINUTES = 7 * DAY_MINUTES
# How far ahead ``next_open`` looks: two weeks covers any weekly pattern and a fortnight of holidays.
HORIZON = timedelta(days=14)
# A cron window may last at most a week: that bounds how far back a start can reach the present.
MAX_DURATION = timedelta(days=7)
# Wall time repeats for up to this long when clocks go back (1 h nearly everywhere; 2 h has existed).
_MAX_DST_SHIFT = timedelta(hours=3)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_CRON_DOW = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
           "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # the most each month can have

_TIME = r"\d{1,2}:\d{2}"
_SPAN = re.compile(rf"^(?P<d1>[a-z]+)\s+(?P<t1>{_TIME})\s*-\s*(?P<d2>[a-z]+)\s+(?P<t2>{_TIME})$")
_DAILY = re.compile(rf"^(?P<days>[a-z][a-z,\s-]*?)\s+(?P<t1>{_TIME})\s*-\s*(?P<t2>{_TIME})$")
_DURATION = re.compile(r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?$")
_SYNTAX = ("expected e.g. 'mon-fri 09:00-17:00', 'fri 18:00-mon 06:00' "
           "or a mapping {cron: '0 22 * * 1-5', duration: 2h}")

Interval = tuple[datetime, datetime]  # naive local wall time, [start, end)


class _Problem(Exception):
    """What is wrong with one window; parse() adds the environment and the window."""


@dataclass(frozen=True)
class WindowDecision:
    """Whether promotions may happen now, why (one line, in local wall time), and the instant they next
    may (UTC: a local time with ``fold=1`` never compares equal across zones; None when open now or
    when nothing opens within ``HORIZON``)."""

    open: bool
    reason: str
    next_open: datetime | None


class _Window(Protocol):
    label: str

    def intervals(self, start: datetime, end: datetime) -> list[Interval]: ...


def _merge(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _subtract(base: list[Interval], holes: list[Interval]) -> list[Interval]:
    """``base`` minus ``holes``, both merged and sorted."""
    out: list[Interval] = []
    for start, end in base:
        cursor = start
        for hole_start, hole_end in holes:
            if hole_end <= cursor or hole_start >= end:
                continue
            if hole_start > cursor:
                out.append((cursor, hole_start))
            cursor = max(cursor, hole_end)
            if cursor >= end:
                break
        if cursor < end:
            out.append((cursor, end))
    return out


def _containing(intervals: list[Interval], moment: datetime) -> Interval | None:
    return next(((s, e) for s, e in intervals if s <= moment < e), None)


# --- weekly windows ----------------------------------------------------------------------------------

def _weekday(word: str) -> int:
    word = word.strip().lower()
    if word in WEEKDAYS:
        return WEEKDAYS.index(word)
    if word in _FULL_WEEKDAYS:
        return _FULL_WEEKDAYS.index(word)
    raise _Problem(f"unknown weekday {word!r} (use {', '.join(WEEKDAYS)})")


def _clock(text: str, *, end: bool) -> int:
    """Minutes after midnight; 24:00 only ends a range."""
    hours, minutes = (int(part) for part in text.split(":"))
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise _Problem(f"time {text!r} is not a time of day (HH:MM, 00:00 to 24:00)")
    if hours == 24 and not end:
        raise _Problem(f"time {text!r} can only end a range; a day starts at 00:00")
    return hours * 60 + minutes


def _days(text: str) -> list[int]:
    days: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise _Problem(f"empty item in the day list {text.strip()!r}")
        if "-" in item:
            first, _, last = item.partition("-")
            start, stop = _weekday(first), _weekday(last)
            span = (stop - start) % 7
            days += [(start + i) % 7 for i in range(span + 1)]  # fri-mon wraps over the weekend
        else:
            days.append(_weekday(item))
    return sorted(set(days))


@dataclass(frozen=True)
class WeeklyWindow:
    """A set of minute-of-week spans (Monday 00:00 is 0), repeated every week. A span may end after
    the week's end (it wraps into the next week)."""

    label: str
    spans: tuple[tuple[int, int], ...]

    def intervals(self, start: datetime, end: datetime) -> list[Interval]:
        monday = datetime.combine(start.date() - timedelta(days=start.weekday() + 7), time())
        found = []
        while monday < end:
            for first, last in self.spans:
                s, e = monday + timedelta(minutes=first), monday + timedelta(minutes=last)
                if s < end and e > start:
                    found.append((s, e))
            monday += timedelta(days=7)
        return _merge(found)


def _weekly(text: str, label: str) -> WeeklyWindow:
    normal = " ".join(text.lower().split())
    span = _SPAN.match(normal)
    if span:
        start = _weekday(span["d1"]) * DAY_MINUTES + _clock(span["t1"], end=False)
        stop = _weekday(span["d2"]) * DAY_MINUTES + _clock(span["t2"], end=True)
        if stop == start:
            raise _Problem("starts and ends at the same moment; for the whole week write 'mon-sun 00:00-24:00'")
        return WeeklyWindow(label, ((start, stop if stop > start else stop + WEEK_MINUTES),))
    daily = _DAILY.match(normal)
    if not daily:
        raise _Problem(_SYNTAX)
    first, last = _clock(daily["t1"], end=False), _clock(daily["t2"], end=True)
    if first == last:
        raise _Problem("starts and ends at the same time; a whole day is 00:00-24:00")
    length = (last - first) % DAY_MINUTES or DAY_MINUTES  # 22:00-06:00 runs into the next day
    days = list(range(7)) if daily["days"].strip() == "daily" else _days(daily["days"])
    return WeeklyWindow(label, tuple((d * DAY_MINUTES + first, d * DAY_MINUTES + first + length) for d in days))


# --- cron windows ------------------------------------------------------------------------------------

_CRON_FIELDS = (("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()),
                ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _CRON_DOW))


def _cron_value(text: str, name: str, low: int, high: int, names: Sequence[str]) -> int:
    if text.isdigit():
        value = int(text)
        if not low <= value <= high:
            raise _Problem(f"{name} {value} is out of range {low}-{high}")
        return value
    if names and text.lower() in names:
        return names.index(text.lower()) + (1 if name == "month" else 0)
    raise _Problem(f"{name} {text!r} is not a number{' or a name' if names else ''}")


def _cron_field(text: str, name: str, low: int, high: int, names: Sequence[str]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise _Problem(f"empty list item in the {name} field {text!r}")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise _Problem(f"step {step_text!r} in the {name} field must be a whole number >= 1")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            first, last = _cron_value(a, name, low, high, names), _cron_value(b, name, low, high, names)
            if first > last:
                raise _Problem(f"{name} range {base!r} runs backwards")
        else:
            first = _cron_value(base, name, low, high, names)
            last = high if slash else first  # "5/15" means 5-59/15, as in Vixie cron
        values.update(range(first, last + 1, step))
    if name == "day of week" and 7 in values:
        values = (values - {7}) | {0}  # both 0 and 7 are Sunday
    return frozenset(values)


@dataclass(frozen=True)
class CronWindow:
    """Open for ``duration`` from every minute the cron expression matches (in wall time)."""

    label: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]  # 0 is Sunday, as in cron
    dom_restricted: bool
    dow_restricted: bool
    duration: timedelta

    def matches_day(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days_of_month
        dow = (day.weekday() + 1) % 7 in self.days_of_week
        if self.dom_restricted and self.dow_restricted:
            return dom or dow  # Vixie cron: either restricted day field may match
        return dom and dow

    def intervals(self, start: datetime, end: datetime) -> list[Interval]:
        found = []
        hours, minutes = sorted(self.hours), sorted(self.minutes)
        day = (start - self.duration).date()
        while day <= end.date():
            if self.matches_day(day):
                for hour in hours:
                    for minute in minutes:
                        s = datetime.combine(day, time(hour, minute))
                        e = s + self.duration
                        if s < end and e > start:
                            found.append((s, e))
            day += timedelta(days=1)
        return _merge(found)


def _duration(value: object) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, str):
        raise _Problem(f"duration {value!r} needs a unit, e.g. 90m, 2h, 1h30m or 1d")
    match = _DURATION.match(value.strip().lower())
    if not value.strip() or not match:
        raise _Problem(f"duration {value!r} is not like 90m, 2h, 1h30m or 1d")
    length = timedelta(days=int(match["d"] or 0), hours=int(match["h"] or 0), minutes=int(match["m"] or 0))
    if not MINUTE <= length <= MAX_DURATION:
        raise _Problem(f"duration {value!r} must be between 1m and 7d")
    return length


def _cron(spec: Mapping[object, object], kind: str) -> CronWindow:
    unknown = sorted(str(k) for k in spec if k not in ("cron", "duration"))
    if unknown:
        raise _Problem(f"unknown key {unknown[0]!r} (a cron window has cron and duration)")
    expression = spec.get("cron")
    if not isinstance(expression, str) or not expression.strip():
        raise _Problem("cron must be a five-field expression such as '0 22 * * 1-5'")
    if "duration" not in spec:
        raise _Problem("duration is missing (how long the window stays open after each start, e.g. 2h)")
    duration = _duration(spec["duration"])
    text = " ".join(expression.split())
    fields = _MACROS.get(text.lower(), text).split()
    if len(fields) != 5:
        raise _Problem(f"cron needs 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}")
    parsed = [_cron_field(f, name, low, high, names) for f, (name, low, high, names) in zip(fields, _CRON_FIELDS,
                                                                                            strict=True)]
    window = CronWindow(f"{kind} window cron {text!r} for {spec['duration']}", *parsed,
                        dom_restricted=not fields[2].startswith("*"), dow_restricted=not fields[4].startswith("*"),
                        duration=duration)
    if not (window.dow_restricted and window.dom_restricted) and not any(
            day <= _MONTH_DAYS[month - 1] for month in window.months for day in window.days_of_month):
        raise _Problem("never matches: no chosen month has any of the chosen days of the month")
    return window


# --- the windows of one environment -----------------------------------------------------------------

def _parse_one(item: object, kind: str, where: str) -> _Window:
    if isinstance(item, str):
        label = f"{kind} window {item!r}"
    elif isinstance(item, Mapping):
        shown = item.get("cron")
        label = f"{kind} window cron {shown!r}" if isinstance(shown, str) else f"{kind} window {dict(item)!r}"
    else:
        raise ConfigError(f"{where}: {kind} window {item!r}: {_SYNTAX}")
    try:
        return _weekly(item, label) if isinstance(item, str) else _cron(item, kind)
    except _Problem as problem:
        raise ConfigError(f"{where}: {label}: {problem}") from None


def _shown(moment: datetime, reference: datetime) -> str:
    """Wall time the way an operator reads it: "Mon 06:00", with the date when a week or more away."""
    if moment - reference >= timedelta(days=6):
        return f"{moment:%a %Y-%m-%d %H:%M}"
    return f"{moment:%a %H:%M}"


@dataclass(frozen=True)
class PromotionWindows:
    """The allow and deny windows of one environment, in its time zone."""

    allow: tuple[_Window, ...]
    deny: tuple[_Window, ...]
    timezone: str
    where: str = "the environment"

    @classmethod
    def parse(cls, allow: Sequence[object] | None, deny: Sequence[object] | None, timezone: str,
              where: str) -> PromotionWindows:
        """Parse the YAML lists; any window that does not parse is a ConfigError naming ``where``
        (e.g. "environment 'production'"), the window, and what is wrong."""
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ConfigError(f"{where}: time zone {timezone!r} is not a known IANA time zone "
                              "(e.g. UTC, Europe/Madrid)") from None
        lists = {}
        for kind, items in (("allow", allow), ("deny", deny)):
            if items is None:
                items = []
            if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence):
                raise ConfigError(f"{where}: {kind} windows must be a list, not {type(items).__name__}")
            lists[kind] = tuple(_parse_one(item, kind, where) for item in items)
        return cls(lists["allow"], lists["deny"], timezone, where)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def describe(self) -> str:
        """One line for the UI: every window, and the zone they are read in."""
        if not self.allow and not self.deny:
            return "no promotion windows: always open"
        parts = [w.label for w in self.allow + self.deny]
        return f"{'; '.join(parts)} ({self.timezone})"

    def _instant(self, wall: datetime, fold: int) -> datetime | None:
        """The UTC instant a wall time names, or None when the clocks skip it."""
        zone = self.zone
        moment = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        return moment if moment.astimezone(zone).replace(tzinfo=None) == wall else None

    def _wall(self, moment: datetime) -> datetime:
        return moment.astimezone(self.zone).replace(tzinfo=None)

    def _first_instant(self, intervals: list[Interval], at: datetime, now: datetime) -> datetime | None:
        """The earliest instant at or after ``at`` whose wall minute lies in ``intervals`` (sorted).

        Wall minutes up to ``_MAX_DST_SHIFT`` before ``now`` are looked at too: when the clocks go back,
        a wall minute just passed comes round again."""
        at_utc = at.astimezone(UTC)
        best: tuple[datetime, datetime] | None = None  # (instant, wall)
        for start, end in intervals:
            wall = max(start, now - _MAX_DST_SHIFT)
            if best is not None and wall > best[1] + _MAX_DST_SHIFT:
                break  # later wall times are later instants
            while wall < end:
                found = [i for i in (self._instant(wall, 0), self._instant(wall, 1)) if i is not None and i >= at_utc]
                if found:
                    if best is None or min(found) < best[0]:
                        best = (min(found), wall)
                    break
                wall += MINUTE
        return best[0] if best else None

    def is_open(self, at: datetime) -> WindowDecision:
        """Whether ``at`` (timezone-aware) falls in an open minute of local wall time."""
        if at.tzinfo is None or at.utcoffset() is None:
            raise ConfigError("a promotion window check needs a timezone-aware time, not a naive one")
        if not self.allow and not self.deny:
            return WindowDecision(True, "no promotion windows declared: always open", None)
        zone = f"({self.timezone})"
        local = at.astimezone(self.zone)
        now = local.replace(tzinfo=None, second=0, microsecond=0)
        start, horizon = now - _MAX_DST_SHIFT, now + HORIZON
        deny = {w.label: w.intervals(start, horizon) for w in self.deny}
        allow = {w.label: w.intervals(start, horizon) for w in self.allow}
        denied = _merge(i for found in deny.values() for i in found)
        allowed = _merge(i for found in allow.values() for i in found) if self.allow else [(start, horizon)]
        opened = _subtract(allowed, denied)
        current = _containing(opened, now)
        if current:
            until = ("with no end in the next 14 days" if current[1] >= horizon
                     else f"until {_shown(current[1], now)}")
            if self.allow:
                label = next(label for label, found in allow.items() if _containing(found, now))
                return WindowDecision(True, f"inside {label} {zone} {until}", None)
            return WindowDecision(True, f"outside every deny window {zone} {until}", None)
        next_open = self._first_instant(opened, at, now)
        opens = (f"opens {_shown(self._wall(next_open), now)}" if next_open
                 else "does not open in the next 14 days")
        hit = next(((label, found) for label, found in deny.items() if _containing(found, now)), None)
        if hit:
            label, found = hit
            end = _containing(found, now)[1]
            until = "with no end in the next 14 days" if end >= horizon else f"until {_shown(end, now)}"
            reason = f"inside {label} {zone} {until}"
            if not next_open or self._wall(next_open) != end:
                reason += f"; {opens}"
            return WindowDecision(False, reason, next_open)
        names = ", ".join(w.label.removeprefix("allow window ") for w in self.allow)
        plural = "window" if len(self.allow) == 1 else "windows"
        return WindowDecision(False, f"outside the allow {plural} {names} {zone}; {opens}", next_open)
