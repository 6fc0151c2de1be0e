"""The synthetic-data command behind the page benchmark, on real PostgreSQL."""

from __future__ import annotations

from django.core.management import call_command
from django.db.models import F

from invocations.models import Invocation, InvocationEdge
from tests.factories import create_invocation


def test_generates_consistent_trees_and_deletes_only_its_rows(transactional_db: None) -> None:
    create_invocation(id="inv_1realAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    call_command("generate_invocations", count=3000, big_tree=500, seed=7, verbosity=0)
    generated = Invocation.objects.filter(id__startswith="inv_1gen")
    assert generated.count() == 3000
    children = generated.filter(parent_id__isnull=False)
    # Every child's parent exists and shares its root; every child has the edge that created it.
    assert not children.exclude(parent_id__in=generated.values("id")).exists()
    assert not children.exclude(root_id__in=generated.filter(parent_id__isnull=True).values("id")).exists()
    assert InvocationEdge.objects.filter(callee_id__in=children.values("id")).count() == children.count()
    biggest = max(
        generated.values_list("root_id", flat=True).distinct(), key=lambda r: generated.filter(root_id=r).count()
    )
    assert generated.filter(root_id=biggest).count() == 500
    # Nothing generated asks the sync for a journal Restate never had.
    assert not generated.filter(journal_size__gt=F("journal_synced_size")).exists()

    call_command("generate_invocations", delete=True, verbosity=0)
    assert not Invocation.objects.filter(id__startswith="inv_1gen").exists()
    assert not InvocationEdge.objects.filter(caller_id__startswith="inv_1gen").exists()
    assert Invocation.objects.filter(id="inv_1realAAAAAAAAAAAAAAAAAAAAAAAAAAAA").exists()
