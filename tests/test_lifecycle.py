"""Periodic work (restmq.lifecycle.Periodic): one run at a time, never ended by a failure,
an outage logged once and its end once. Time is a twisted Clock; the runs' Deferreds
are real ones, fired by the test."""

from __future__ import annotations

import pytest
from twisted.internet import defer, task
from twisted.logger import Logger

from restmq.errors import StorageUnavailable
from restmq.lifecycle import Periodic

INTERVAL = 10.0


class Work:
    """Recurring work whose runs the test ends: each run returns a Deferred kept here,
    or fails at once with the exception given to ``fail_next``."""

    def __init__(self) -> None:
        self.runs: list[defer.Deferred] = []
        self.failures: list[Exception] = []

    def __call__(self) -> defer.Deferred:
        if self.failures:
            raise self.failures.pop(0)
        run = defer.Deferred()
        self.runs.append(run)
        return run

    def fail_next(self, *errors: Exception) -> None:
        self.failures.extend(errors)

    @property
    def pending(self) -> list[defer.Deferred]:
        return [run for run in self.runs if not run.called]


@pytest.fixture
def clock() -> task.Clock:
    return task.Clock()


def periodic(clock: task.Clock, work, **kwargs) -> Periodic:
    return Periodic(clock, INTERVAL, work, what="the sweep", log=Logger("tests"), **kwargs)


def test_a_run_never_overlaps_the_one_before(clock):
    work = Work()
    loop = periodic(clock, work, now=True)
    loop.start()
    assert len(work.runs) == 1
    clock.advance(INTERVAL * 3.5)  # three more intervals pass while the first run lasts
    assert len(work.runs) == 1, "no second run while the first is under way"
    work.runs[0].callback(None)
    assert len(work.runs) == 1, "the next run waits for its time"
    clock.advance(INTERVAL)
    assert len(work.runs) == 2
    work.runs[1].callback(None)
    clock.advance(INTERVAL)
    assert len(work.runs) == 3


def test_the_first_run_waits_one_interval_unless_now(clock):
    work = Work()
    periodic(clock, work).start()
    assert work.runs == []
    clock.advance(INTERVAL)
    assert len(work.runs) == 1


@pytest.mark.parametrize("how", ["raises", "its Deferred fails"])
def test_a_failing_run_does_not_end_the_loop(clock, how):
    work = Work()
    loop = periodic(clock, work, now=True)
    if how == "raises":
        work.fail_next(RuntimeError("boom"))
        loop.start()
    else:
        loop.start()
        work.runs[0].errback(RuntimeError("boom"))
    assert loop.running and loop.failing
    clock.advance(INTERVAL)
    assert len(work.pending) == 1, "the next run came all the same"
    work.pending[0].callback(None)
    assert not loop.failing


def test_an_outage_is_logged_once_and_its_end_once(clock, log_lines):
    work = Work()
    loop = periodic(clock, work, now=True)
    work.fail_next(StorageUnavailable("no connection to Redis"))
    loop.start()
    for _ in range(3):  # the outage goes on: three more failed runs
        clock.advance(INTERVAL)
        work.pending[0].errback(StorageUnavailable("no connection to Redis"))
    for _ in range(2):  # it is over: two good runs
        clock.advance(INTERVAL)
        work.pending[0].callback(None)
    assert [line for line in log_lines if "the sweep" in line] == [
        "the sweep failed: no connection to Redis; retrying every 10.0s",
        "the sweep works again",
    ]
    clock.advance(INTERVAL)  # a new outage is a new line, and so is its end
    work.pending[0].errback(RuntimeError("a bug"))
    clock.advance(INTERVAL)
    work.pending[0].callback(None)
    assert [line for line in log_lines if "the sweep" in line][2:] == [
        "the sweep failed",  # an unexpected error: logged with its traceback
        "the sweep works again",
    ]


def test_stop_waits_for_the_run_under_way_and_ends_the_runs(clock):
    work = Work()
    loop = periodic(clock, work, now=True)
    loop.start()
    stopped = loop.stop()
    assert not stopped.called, "a run is under way"
    work.runs[0].callback(None)
    assert stopped.called
    clock.advance(INTERVAL * 5)
    assert len(work.runs) == 1 and not loop.running
    assert loop.stop().called, "stopping again is harmless"


def test_a_coroutine_run_is_waited_for_too(clock):
    gate = defer.Deferred()
    runs = []

    async def work() -> None:
        runs.append("begun")
        await gate
        runs.append("done")

    loop = periodic(clock, work, now=True)
    loop.start()
    clock.advance(INTERVAL * 2)
    assert runs == ["begun"]
    gate.callback(None)
    assert runs == ["begun", "done"]
    clock.advance(INTERVAL)
    assert runs == ["begun", "done", "begun", "done"]
