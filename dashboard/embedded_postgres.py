"""The embedded PostgreSQL used when DATABASE_URL is unset.

pgserver ships PostgreSQL binaries in a wheel, so a fresh clone needs no system
server. Every process that calls `ensure_running` registers with pgserver; the
server stops when the last of them exits, so Ctrl-C on the run command leaves
nothing behind while concurrent processes (web, sync, tests) share one server.
"""

import logging
from pathlib import Path


def ensure_running(data_dir: Path) -> str:
    """Start (or join) the server whose cluster lives in `data_dir`; return its URL."""
    import warnings

    # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); pgserver copes.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import pgserver

    # pgserver narrates every pg_ctl call at INFO; only its problems matter to us.
    logging.getLogger("pgserver").setLevel(logging.WARNING)

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    return server.get_uri()
