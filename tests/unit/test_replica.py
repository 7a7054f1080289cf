"""adapters/replica.py: which replica works, by kopf's peering rule."""

import datetime

import pytest

from rbd_operator.adapters.replica import standing

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)


def entry(priority: int, seconds_ago: float = 1, lifetime: int = 15) -> dict:
    seen = NOW - datetime.timedelta(seconds=seconds_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


def test_highest_live_priority_works_and_the_other_waits_for_its_expiry():
    peering = {"status": {"me": entry(100), "other": entry(50, seconds_ago=5)}}
    assert standing(peering, "me", 100, NOW) == (True, None, [])
    active, recheck, blockers = standing(peering, "other", 50, NOW)
    assert (active, blockers) == (False, ["me"])
    assert recheck == pytest.approx(14)  # the moment "me" would expire without a keep-alive


def test_a_dead_peer_does_not_hold_anyone_back():
    peering = {"status": {"me": entry(50), "dead": entry(100, seconds_ago=16)}}
    assert standing(peering, "me", 50, NOW)[0] is True


def test_equal_priorities_pause_everyone_as_kopf_does():
    peering = {"status": {"a": entry(7), "b": entry(7)}}
    assert standing(peering, "a", 7, NOW)[0] is False
    assert standing(peering, "b", 7, NOW)[0] is False


def test_no_peering_object_means_paused_and_an_empty_one_means_alone():
    assert standing(None, "me", 1, NOW) == (False, None, [])
    assert standing({"status": None}, "me", 1, NOW) == (True, None, [])
    assert standing({}, "me", 1, NOW)[0] is True


def test_unparsable_entries_are_skipped_and_zulu_times_parse():
    peering = {"status": {"junk": "x", "bad": {"priority": "high"},
                          "z": {"priority": 9, "lifetime": 15, "lastseen": "2026-01-01T11:59:59Z"}}}
    assert standing(peering, "me", 5, NOW) == (False, pytest.approx(14), ["z"])
