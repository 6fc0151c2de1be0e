from django.urls import path

from invocations.live import consumers

websocket_urlpatterns = [
    path("ws/invocations/", consumers.InvocationListConsumer.as_asgi()),
    path("ws/invocations/<str:invocation_id>/", consumers.InvocationDetailConsumer.as_asgi()),
    path("ws/deadlocks/", consumers.DeadlocksConsumer.as_asgi()),
    path("ws/audit/", consumers.AuditLogConsumer.as_asgi()),
    path("ws/jobs/", consumers.JobsConsumer.as_asgi()),
    path("ws/jobs/<int:job_id>/", consumers.JobConsumer.as_asgi()),
    path("ws/objects/", consumers.ObjectsConsumer.as_asgi()),
    path("ws/object/", consumers.ObjectConsumer.as_asgi()),
    path("ws/stuck/", consumers.StuckConsumer.as_asgi()),
    path("ws/workflows/", consumers.WorkflowsConsumer.as_asgi()),
    path("ws/workflow/", consumers.WorkflowConsumer.as_asgi()),
    path("ws/delayed/", consumers.DelayedConsumer.as_asgi()),
]
