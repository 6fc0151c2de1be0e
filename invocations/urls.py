from urllib.parse import quote, unquote

from django.urls import path, register_converter

from invocations.views import actions, attach, audit, detail, jobs, lists, service_map, stuck


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

app_name = "invocations"

urlpatterns = [
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
    path("audit/", audit.audit_log, name="audit"),
    path("jobs/", jobs.jobs, name="jobs"),
    path("jobs/new/", jobs.job_preview, name="job_preview"),
    path("jobs/<int:job_id>/", jobs.job_detail, name="job"),
    path("jobs/<int:job_id>/stop/", jobs.job_stop, name="job_stop"),
    path("stuck/", stuck.stuck, name="stuck"),
]
