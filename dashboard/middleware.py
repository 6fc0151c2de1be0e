"""Turn "PostgreSQL is down" into a page that says so (503), not a bare 500, and,
when that PostgreSQL is the embedded one, start it again."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError, connection
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string

from dashboard import embedded_postgres

log = logging.getLogger(__name__)

RESTART_INTERVAL_S = 5.0


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, (OperationalError, InterfaceError)) or not _connection_is_broken(exception):
            return None
        log.warning("database unavailable while serving %s: %s", request.path, exception)
        # Without this a web process alone would answer 503 until some other process
        # happened to start the server. In the background and rate-limited: this request
        # answers at once, and a burst of them makes one attempt.
        embedded_postgres.ensure_running_again_soon(min_interval_s=RESTART_INTERVAL_S)
        # Rendered without the base template's context processors: they may query the database too.
        body = render_to_string(
            "unavailable.html",
            {"message": "The dashboard's PostgreSQL database is not answering. Pages come back as soon as it does."},
        )
        response = HttpResponse(body, status=503)
        response["Retry-After"] = "5"
        return response


def _connection_is_broken(exception: OperationalError | InterfaceError) -> bool:
    # An OperationalError can also be a query problem (e.g. a statement timeout); only
    # a lost or refused connection means "the database is down".
    text = str(exception).lower()
    return (
        isinstance(exception, InterfaceError)
        or connection.connection is None
        or "connect" in text
        or "terminat" in text
    )
