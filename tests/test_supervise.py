"""The run command's supervisor: its step method with fake children and a fake clock,
then one real process killed with SIGKILL and started again."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from demo.stack import ManagedProcess, spawn
from demo.supervise import Event, Supervisor, describe_exit


@dataclass
class FakeHandle:
    pid: int
    returncode: int | None = None
    stopped: bool = False

    def alive(self) -> bool:
        return self.returncode is None

    def stop(self) -> None:
        self.stopped = True


@dataclass
class FakeChild:
    """A start function whose processes die when the test says so."""

    handles: list[FakeHandle] = field(default_factory=list)
    failures_to_come: int = 0

    def start(self) -> FakeHandle:
        if self.failures_to_come:
            self.failures_to_come -= 1
            raise RuntimeError("port 8000 in use\nmore detail")
        handle = FakeHandle(pid=1000 + len(self.handles))
        self.handles.append(handle)
        return handle

    @property
    def current(self) -> FakeHandle:
        return self.handles[-1]

    def crash(self, returncode: int = 1) -> None:
        self.current.returncode = returncode


def supervised(
    *names: str, initial_backoff_s: float = 1.0, max_backoff_s: float = 30.0, stable_after_s: float = 60.0
) -> tuple[Supervisor, dict[str, FakeChild], list[Event]]:
    events: list[Event] = []
    supervisor = Supervisor(
        initial_backoff_s=initial_backoff_s,
        max_backoff_s=max_backoff_s,
        stable_after_s=stable_after_s,
        report=events.append,
    )
    fakes = {name: FakeChild() for name in names}
    for name, fake in fakes.items():
        supervisor.add(name, fake.start, log_path=Path(f"/logs/{name}.log"))
    supervisor.start_all(now=0.0)
    return supervisor, fakes, events


def crash_and_restart(supervisor: Supervisor, fake: FakeChild, *, now: float) -> tuple[float, float]:
    """Crash the child at `now`; return (the announced delay, when it was actually started again)."""
    fake.crash()
    [died] = supervisor.poll_once(now)
    assert died.kind == "died" and died.delay_s is not None
    starts = len(fake.handles)
    # Not a moment before the delay is over...
    assert supervisor.poll_once(now + died.delay_s - 0.01) == []
    assert len(fake.handles) == starts
    # ...and at the first poll after it.
    [restarted] = supervisor.poll_once(now + died.delay_s)
    assert restarted.kind == "restarted" and len(fake.handles) == starts + 1
    return died.delay_s, now + died.delay_s


def test_a_dead_child_is_restarted_with_a_backoff_that_doubles_up_to_the_cap() -> None:
    supervisor, fakes, _ = supervised("sync engine", initial_backoff_s=1.0, max_backoff_s=30.0, stable_after_s=60.0)
    now, delays = 0.0, []
    for _ in range(8):
        delay, now = crash_and_restart(supervisor, fakes["sync engine"], now=now + 0.5)
        delays.append(delay)
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert all(h.stopped for h in fakes["sync engine"].handles[:-1]), "each dead handle is reaped"
    assert fakes["sync engine"].current.alive()


def test_the_backoff_starts_over_after_the_child_stayed_up() -> None:
    supervisor, fakes, _ = supervised("web server", stable_after_s=60.0)
    fake = fakes["web server"]
    delay1, now = crash_and_restart(supervisor, fake, now=1.0)
    delay2, now = crash_and_restart(supervisor, fake, now=now + 1.0)
    delay3, now = crash_and_restart(supervisor, fake, now=now + 1.0)
    assert (delay1, delay2, delay3) == (1, 2, 4)
    # Up for a minute: healthy again, so the next death is treated as the first.
    delay4, now = crash_and_restart(supervisor, fake, now=now + 60.0)
    assert delay4 == 1
    # Up for less than that after it: still counting.
    delay5, _ = crash_and_restart(supervisor, fake, now=now + 59.0)
    assert delay5 == 2


def test_only_the_dead_child_is_touched_and_the_line_says_which_why_and_where() -> None:
    supervisor, fakes, events = supervised("restate-server", "sync engine", "web server")
    fakes["sync engine"].crash(returncode=-signal.SIGKILL)
    supervisor.poll_once(5.0)
    [died] = events
    assert died.child == "sync engine"
    assert died.message == (
        "sync engine was killed by SIGKILL (exit code -9); restarting it in 1 s (death 1 in a row);"
        " log: /logs/sync engine.log"
    )
    supervisor.poll_once(6.0)
    assert events[-1].kind == "restarted" and events[-1].message == "sync engine is running again (pid 1001)"
    assert [len(f.handles) for f in fakes.values()] == [1, 2, 1]
    assert not fakes["restate-server"].current.stopped and not fakes["web server"].current.stopped


def test_a_restart_that_fails_is_retried_with_a_longer_backoff() -> None:
    supervisor, fakes, events = supervised("python demo services")
    fake = fakes["python demo services"]
    fake.crash(returncode=3)
    fake.failures_to_come = 2
    supervisor.poll_once(10.0)  # died: 1 s
    supervisor.poll_once(11.0)  # start fails: 2 s
    supervisor.poll_once(13.0)  # fails again: 4 s
    supervisor.poll_once(16.9)
    supervisor.poll_once(17.0)  # starts
    assert [(e.kind, e.delay_s) for e in events] == [
        ("died", 1),
        ("restart_failed", 2),
        ("restart_failed", 4),
        ("restarted", None),
    ]
    assert events[0].message.startswith("python demo services exited with code 3;")
    assert "did not start again (RuntimeError: port 8000 in use); retrying in 2 s" in events[1].message
    assert fake.current.alive()


def test_nothing_is_restarted_once_a_stop_is_requested() -> None:
    supervisor, fakes, events = supervised("demo traffic", "sync engine")
    fakes["demo traffic"].crash()
    supervisor.poll_once(1.0)  # restart due at 2.0
    supervisor.request_stop()
    fakes["sync engine"].crash()
    assert supervisor.poll_once(100.0) == []
    assert len(fakes["demo traffic"].handles) == 1 and len(fakes["sync engine"].handles) == 1
    supervisor.stop_all()
    assert fakes["sync engine"].current.stopped
    assert [e.kind for e in events] == ["died"]


def test_stop_all_stops_every_child_last_started_first() -> None:
    order: list[str] = []

    @dataclass
    class Recording(FakeHandle):
        name: str = ""

        def stop(self) -> None:
            order.append(self.name)

    def starter(name: str, pid: int) -> Callable[[], Recording]:
        return lambda: Recording(pid=pid, name=name)

    supervisor = Supervisor()
    for pid, name in enumerate(["redis", "restate-server", "web server"]):
        supervisor.add(name, starter(name, pid))
    supervisor.start_all(now=0.0)
    supervisor.stop_all()
    assert order == ["web server", "restate-server", "redis"]


def test_a_first_start_that_fails_is_an_error_not_a_retry() -> None:
    supervisor = Supervisor()
    broken = FakeChild(failures_to_come=1)
    supervisor.add("web server", broken.start)
    with pytest.raises(RuntimeError, match="port 8000 in use"):
        supervisor.start_all(now=0.0)


def test_exit_descriptions() -> None:
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(-15) == "was killed by SIGTERM (exit code -15)"
    assert describe_exit(None) == "is down"


# ---------------------------------------------------------------- a real process


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[tuple[Supervisor, list[Event], list[ManagedProcess]]]:
    started: list[ManagedProcess] = []

    def start() -> ManagedProcess:
        proc = spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(1000)"], tmp_path / "sleeper.log")
        started.append(proc)
        return proc

    events: list[Event] = []
    supervisor = Supervisor(initial_backoff_s=0.2, report=events.append)
    supervisor.add("sleeper", start, log_path=tmp_path / "sleeper.log")
    supervisor.start_all(now=time.monotonic())
    try:
        yield supervisor, events, started
    finally:
        supervisor.stop_all()
        for proc in started:
            proc.stop()


def test_a_real_process_killed_with_sigkill_is_started_again(
    sleeper: tuple[Supervisor, list[Event], list[ManagedProcess]],
) -> None:
    supervisor, events, started = sleeper
    [first] = started
    os.kill(first.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not any(e.kind == "restarted" for e in events):
        assert time.monotonic() < deadline, f"not restarted within 10 s; events: {events}"
        supervisor.poll_once(time.monotonic())
        time.sleep(0.05)
    assert events[0].kind == "died" and "killed by SIGKILL" in events[0].message
    assert len(started) == 2
    second = started[1]
    assert second.pid != first.pid and second.alive()
    assert not first.alive()
    supervisor.stop_all()
    assert not second.alive(), "stop_all ends the restarted process too"
