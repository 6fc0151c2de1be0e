from django.urls import path

from invocations import views

app_name = "invocations"

urlpatterns = [
    path("invocations/", views.invocation_list, name="list"),
]
