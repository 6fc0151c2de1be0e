from django.urls import path

from invocations.views import detail, lists, service_map

app_name = "invocations"

urlpatterns = [
    path("invocations/", lists.invocation_list, name="list"),
    path("invocations/<str:invocation_id>/", detail.invocation_detail, name="detail"),
    path("invocations/<str:invocation_id>/children/", detail.tree_children, name="tree_children"),
    path("invocations/<str:invocation_id>/live/", detail.invocation_live, name="live"),
    path("services/", service_map.service_map, name="services"),
]
