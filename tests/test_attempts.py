"""The split of an invocation's life into waits, attempts and the gaps between them
(invocations.graph.attempts, pure) and the words and percentages the pages print
(reads.presenters.attempts). Spans are fakes here: the shape Restate 1.7.12 exports
(one `invocation-attempt` per attempt, ERROR with the failure message when it failed)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from invocations.graph import attempts as ga
from invocations.reads.presenters.attempts import FAILED_ATTEMPT, attempts_view, segment_views
from invocations.reads.selectors.spans import InvocationSpans

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass(frozen=True)
class FakeSpan:
    started_at: datetime
    ended_at: datetime
    failed: bool = False
    message: str = ""
    deployment_id: str = "dp_1"
    deployment_address: str = "http://localhost:9080/"


def span(start: float, end: float, *, failed: bool = False, message: str = "", dep: str = "dp_1") -> FakeSpan:
    return FakeSpan(at(start), at(end), failed, message, dep)


def times(status: str = "completed", *, completed: float | None = None, **kw: float) -> ga.Times:
    fields = {k: at(v) for k, v in kw.items()}
    return ga.Times(
        status=status, created_at=T0, completed_at=at(completed) if completed is not None else None, **fields
    )


def kinds(plan: ga.Plan) -> list[tuple[str, float, float]]:
    return [(s.kind, (s.start - T0).total_seconds(), (s.end - T0).total_seconds()) for s in plan.segments]


def test_retries_are_running_bars_with_backing_off_between_them() -> None:
    p = ga.plan(
        times(completed=9.0, running_at=0.1),
        [
            span(4.0, 9.0),  # given out of order: sorted by start
            span(0.1, 1.0, failed=True, message="transient failure"),
            span(2.0, 3.0, failed=True, message="transient failure", dep="dp_2"),
        ],
        now=at(100),
    )
    assert kinds(p) == [
        ("queued", 0, 0.1),
        ("running", 0.1, 1.0),
        ("backing-off", 1.0, 2.0),
        ("running", 2.0, 3.0),
        ("backing-off", 3.0, 4.0),
        ("running", 4.0, 9.0),
    ]
    assert [a.outcome_text for a in p.attempts] == [
        "failed: transient failure",
        "failed: transient failure",
        "completed",
    ]
    assert [a.number for a in p.attempts] == [1, 2, 3]
    assert p.attempts[1].deployment_id == "dp_2" and p.attempts[1].duration == timedelta(seconds=1)


def test_an_attempt_that_ended_well_and_was_followed_is_a_suspension() -> None:
    p = ga.plan(times(completed=5.0), [span(0, 1), span(4, 5)], now=at(100))
    assert kinds(p) == [("running", 0, 1), ("suspended", 1, 4), ("running", 4, 5)]
    assert [a.outcome for a in p.attempts] == ["suspended", "completed"]


def test_failure_gap_and_suspension_gap_are_not_interchangeable() -> None:
    """Mutation guard: the gap's kind follows how the attempt before it ended, nothing else."""
    failed_first = ga.plan(times(completed=5.0), [span(0, 1, failed=True, message="boom"), span(4, 5)], now=at(9))
    ok_first = ga.plan(times(completed=5.0), [span(0, 1), span(4, 5)], now=at(9))
    assert failed_first.segments[1].kind == ga.BACKING_OFF
    assert ok_first.segments[1].kind == ga.SUSPENDED
    assert failed_first.attempts[0].outcome == ga.FAILED and ok_first.attempts[0].outcome == ga.ENDED_SUSPENDED


def test_waiting_before_the_first_attempt_is_scheduled_then_inboxed() -> None:
    p = ga.plan(
        times(completed=12.0, scheduled_start_at=5.0, inboxed_at=6.0, running_at=8.0),
        [span(8.0, 12.0)],
        now=at(100),
    )
    assert kinds(p) == [("scheduled", 0, 5), ("queued", 5, 6), ("inboxed", 6, 8), ("running", 8, 12)]
    waits = [s for s in p.segments if s.waiting]
    assert len(waits) == 3 and not p.segments[-1].waiting


def test_a_call_inboxed_at_creation_waits_inboxed_only() -> None:
    p = ga.plan(times(completed=3.0, inboxed_at=0.0), [span(2.0, 3.0)], now=at(9))
    assert kinds(p) == [("inboxed", 0, 2), ("running", 2, 3)]


@pytest.mark.parametrize(
    ("status", "tail"),
    [("suspended", "suspended"), ("backing-off", "backing-off"), ("paused", "paused"), ("running", "in-progress")],
)
def test_an_unfinished_invocation_ends_in_its_current_state_until_now(status: str, tail: str) -> None:
    last_failed = status in ("backing-off", "paused")
    p = ga.plan(times(status), [span(0, 1, failed=last_failed, message="x")], now=at(10))
    assert kinds(p)[-1] == (tail, 1, 10)
    # The last attempt is never "completed" while the invocation is not.
    assert p.attempts[-1].outcome == (ga.FAILED if last_failed else ga.ENDED_SUSPENDED)
    if tail == "in-progress":
        assert p.segments[-1].attempt == 2


def test_the_last_attempt_completes_only_when_completion_follows_it() -> None:
    done = ga.plan(times(completed=1.5), [span(0, 1)], now=at(100))
    assert done.attempts[0].outcome == ga.COMPLETED and kinds(done) == [("running", 0, 1)]
    # Killed 60 s after suspending: the attempt suspended, the gap is the suspension.
    killed = ga.plan(times(completed=61.0), [span(0, 1)], now=at(100))
    assert killed.attempts[0].outcome == ga.ENDED_SUSPENDED
    assert kinds(killed)[-1] == ("suspended", 1, 61)
    # Killed while backing off.
    killed_retrying = ga.plan(times(completed=61.0), [span(0, 1, failed=True, message="x")], now=at(100))
    assert kinds(killed_retrying)[-1] == ("backing-off", 1, 61)


def test_capped_attempts_say_how_many_more_and_draw_no_tail() -> None:
    spans = [span(i * 2, i * 2 + 1, failed=True, message="x") for i in range(3)]
    p = ga.plan(times("backing-off"), spans, now=at(100), more=7)
    assert p.more == 7 and len(p.attempts) == 3
    assert kinds(p)[-1] == ("running", 4, 5)  # what followed the last drawn attempt is unknown here
    ok = ga.plan(times("suspended"), [span(0, 1)], now=at(100), more=2)
    assert ok.attempts[0].outcome == ga.ENDED_SUSPENDED  # later attempts exist: it did not complete


def test_not_started_waits_until_now() -> None:
    p = ga.plan(times("scheduled", scheduled_start_at=60.0), [], now=at(10))
    assert kinds(p) == [("scheduled", 0, 10)]
    running = ga.plan(times("running", running_at=1.0), [], now=at(10))
    assert kinds(running) == [("queued", 0, 1), ("in-progress", 1, 10)]


def test_place_keeps_a_sliver_of_every_attempt_and_cuts_at_the_axis() -> None:
    p = ga.plan(times(completed=100.0), [span(0, 0.001), span(99.0, 100.0)], now=at(200))
    placed = ga.place(p.segments, T0, at(100))
    assert [x.segment.kind for x in placed] == ["running", "suspended", "running"]
    assert placed[0].width == ga.MIN_WIDTH and placed[0].left == 0
    assert placed[1].left == pytest.approx(0.001) and placed[1].width == pytest.approx(98.999)
    assert placed[2].left == 99.0 and placed[2].width == 1.0
    # A sliver at the very end stays inside the track.
    end = ga.place([ga.Segment(ga.RUNNING, at(100), at(100), attempt=1)], T0, at(100))
    assert end[0].left + end[0].width <= 100.0
    assert ga.place(p.segments, None, None) == []


def test_segment_titles_name_the_attempt_its_outcome_and_deployment() -> None:
    p = ga.plan(
        times(completed=6.0),
        [span(0, 1, failed=True, message="transient failure", dep="dp_a"), span(3, 6, dep="dp_b")],
        now=at(100),
    )
    views = segment_views(p, T0, at(6), now=at(100))
    assert [v.kind for v in views] == [FAILED_ATTEMPT, "backing-off", "attempt-completed"]
    assert views[0].title == (
        "attempt 1: ran 1.0 s, failed: transient failure, deployment dp_a (http://localhost:9080/)"
    )
    assert views[1].title == "backing off 2.0 s"
    assert views[2].title.startswith("attempt 2: ran 3.0 s, completed, deployment dp_b")
    assert views[1].left == 16.667 and views[1].width == 33.333


@dataclass
class FakeInv:
    id: str = "inv_1x"
    status: str = "completed"
    created_at: datetime = T0
    scheduled_start_at: datetime | None = None
    inboxed_at: datetime | None = None
    running_at: datetime | None = T0
    completed_at: datetime | None = None
    completion_result: str | None = None
    completion_failure: str | None = None


def test_attempts_view_rows_say_what_followed_each_attempt() -> None:
    spans = InvocationSpans(
        attempts=[span(0.5, 1, failed=True, message="transient failure"), span(3, 4), span(10, 11)]  # type: ignore[list-item]
    )
    view = attempts_view(FakeInv(completed_at=at(11)), now=at(20), spans=spans)
    assert view.kept and [r.number for r in view.rows] == [1, 2, 3]
    assert [r.then for r in view.rows] == ["backing off 2.0 s", "suspended 6.0 s", ""]
    assert [r.outcome_text for r in view.rows] == ["failed: transient failure", "suspended", "completed"]
    assert view.rows[0].since_created == "+500 ms" and view.rows[1].took == "1.0 s"
    assert view.waited == "500 ms" and view.ran == "2.5 s"
    assert view.start == T0 and view.end == at(11)
