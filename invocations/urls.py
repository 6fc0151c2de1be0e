from django.urls import path

from invocations.views import detail, lists, service_map

app_name = "invocations"

# `path`, not `str`: ids come from Restate's data, and reversing one with a "/" in it
# must give a link (the view then answers 400 "not an invocation id"), never a
# NoReverseMatch that turns a whole page into a 500. The children route comes first
# so its "/children/" suffix is not read as part of an id.
urlpatterns = [
    path("invocations/", lists.invocation_list, name="list"),
    path("invocations/<path:invocation_id>/children/", detail.tree_children, name="tree_children"),
    path("invocations/<path:invocation_id>/", detail.invocation_detail, name="detail"),
    path("services/", service_map.service_map, name="services"),
]
