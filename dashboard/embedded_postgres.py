"""The embedded PostgreSQL used when DATABASE_URL is unset.

pgserver ships PostgreSQL binaries in a wheel, so a fresh clone needs no system
server. Every process that calls `ensure_running` registers with pgserver; the
server stops when the last of them exits, so Ctrl-C on the run command leaves
nothing behind while concurrent processes (web, sync, tests) share one server.

pgserver only starts the server when a process first asks for it. When the
postmaster dies later (a crash, a stray signal), `ensure_running_again` starts it
on the same data directory, so the same socket and URL work again: the run
command's supervisor, the web process's 503 handler and the sync loop call it.
"""

from __future__ import annotations

import atexit
import logging
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

# The cluster this process started or joined; None when it uses DATABASE_URL.
_data_dir: Path | None = None
_restart_lock = threading.Lock()
_background_lock = threading.Lock()
_last_background_attempt = float("-inf")


class EmbeddedPostgresError(RuntimeError):
    """The embedded server did not come back; the message carries the tail of its log."""


def _pgserver() -> ModuleType:
    # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); pgserver copes.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import pgserver

    # pgserver narrates every pg_ctl call at INFO; only its problems matter to us.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    return pgserver


def ensure_running(data_dir: Path) -> str:
    """Start (or join) the server whose cluster lives in `data_dir`; return its URL.

    This process's database from now on: `ensure_running_again()` restarts this one."""
    global _data_dir
    uri = _join(data_dir)
    _data_dir = data_dir
    return uri


def _join(data_dir: Path) -> str:
    pgserver = _pgserver()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    # atexit runs last-registered first, so this runs before pgserver's own cleanup.
    atexit.register(_prepare_cleanup, server.pgdata)
    return server.get_uri()


def embedded_data_dir() -> Path | None:
    """The data directory of the embedded server this process uses, or None (DATABASE_URL)."""
    return _data_dir


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid of the live postmaster serving `data_dir`, or None when the server is down."""
    try:
        first_line = (data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        pid = int(first_line)
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    import psutil

    try:
        # A killed process stays a zombie until its parent (init, for the postmaster)
        # reaps it; it serves nothing and holds nothing.
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def is_running(data_dir: Path) -> bool:
    return postmaster_pid(data_dir) is not None


def ensure_running_again(data_dir: Path | None = None, *, wait_s: float = 5.0) -> bool:
    """Start the embedded server on `data_dir` (default: this process's) if it is down.

    Returns True when it had to start it, False when it was up or when this process
    uses DATABASE_URL (nothing of ours to restart). Raises EmbeddedPostgresError when
    it does not come up; callers retry later.
    """
    data_dir = data_dir or _data_dir
    if data_dir is None:
        return False
    with _restart_lock:
        if is_running(data_dir):
            return False
        _wait_for_old_postmaster(data_dir, wait_s=wait_s)
        _pgserver()
        from pgserver.postgres_server import PostgresServer

        server = PostgresServer._instances.get(data_dir.resolve())
        if server is None:
            # Never joined from this process (e.g. a test's own cluster): joining starts it.
            _start_or_raise(lambda: _join(data_dir), data_dir)
        else:
            # pgserver's own start path, under its inter-process lock as it expects: the web
            # process, the sync engine and the supervisor all notice the same outage, and
            # only the first of them may start a server.
            def start() -> bool:
                with PostgresServer._lock:
                    if is_running(data_dir):
                        return False
                    server.ensure_postgres_running()
                    return True

            if not _start_or_raise(start, data_dir):
                return False
        log.warning("embedded PostgreSQL in %s was down; started it again", data_dir)
        return True


def ensure_running_again_soon(*, min_interval_s: float = 5.0, data_dir: Path | None = None) -> bool:
    """`ensure_running_again` in a background thread, at most once per `min_interval_s`.

    For request handlers: they answer 503 at once instead of waiting for a start, and a
    burst of failing requests starts one attempt, not one each. Returns whether an attempt
    was started.
    """
    global _last_background_attempt
    if (data_dir or _data_dir) is None:
        return False
    with _background_lock:
        now = time.monotonic()
        if now - _last_background_attempt < min_interval_s or _restart_lock.locked():
            return False
        _last_background_attempt = now

    def attempt() -> None:
        try:
            ensure_running_again(data_dir)
        except EmbeddedPostgresError as exc:
            log.warning("%s", exc)
        except Exception:  # a background attempt must never die loudly; the next request retries
            # e.g. pgserver's inter-process lock is not thread-safe, and another thread of this
            # process may be inside it (joining or leaving the server) at the same moment.
            log.warning("could not start the embedded PostgreSQL again; the next request retries", exc_info=True)

    threading.Thread(target=attempt, name="embedded-postgres-restart", daemon=True).start()
    return True


def _wait_for_old_postmaster(data_dir: Path, *, wait_s: float) -> None:
    # A postmaster that was SIGKILLed lingers as a zombie until init reaps it, and
    # PostgreSQL refuses to start while the pid in postmaster.pid still exists.
    import psutil

    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + wait_s
    while psutil.pid_exists(pid):
        if time.monotonic() > deadline:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL in {data_dir}: the old postmaster (pid {pid}) has not been reaped yet"
            )
        time.sleep(0.1)


def _start_or_raise(start: Callable[[], object], data_dir: Path) -> object:
    try:
        return start()
    # pgserver raises these from pg_ctl, and asserts on the postmaster it finds.
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, AssertionError, OSError) as exc:
        raise EmbeddedPostgresError(
            f"embedded PostgreSQL in {data_dir} did not start again ({type(exc).__name__}: {exc}); "
            f"last lines of {data_dir / 'log'}:\n{_log_tail(data_dir / 'log')}"
        ) from exc


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _prepare_cleanup(pgdata: Path) -> None:
    """Make pgserver's exit hook stop the server when this is the last process using it."""
    _forget_dead_handles(pgdata)
    _refresh_postmaster_info(pgdata)


def _forget_dead_handles(pgdata: Path) -> None:
    # pgserver stops the server when the last registered process exits, but a process
    # killed by a signal never unregisters, and the server would then outlive everyone.
    from pgserver.postgres_server import PostgresServer
    from pgserver.utils import DiskList

    handles = DiskList(pgdata / ".handle_pids.json")
    with PostgresServer._lock:
        try:
            pids = handles.get()
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if _alive(pid)]
        if alive != pids:
            handles.put(alive)


def _refresh_postmaster_info(pgdata: Path) -> None:
    # pgserver stops "its" postmaster, the one it saw when this process joined; if that one
    # died and another process started the server again, it would skip the stop.
    from pgserver.postgres_server import PostgresServer
    from pgserver.utils import PostmasterInfo

    server = PostgresServer._instances.get(pgdata)
    if server is None or not is_running(pgdata):
        return
    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (OSError, ValueError, AssertionError):
        return
    if info is not None and info.is_running():
        server._postmaster_info = info
