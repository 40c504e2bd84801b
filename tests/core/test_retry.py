"""The run's retry layer: which failures are retried, which stop a run from starting more images."""

import threading

import pytest

from alps_client.runs.retry import FailureStreak, call_with_retries, describe


def test_a_failure_streak_trips_at_its_limit_stays_tripped_and_anything_but_a_failure_ends_it():
    streak = FailureStreak(3)
    for status in ["failed", "failed", "labelled", "failed", "rejected", "failed", "skipped", "failed", "failed"]:
        streak.record(status, "server unavailable")
        assert not streak.tripped
    streak.record("failed", "disk full")
    assert streak.tripped
    assert streak.reason() == ("the run stopped starting images after 3 in a row failed (last: disk full): the "
                               "backend, the workers or the disk looks down")
    # Tripped, the run starts no other image: the images queued behind end "not started" and one in flight may
    # still be labelled; the reason stays the failures that tripped it (it said "last: not started ...").
    streak.record("failed", "not started: the run stopped starting images (see its error)")
    streak.record("labelled")
    assert streak.tripped and "(last: disk full)" in streak.reason()
    streak.record("failed", "no space left on the disk while writing b.npz", ends_run=True)  # still said: for good
    assert streak.reason() == "the run stopped starting images: no space left on the disk while writing b.npz"


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


_RELEASE = threading.Event()  # module level: a Dask task is pickled, a module's function by reference


def _wait_for_release() -> bool:
    return _RELEASE.wait(60)


def test_a_dask_future_cancelled_under_an_image_is_tried_again():
    """A scheduler lost or restarted by its user cancels the futures in flight: that says nothing about the image,
    which failed for good with a ``FutureCancelledError`` line."""
    distributed = pytest.importorskip("distributed")
    tries: list[str] = []
    with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as c, \
            distributed.Client(c) as client:

        def one_try() -> str:
            future = client.submit(_wait_for_release, pure=False)
            tries.append(future.key)
            if len(tries) == 1:  # the first try's future is cancelled under it, as a restart does
                client.cancel(future, reason="restarted by its user")
            else:
                _RELEASE.set()
            return "labelled" if future.result() else "timed out"

        retried: list[str] = []
        result = call_with_retries(one_try, [0.0], lambda n, delay, err: retried.append(describe(err)),
                                   sleep=lambda s: None)
    assert result == "labelled" and retried == ["Dask cancelled it (restarted by its user)"] and len(tries) == 2


@pytest.mark.parametrize("error", [ConnectionError("reset"), TimeoutError("slow"), MemoryError()])
def test_a_transient_failure_is_tried_again_after_each_delay(error):
    """Out of memory is the machine's failure, never the image's: retried as a lost connection is (mutation audit:
    neither classification was held by a test of the retry itself)."""
    calls, slept = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise error
        return "done"

    assert call_with_retries(flaky, [1.0, 2.0], sleep=slept.append) == "done"
    assert len(calls) == 3 and slept == [1.0, 2.0]


def test_a_permanent_failure_is_raised_at_once_without_waiting():
    """A bug or a rejected request retried for the whole schedule cost a minute per image, its log saying "retry"."""
    calls, slept = [], []

    def broken() -> None:
        calls.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        call_with_retries(broken, [1.0, 2.0], sleep=slept.append)
    assert len(calls) == 1 and slept == []
