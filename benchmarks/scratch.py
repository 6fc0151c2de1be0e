"""A throwaway database on the configured (or embedded) PostgreSQL server, so a
benchmark never touches the dev or test databases."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent


def _url_with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@dataclass
class ScratchDatabase:
    """A database of our own on the embedded server (or DATABASE_URL's), dropped at the end.

    Not the test_ database pytest-django creates: tests may run at the same time.
    """

    server_url: str
    name: str

    @property
    def url(self) -> str:
        return _url_with_database(self.server_url, self.name)

    @classmethod
    def create(cls, prefix: str) -> ScratchDatabase:
        server_url = os.environ.get("DATABASE_URL")
        if not server_url:
            from dashboard.embedded_postgres import ensure_running

            # Registers this process with pgserver, so the server outlives every child we start.
            data_dir = Path(os.environ.get("DASHBOARD_DATA_DIR", ROOT / "data"))
            server_url = ensure_running(data_dir / "postgres")
        name = f"bench_{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return cls(server_url, name)

    def drop(self) -> None:
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
