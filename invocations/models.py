"""Django loads an app's models from `<app>.models`; ours live in the mirror layer."""

from invocations.mirror.models import (
    Deployment,
    DrawingCache,
    EdgeKind,
    Invocation,
    InvocationEdge,
    JournalEntry,
    ObjectLock,
    QueuedInvocation,
    RollupDirtyHour,
    RollupState,
    Service,
    ServiceMapEdgeHour,
    ServiceMapHour,
    ServiceMapPair,
    SyncState,
    WorkflowPromise,
)

__all__ = [
    "Deployment",
    "DrawingCache",
    "EdgeKind",
    "Invocation",
    "InvocationEdge",
    "JournalEntry",
    "ObjectLock",
    "QueuedInvocation",
    "RollupDirtyHour",
    "RollupState",
    "Service",
    "ServiceMapEdgeHour",
    "ServiceMapHour",
    "ServiceMapPair",
    "SyncState",
    "WorkflowPromise",
]
