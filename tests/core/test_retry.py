"""The run's retry layer: which failures stop a run from starting more images."""

from alps_client.runs.retry import FailureStreak


def test_a_failure_streak_trips_at_its_limit_and_anything_but_a_failure_ends_it():
    streak = FailureStreak(3)
    for status in ["failed", "failed", "labelled", "failed", "rejected", "failed", "skipped", "failed", "failed"]:
        streak.record(status, "server unavailable")
        assert not streak.tripped
    streak.record("failed", "disk full")
    assert streak.tripped
    assert streak.reason() == ("the run stopped starting images after 3 in a row failed (last: disk full): the "
                               "backend, the workers or the disk looks down")
    streak.record("labelled")  # the machinery came back (an image in flight finished): the run goes on
    assert not streak.tripped


def test_a_failure_that_ends_the_run_trips_at_once_and_stays_tripped():
    streak = FailureStreak(10)
    streak.record("failed", "server unavailable")
    streak.record("failed", "no space left on the disk while writing a.npz", ends_run=True)
    assert streak.tripped
    streak.record("labelled")  # an image in flight that still found room: the disk is no less full
    assert streak.tripped and streak.reason() == ("the run stopped starting images: no space left on the disk "
                                                  "while writing a.npz")
    never = FailureStreak(0)  # "never stop for failures in a row" is no reason to fill a full disk
    never.record("failed", "disk quota exceeded", ends_run=True)
    assert never.tripped


def test_a_failure_streak_of_limit_zero_never_trips():
    streak = FailureStreak(0)
    for _ in range(1000):
        streak.record("failed", "x")
    assert not streak.tripped
