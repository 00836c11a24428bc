"""Promotion windows: every syntax opens and closes on the right minutes of local wall time, deny wins
over allow, the reason and the next opening are what an operator needs, daylight saving changes in
Europe/Madrid behave as the wall clock does, and every malformed window is one line naming the
environment, the window and the fault."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.releases.windows import PromotionWindows

MADRID = ZoneInfo("Europe/Madrid")
WHERE = "environment 'production'"
# December 2026: Mon 7, Tue 8, Wed 9, Thu 10, Fri 11, Sat 12, Sun 13, Mon 14.


def madrid(day: int, hour: int, minute: int = 0, month: int = 12, second: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=MADRID)


def utc(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def windows(allow=(), deny=(), timezone="Europe/Madrid") -> PromotionWindows:
    return PromotionWindows.parse(list(allow), list(deny), timezone, WHERE)


def opened(w: PromotionWindows, *moments: datetime) -> list[bool]:
    return [w.is_open(m).open for m in moments]


def test_no_windows_means_always_open():
    """Without allow or deny windows nothing is ever closed."""
    decision = windows().is_open(madrid(12, 3))
    assert decision.open and decision.next_open is None
    assert decision.reason == "no promotion windows declared: always open"
    assert windows().describe() == "no promotion windows: always open"


def test_a_weekday_range_opens_on_its_days_from_start_until_just_before_end():
    """'mon-fri 09:00-17:00': the start minute is inside, the end minute is not, weekends are closed."""
    w = windows(allow=["mon-fri 09:00-17:00"])
    assert opened(w, madrid(9, 9), madrid(9, 16, 59, second=59), madrid(11, 12)) == [True, True, True]
    assert opened(w, madrid(9, 8, 59, second=59), madrid(9, 17), madrid(12, 12), madrid(13, 10)) == [False] * 4
    decision = w.is_open(madrid(11, 17, 30))
    assert decision == type(decision)(False, "outside the allow window 'mon-fri 09:00-17:00' (Europe/Madrid); "
                                             "opens Mon 09:00", madrid(14, 9))
    assert w.is_open(madrid(9, 10)).reason == ("inside allow window 'mon-fri 09:00-17:00' (Europe/Madrid) "
                                               "until Wed 17:00")


def test_day_lists_whole_days_names_and_spacing():
    """'sat,sun 00:00-24:00' covers the weekend exactly; full names, capitals and spaces are accepted;
    'daily' is every day; a day range may wrap over the weekend."""
    weekend = windows(allow=["sat,sun 00:00-24:00"])
    assert opened(weekend, madrid(12, 0), madrid(13, 23, 59), madrid(14, 0), madrid(11, 23, 59)) == [
        True, True, False, False]
    spelled = windows(allow=["Saturday, SUN 08:00 - 09:00"])
    assert opened(spelled, madrid(12, 8), madrid(13, 8, 30), madrid(11, 8, 30)) == [True, True, False]
    daily = windows(allow=["daily 02:00-04:00"])
    assert opened(daily, *(madrid(d, 3) for d in range(7, 14))) == [True] * 7
    assert opened(daily, madrid(9, 4)) == [False]
    wrapped = windows(allow=["fri-mon 10:00-11:00"])
    assert opened(wrapped, madrid(11, 10), madrid(12, 10), madrid(13, 10), madrid(14, 10), madrid(8, 10),
                  madrid(10, 10)) == [True, True, True, True, False, False]


def test_a_range_ending_before_it_starts_runs_past_midnight_from_each_listed_day():
    """'mon-fri 22:00-06:00': Friday night runs into Saturday; Sunday night is not listed."""
    w = windows(allow=["mon-fri 22:00-06:00"])
    assert opened(w, madrid(7, 22), madrid(8, 3), madrid(12, 5, 59)) == [True, True, True]
    assert opened(w, madrid(12, 6), madrid(13, 23), madrid(14, 3), madrid(7, 21, 59)) == [False] * 4


def test_a_span_across_days_wraps_over_the_week():
    """'fri 18:00-mon 06:00' is one span: all weekend, and nothing Monday 06:00 to Friday 18:00."""
    w = windows(deny=["fri 18:00-mon 06:00"])
    assert opened(w, madrid(11, 18), madrid(12, 12), madrid(14, 5, 59)) == [False] * 3
    assert opened(w, madrid(11, 17, 59), madrid(14, 6), madrid(9, 12)) == [True] * 3
    assert w.is_open(madrid(12, 12)).reason == ("inside deny window 'fri 18:00-mon 06:00' (Europe/Madrid) until "
                                                "Mon 06:00")
    assert w.is_open(madrid(9, 12)).reason == "outside every deny window (Europe/Madrid) until Fri 18:00"


def test_cron_windows_open_for_their_duration_after_every_match():
    """{cron: '0 22 * * 1-5', duration: 2h}: weeknights 22:00-24:00; Friday's lasts into Saturday
    00:00 but nothing starts on Saturday."""
    w = windows(allow=[{"cron": "0 22 * * 1-5", "duration": "2h"}])
    assert opened(w, madrid(7, 22), madrid(11, 23, 59)) == [True, True]
    assert opened(w, madrid(7, 21, 59), madrid(8, 0), madrid(12, 22, 30), madrid(13, 22)) == [False] * 4
    assert w.is_open(madrid(7, 23)).reason == ("inside allow window cron '0 22 * * 1-5' for 2h (Europe/Madrid) "
                                               "until Tue 00:00")
    late = windows(allow=[{"cron": "30 23 * * fri", "duration": "1h30m"}])
    assert opened(late, madrid(12, 0, 59), madrid(12, 1), madrid(11, 23, 29)) == [True, False, False]


@pytest.mark.parametrize(("cron", "duration", "inside", "outside"), [
    # steps, ranges with steps, and "5/15" meaning 5-59/15 as in Vixie cron
    ("*/15 9-17 * * *", "5m", [(9, 9, 15), (9, 9, 19), (9, 17, 45)], [(9, 9, 20), (9, 18, 0), (9, 8, 45)]),
    ("5/15 10 * * *", "1m", [(9, 10, 5), (9, 10, 50)], [(9, 10, 0), (9, 10, 15)]),
    ("0-30/10 10 * * *", "1m", [(9, 10, 30)], [(9, 10, 40)]),
    ("0,30 12 * * *", "1m", [(9, 12, 0), (9, 12, 30)], [(9, 12, 15)]),
    # names; 7 is Sunday like 0
    ("0 12 * dec sun", "1h", [(13, 12, 30)], [(12, 12, 30)]),
    ("0 12 * * 7", "1h", [(13, 12, 30)], [(14, 12, 30)]),
    ("0 12 * JAN-NOV *", "1h", [], [(13, 12, 30)]),
    # a restricted day-of-month OR a restricted day-of-week (the 1st is a Tuesday)
    ("0 12 1 * mon", "1h", [(1, 12, 30), (7, 12, 30)], [(8, 12, 30)]),
    ("0 12 1 * *", "1h", [(1, 12, 30)], [(7, 12, 30)]),
    # a day field starting with * counts as unrestricted: odd days AND Mondays
    ("0 12 */2 * mon", "1h", [(7, 12, 30)], [(14, 12, 30), (9, 12, 30)]),
    ("@daily", "1h", [(9, 0, 59)], [(9, 1, 0)]),
    ("@hourly", "10m", [(9, 7, 9)], [(9, 7, 10)]),
])
def test_cron_fields(cron, duration, inside, outside):
    """Each cron feature matches exactly the minutes it should."""
    w = windows(allow=[{"cron": cron, "duration": duration}])
    assert opened(w, *(madrid(*m) for m in inside)) == [True] * len(inside)
    assert opened(w, *(madrid(*m) for m in outside)) == [False] * len(outside)


def test_deny_wins_over_allow_and_the_next_opening_accounts_for_both():
    """Inside an allow window but also a deny window is closed until the deny window ends; a deny
    window that ends outside the allow windows opens at the next allow window."""
    w = windows(allow=["mon-fri 09:00-17:00"], deny=[{"cron": "0 12 * * *", "duration": "1h"}, "fri 16:00-mon 06:00"])
    lunch = w.is_open(madrid(9, 12, 30))
    assert not lunch.open and lunch.next_open == madrid(9, 13)
    assert lunch.reason == "inside deny window cron '0 12 * * *' for 1h (Europe/Madrid) until Wed 13:00"
    friday = w.is_open(madrid(11, 16, 30))
    assert not friday.open and friday.next_open == madrid(14, 9)
    assert friday.reason == ("inside deny window 'fri 16:00-mon 06:00' (Europe/Madrid) until Mon 06:00; "
                             "opens Mon 09:00")
    assert w.is_open(madrid(9, 11)).reason == ("inside allow window 'mon-fri 09:00-17:00' (Europe/Madrid) "
                                               "until Wed 12:00")
    assert w.describe() == ("allow window 'mon-fri 09:00-17:00'; deny window cron '0 12 * * *' for 1h; "
                            "deny window 'fri 16:00-mon 06:00' (Europe/Madrid)")


def test_several_allow_windows_are_named_and_an_opening_a_week_away_shows_its_date():
    """Outside every allow window the reason names them all; an opening six or more days away shows
    the date, so "Mon" cannot be mistaken for tomorrow."""
    w = windows(allow=["mon 09:00-10:00", "mon 11:00-12:00"])
    decision = w.is_open(madrid(14, 12, 30))
    assert decision.next_open == datetime(2026, 12, 21, 9, tzinfo=MADRID)
    assert decision.reason == ("outside the allow windows 'mon 09:00-10:00', 'mon 11:00-12:00' (Europe/Madrid); "
                               "opens Mon 2026-12-21 09:00")
    assert w.is_open(madrid(14, 10, 30)).next_open == madrid(14, 11)


def test_nothing_opening_within_the_horizon_says_so():
    """A permanent deny window has no next opening within 14 days, and says so."""
    decision = windows(deny=["mon-sun 00:00-24:00"]).is_open(madrid(9, 12))
    assert decision == type(decision)(False, "inside deny window 'mon-sun 00:00-24:00' (Europe/Madrid) with no end "
                                             "in the next 14 days; does not open in the next 14 days", None)


def test_the_time_zone_decides_what_the_wall_clock_says():
    """The same instant is inside '09:00-17:00' in Madrid and outside it in New York."""
    instant = utc(12, 9, 9, 30)  # 10:30 in Madrid, 04:30 in New York
    assert windows(allow=["mon-fri 09:00-17:00"]).is_open(instant).open
    assert not windows(allow=["mon-fri 09:00-17:00"], timezone="America/New_York").is_open(instant).open


def test_spring_forward_in_madrid_windows_follow_the_wall_clock():
    """Sunday 29 March 2026, 02:00 CET becomes 03:00 CEST. A 09:00 window opens at 07:00 UTC that day
    (08:00 UTC the week before); a deny window ending in the skipped hour opens at 03:00 CEST; a cron
    window starting at the non-existent 02:30 is open for the half hour that exists."""
    sunday = windows(allow=["sun 09:00-17:00"])
    assert opened(sunday, utc(3, 29, 7, 0), utc(3, 22, 7, 0), utc(3, 22, 8, 0)) == [True, False, True]
    night = windows(deny=["sun 00:00-02:30"]).is_open(utc(3, 29, 0, 50))  # 01:50 CET
    assert not night.open and night.next_open == utc(3, 29, 1, 0)  # 03:00 CEST
    assert night.next_open.astimezone(MADRID).utcoffset().total_seconds() == 7200
    assert night.reason == "inside deny window 'sun 00:00-02:30' (Europe/Madrid) until Sun 02:30; opens Sun 03:00"
    cron = windows(allow=[{"cron": "30 2 * * *", "duration": "1h"}])
    assert opened(cron, utc(3, 29, 0, 59), utc(3, 29, 1, 0), utc(3, 29, 1, 29), utc(3, 29, 1, 30)) == [
        False, True, True, False]


def test_fall_back_in_madrid_the_repeated_hour_counts_twice():
    """Sunday 25 October 2026, 03:00 CEST becomes 02:00 CET: '02:00-03:00' is open for two real hours,
    and a window of the repeated hour that just passed opens again 20 minutes later, not next week."""
    repeated = windows(allow=["sun 02:00-03:00"])
    assert opened(repeated, utc(10, 24, 23, 59), utc(10, 25, 0, 0), utc(10, 25, 1, 0), utc(10, 25, 1, 59),
                  utc(10, 25, 2, 0)) == [False, True, True, True, False]
    again = windows(allow=["sun 02:00-02:30"]).is_open(utc(10, 25, 0, 40))  # 02:40 CEST
    assert not again.open and again.next_open == utc(10, 25, 1, 0)  # 02:00 CET
    assert again.next_open.astimezone(MADRID).utcoffset().total_seconds() == 3600
    second = windows(deny=["sun 01:00-02:30"]).is_open(utc(10, 25, 1, 10))  # the second 02:10
    assert not second.open and second.next_open == utc(10, 25, 1, 30)


def test_dense_cron_windows_overlapping_allow_and_deny_decide_minute_by_minute():
    """A minute-by-minute allow with week-long durations under a deny every fifth minute: each minute
    is decided right and the next opening is the minute after a denied one."""
    w = windows(allow=[{"cron": "* * * * *", "duration": "7d"}], deny=[{"cron": "*/5 * * * *", "duration": "1m"}])
    decisions = [w.is_open(madrid(9, 12, minute)) for minute in range(20)]
    assert [d.open for d in decisions[:6]] == [False, True, True, True, True, False]
    assert decisions[0].next_open == madrid(9, 12, 1)


def test_a_naive_time_is_refused():
    with pytest.raises(ConfigError) as failure:
        windows(allow=["mon 09:00-10:00"]).is_open(datetime(2026, 12, 7, 9))
    assert str(failure.value) == "a promotion window check needs a timezone-aware time, not a naive one"


@pytest.mark.parametrize(("kind", "item", "problem"), [
    ("deny", "mon-fry 09:00-17:00", "deny window 'mon-fry 09:00-17:00': unknown weekday 'fry' "
                                    "(use mon, tue, wed, thu, fri, sat, sun)"),
    ("allow", "fry 18:00-mon 06:00", "allow window 'fry 18:00-mon 06:00': unknown weekday 'fry' "
                                     "(use mon, tue, wed, thu, fri, sat, sun)"),
    ("allow", "mon 25:00-26:00", "allow window 'mon 25:00-26:00': time '25:00' is not a time of day "
                                 "(HH:MM, 00:00 to 24:00)"),
    ("allow", "mon 09:60-10:00", "allow window 'mon 09:60-10:00': time '09:60' is not a time of day "
                                 "(HH:MM, 00:00 to 24:00)"),
    ("allow", "mon 24:00-10:00", "allow window 'mon 24:00-10:00': time '24:00' can only end a range; "
                                 "a day starts at 00:00"),
    ("allow", "mon 09:00-09:00", "allow window 'mon 09:00-09:00': starts and ends at the same time; "
                                 "a whole day is 00:00-24:00"),
    ("allow", "fri 18:00-fri 18:00", "allow window 'fri 18:00-fri 18:00': starts and ends at the same moment; "
                                     "for the whole week write 'mon-sun 00:00-24:00'"),
    ("allow", "mon,,tue 09:00-10:00", "allow window 'mon,,tue 09:00-10:00': empty item in the day list 'mon,,tue'"),
    ("allow", "whenever", "allow window 'whenever': expected e.g. 'mon-fri 09:00-17:00', 'fri 18:00-mon 06:00' "
                          "or a mapping {cron: '0 22 * * 1-5', duration: 2h}"),
    ("allow", 5, "allow window 5: expected e.g. 'mon-fri 09:00-17:00', 'fri 18:00-mon 06:00' "
                 "or a mapping {cron: '0 22 * * 1-5', duration: 2h}"),
    ("deny", {"cron": "0 25 * * *", "duration": "2h"}, "deny window cron '0 25 * * *': hour 25 is out of range 0-23"),
    ("deny", {"cron": "x 1 * * *", "duration": "2h"}, "deny window cron 'x 1 * * *': minute 'x' is not a number"),
    ("deny", {"cron": "0 1 * foo *", "duration": "2h"},
     "deny window cron '0 1 * foo *': month 'foo' is not a number or a name"),
    ("deny", {"cron": "0 1 * * 8", "duration": "2h"},
     "deny window cron '0 1 * * 8': day of week 8 is out of range 0-7"),
    ("deny", {"cron": "*/0 1 * * *", "duration": "2h"},
     "deny window cron '*/0 1 * * *': step '0' in the minute field must be a whole number >= 1"),
    ("deny", {"cron": "0 5-1 * * *", "duration": "2h"},
     "deny window cron '0 5-1 * * *': hour range '5-1' runs backwards"),
    ("deny", {"cron": "1,,2 1 * * *", "duration": "2h"},
     "deny window cron '1,,2 1 * * *': empty list item in the minute field '1,,2'"),
    ("deny", {"cron": "0 1 * *", "duration": "2h"},
     "deny window cron '0 1 * *': cron needs 5 fields (minute hour day-of-month month day-of-week), got 4"),
    ("deny", {"cron": "0 0 31 2 *", "duration": "2h"},
     "deny window cron '0 0 31 2 *': never matches: no chosen month has any of the chosen days of the month"),
    ("deny", {"cron": "0 22 * * *"},
     "deny window cron '0 22 * * *': duration is missing (how long the window stays open after each start, e.g. 2h)"),
    ("deny", {"cron": "0 22 * * *", "duration": 120},
     "deny window cron '0 22 * * *': duration 120 needs a unit, e.g. 90m, 2h, 1h30m or 1d"),
    ("deny", {"cron": "0 22 * * *", "duration": "two hours"},
     "deny window cron '0 22 * * *': duration 'two hours' is not like 90m, 2h, 1h30m or 1d"),
    ("deny", {"cron": "0 22 * * *", "duration": "0m"},
     "deny window cron '0 22 * * *': duration '0m' must be between 1m and 7d"),
    ("deny", {"cron": "0 22 * * *", "duration": "8d"},
     "deny window cron '0 22 * * *': duration '8d' must be between 1m and 7d"),
    ("deny", {"cron": "0 22 * * *", "duration": "2h", "zone": "UTC"},
     "deny window cron '0 22 * * *': unknown key 'zone' (a cron window has cron and duration)"),
    ("deny", {"duration": "2h"},
     "deny window {'duration': '2h'}: cron must be a five-field expression such as '0 22 * * 1-5'"),
])
def test_every_malformed_window_is_one_line_naming_environment_window_and_fault(kind, item, problem):
    """The error names the environment, the window as written, and what is wrong with it."""
    with pytest.raises(ConfigError) as failure:
        windows(**{kind: [item]})
    assert str(failure.value) == f"{WHERE}: {problem}"


def test_bad_lists_and_time_zones_are_refused():
    """The lists must be lists and the zone a real IANA zone."""
    with pytest.raises(ConfigError) as failure:
        PromotionWindows.parse("mon 09:00-10:00", [], "Europe/Madrid", WHERE)
    assert str(failure.value) == f"{WHERE}: allow windows must be a list, not str"
    with pytest.raises(ConfigError) as failure:
        PromotionWindows.parse([], [], "Europe/Madird", WHERE)
    assert str(failure.value) == (f"{WHERE}: time zone 'Europe/Madird' is not a known IANA time zone "
                                  "(e.g. UTC, Europe/Madrid)")
    assert PromotionWindows.parse(None, None, "UTC", WHERE).is_open(utc(12, 9, 3)).open
