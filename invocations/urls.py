from django.urls import path

from invocations.views import lists

app_name = "invocations"

urlpatterns = [
    path("invocations/", lists.invocation_list, name="list"),
]
