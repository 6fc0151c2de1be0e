"""Django loads an app's models from `<app>.models`; ours live in the mirror layer
(Restate's state) and the records layer (what the dashboard's users did)."""

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
    SyncHint,
    SyncState,
    WorkflowPromise,
)
from invocations.records.models import AttachWait, AuditEntry, BulkJob, BulkJobItem

__all__ = [
    "AttachWait",
    "AuditEntry",
    "BulkJob",
    "BulkJobItem",
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
    "SyncHint",
    "SyncState",
    "WorkflowPromise",
]
