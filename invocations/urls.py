from urllib.parse import quote, unquote

from django.urls import path, register_converter

from invocations.views import (
    actions,
    attach,
    audit,
    deadlocks,
    delayed,
    detail,
    jobs,
    lists,
    objects,
    service_map,
    stuck,
    traces,
    workflows,
)


class InvocationIdConverter:
    """An invocation id in a path segment. Ids come from Restate's data: one with a "/"
    must still reverse (it used to raise NoReverseMatch and turn a whole page into a
    500), so it is percent-encoded into one segment; the view then answers 400."""

    regex = "[^/]+"

    def to_python(self, value: str) -> str:
        return unquote(value)

    def to_url(self, value: str) -> str:
        return quote(value, safe="")


register_converter(InvocationIdConverter, "invocation_id")


# A virtual object key is any string: "/" and ".." included, or empty. Percent-encoding
# alone cannot carry it in one path segment (the server decodes %2F into "/" before
# routing, and browsers resolve "." and ".." segments), so a few characters get a "~"
# escape of our own first; reverse() percent-encodes the rest, which reads back as typed.
_KEY_ESCAPES = {"~": "~~", "/": "~s"}
_KEY_UNESCAPES = {"~": "~", "s": "/", "d": ".", "e": ""}


def object_key_to_segment(key: str) -> str:
    if key == "":
        return "~e"
    escaped = "".join(_KEY_ESCAPES.get(c, c) for c in key)
    # A segment that starts with "." could be "." or "..": escape its first dot.
    return "~d" + escaped[1:] if escaped.startswith(".") else escaped


def object_key_from_segment(segment: str) -> str:
    out, i = [], 0
    while i < len(segment):
        c = segment[i]
        if c == "~" and i + 1 < len(segment) and segment[i + 1] in _KEY_UNESCAPES:
            out.append(_KEY_UNESCAPES[segment[i + 1]])
            i += 2
        else:
            out.append(c)  # a stray "~" (a hand-typed URL) stands for itself
            i += 1
    return "".join(out)


class ObjectKeyConverter:
    regex = "[^/]+"

    def to_python(self, value: str) -> str:
        return object_key_from_segment(value)

    def to_url(self, value: str) -> str:
        # reverse() percent-encodes what this returns (spaces, "?", "#", "%", non-ASCII).
        return object_key_to_segment(value)


register_converter(ObjectKeyConverter, "object_key")

app_name = "invocations"

urlpatterns = [
    # OTLP/HTTP's default path, so an exporter's endpoint needs only the host (Restate, a Collector).
    path("v1/traces", traces.traces_receive, name="traces_receive"),
    path("invocations/", lists.invocation_list, name="list"),
    path("invocations/<invocation_id:invocation_id>/", detail.invocation_detail, name="detail"),
    path("invocations/<invocation_id:invocation_id>/children/", detail.tree_children, name="tree_children"),
    path("invocations/<invocation_id:invocation_id>/live/", detail.invocation_live, name="live"),
    path("invocations/<invocation_id:invocation_id>/attach/", attach.invocation_attach, name="attach"),
    path("invocations/<invocation_id:invocation_id>/actions/", actions.action_menu, name="action_menu"),
    path(
        "invocations/<invocation_id:invocation_id>/actions/<str:action_name>/",
        actions.invocation_action,
        name="action",
    ),
    path("services/", service_map.service_map, name="services"),
    path("deadlocks/", deadlocks.deadlocks, name="deadlocks"),
    path("objects/", objects.object_list, name="objects"),
    path("objects/<str:service>/<object_key:key>/", objects.object_detail, name="object"),
    path("audit/", audit.audit_log, name="audit"),
    path("jobs/", jobs.jobs, name="jobs"),
    path("jobs/new/", jobs.job_preview, name="job_preview"),
    path("jobs/<int:job_id>/", jobs.job_detail, name="job"),
    path("jobs/<int:job_id>/stop/", jobs.job_stop, name="job_stop"),
    path("stuck/", stuck.stuck, name="stuck"),
    path("workflows/", workflows.workflow_list, name="workflows"),
    # A workflow id is any string, like an object key: the same escaping carries it.
    path("workflows/<str:service>/<object_key:workflow_id>/", workflows.workflow_detail, name="workflow"),
    path("delayed/", delayed.delayed_list, name="delayed"),
]
