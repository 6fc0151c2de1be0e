"""The audit log is append-only in PostgreSQL itself, not only by the app's lack of paths."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from invocations.mirror.actions import Action
from invocations.records.models import AuditEntry, AuditKind

pytestmark = pytest.mark.django_db


def make_entry() -> AuditEntry:
    return AuditEntry.objects.create(
        username="alice",
        kind=AuditKind.SINGLE,
        action=Action.CANCEL,
        targets=["inv_1aaaaaaaaaaaaaaaaaaaa"],
        request={"method": "PATCH", "path": "/invocations/inv_1aaaaaaaaaaaaaaaaaaaa/cancel"},
        response={"outcome": "done", "http_status": 202},
        outcome="done",
    )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE invocations_auditentry SET outcome = 'forged' WHERE id = %s",
        "UPDATE invocations_auditentry SET username = 'mallory' WHERE id = %s",
        "DELETE FROM invocations_auditentry WHERE id = %s",
    ],
)
def test_the_database_refuses_to_change_or_delete_an_audit_entry(statement: str) -> None:
    entry = make_entry()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, [entry.id])
    entry.refresh_from_db()
    assert (entry.outcome, entry.username) == ("done", "alice")


def test_the_orm_cannot_update_or_delete_an_audit_entry_either() -> None:
    entry = make_entry()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEntry.objects.filter(id=entry.id).update(outcome="forged")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        entry.delete()
    assert AuditEntry.objects.filter(id=entry.id, outcome="done").exists()


def test_entries_can_still_be_appended() -> None:
    make_entry()
    make_entry()
    assert AuditEntry.objects.count() == 2
