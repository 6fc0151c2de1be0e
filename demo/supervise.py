"""Keep the run command's children running: a child that dies is started again
after a capped exponential backoff, until a stop is requested.

The run command calls `Supervisor.poll_once(now)` once a second; tests call it
with their own clock and fake children. Needs no Django settings.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from dashboard import embedded_postgres


class Handle(Protocol):
    """A started child, as the supervisor sees it (demo.stack.ManagedProcess is one)."""

    @property
    def pid(self) -> int | None: ...

    @property
    def returncode(self) -> int | None: ...

    def alive(self) -> bool: ...

    def stop(self) -> None: ...


@dataclass
class Child:
    name: str
    start: Callable[[], Handle]
    log_path: Path | None = None
    handle: Handle | None = None
    started_at: float = 0.0
    # Deaths since the child last stayed up for `stable_after_s`; sets the backoff.
    crashes: int = 0
    restart_at: float | None = None


@dataclass(frozen=True)
class Event:
    child: str
    kind: Literal["died", "restarted", "restart_failed", "stop_failed"]
    message: str
    delay_s: float | None = None


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "is down"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name} (exit code {returncode})"
        except ValueError:
            return f"was killed by signal {-returncode} (exit code {returncode})"
    return f"exited with code {returncode}"


@dataclass(kw_only=True)
class Supervisor:
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    # A child that ran this long before dying counts as healthy: its backoff starts over.
    stable_after_s: float = 60.0
    report: Callable[[Event], None] = lambda event: None
    children: list[Child] = field(default_factory=list, init=False)
    stop_requested: bool = field(default=False, init=False)

    def add(self, name: str, start: Callable[[], Handle], *, log_path: Path | None = None) -> Child:
        child = Child(name=name, start=start, log_path=log_path)
        self.children.append(child)
        return child

    def backoff_s(self, crashes: int) -> float:
        return min(self.max_backoff_s, self.initial_backoff_s * 2 ** max(0, crashes - 1))

    def start_all(self, *, now: float) -> None:
        """Start every child in the order added. A first start that fails raises: that is a
        setup problem (a port in use, a missing binary) the user must see, not retry."""
        for child in self.children:
            if self.stop_requested:
                return
            child.handle = child.start()
            child.started_at = now

    def poll_once(self, now: float) -> list[Event]:
        """Notice dead children and start the ones whose backoff is over."""
        events: list[Event] = []
        for child in self.children:
            # Checked per child: a signal can arrive while a slow start runs.
            if self.stop_requested:
                break
            if child.handle is not None and not child.handle.alive():
                events.append(self._died(child, now))
                # Reported at once: a slow start further down must not delay the news.
                self.report(events[-1])
            if child.handle is None and child.restart_at is not None and now >= child.restart_at:
                events.append(self._restart(child, now))
                self.report(events[-1])
        return events

    def request_stop(self) -> None:
        """Safe from a signal handler: only sets a flag the loop reads."""
        self.stop_requested = True

    def stop_all(self) -> None:
        """Stop every child, last started first (the web server before what it reads from)."""
        self.request_stop()
        for child in reversed(self.children):
            if child.handle is not None:
                try:
                    child.handle.stop()
                except (OSError, subprocess.SubprocessError) as exc:
                    # One child that will not die must not leave the others running.
                    self.report(Event(child.name, "stop_failed", f"{child.name} did not stop: {exc}"))
                child.handle = None

    def _died(self, child: Child, now: float) -> Event:
        assert child.handle is not None
        returncode = child.handle.returncode
        # Reaps it, closes its log and ends helpers it forked into its process group.
        child.handle.stop()
        child.handle = None
        if now - child.started_at >= self.stable_after_s:
            child.crashes = 0
        child.crashes += 1
        delay = self.backoff_s(child.crashes)
        child.restart_at = now + delay
        return Event(
            child.name,
            "died",
            f"{child.name} {describe_exit(returncode)}; restarting it in {delay:g} s"
            f" (death {child.crashes} in a row){self._log_hint(child)}",
            delay,
        )

    def _restart(self, child: Child, now: float) -> Event:
        try:
            child.handle = child.start()
        except Exception as exc:  # noqa: BLE001 - whatever a start raises, the others must stay supervised
            child.crashes += 1
            delay = self.backoff_s(child.crashes)
            child.restart_at = now + delay
            return Event(
                child.name,
                "restart_failed",
                f"{child.name} did not start again ({type(exc).__name__}: {_first_line(exc)}); "
                f"retrying in {delay:g} s{self._log_hint(child)}",
                delay,
            )
        child.started_at = now
        child.restart_at = None
        pid = f" (pid {child.handle.pid})" if child.handle.pid is not None else ""
        return Event(child.name, "restarted", f"{child.name} is running again{pid}")

    @staticmethod
    def _log_hint(child: Child) -> str:
        return f"; log: {child.log_path}" if child.log_path is not None else ""


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0]


@dataclass
class PopenHandle:
    """A bare subprocess.Popen (e.g. redis-server) as a Handle."""

    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


@dataclass
class EmbeddedPostgresHandle:
    """The embedded PostgreSQL. Not our child: pg_ctl detaches the postmaster, and
    pgserver stops it when the last process using it exits, so `stop` does nothing."""

    data_dir: Path
    pid: int | None

    @classmethod
    def ensure(cls, data_dir: Path) -> EmbeddedPostgresHandle:
        embedded_postgres.ensure_running_again(data_dir)
        return cls(data_dir, embedded_postgres.postmaster_pid(data_dir))

    @property
    def returncode(self) -> int | None:
        return None  # only its parent (init) learns it

    def alive(self) -> bool:
        # A different pid means it died and someone (the web process, the sync
        # engine) already started it again: still worth a line in the log.
        return self.pid is not None and embedded_postgres.postmaster_pid(self.data_dir) == self.pid

    def stop(self) -> None:
        pass
