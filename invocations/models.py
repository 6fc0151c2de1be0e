"""Django loads an app's models from `<app>.models`; ours live in the mirror layer."""

from invocations.mirror.models import (
    Deployment,
    EdgeKind,
    Invocation,
    InvocationEdge,
    JournalEntry,
    ObjectLock,
    QueuedInvocation,
    Service,
    SyncState,
    WorkflowPromise,
)

__all__ = [
    "Deployment",
    "EdgeKind",
    "Invocation",
    "InvocationEdge",
    "JournalEntry",
    "ObjectLock",
    "QueuedInvocation",
    "Service",
    "SyncState",
    "WorkflowPromise",
]
