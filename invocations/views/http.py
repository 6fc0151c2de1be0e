"""The request type our views receive, for the type checker."""

from __future__ import annotations

from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    """What HtmxMiddleware adds (django-htmx's documented pattern)."""

    htmx: HtmxDetails
