"""`python manage.py rebuild_rollups`: count every hour of the service map's rollups again
from every invocation and edge (after rows were written behind the sync engine's back;
the worker, `refresh_rollups`, keeps them current otherwise)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from invocations.mirror import rollups


class Command(BaseCommand):
    help = "Rebuild the service map's hourly rollups from all rows."

    def handle(self, *args: Any, **options: Any) -> None:
        report = rollups.rebuild()
        self.stdout.write(f"counted {report.hours} hours in {report.seconds:.2f} s ({report.pending} marked meanwhile)")
