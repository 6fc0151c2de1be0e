"""`python manage.py dashboard_user`: create users with a role, change a role, list them.

manage.py dashboard_user create alice --role operator   (asks for the password,
                                                         or reads DASHBOARD_PASSWORD)
manage.py dashboard_user set-role alice viewer
manage.py dashboard_user list
"""

from __future__ import annotations

import getpass
import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError

from invocations.operations.roles import Role, UnknownUser, user_create, user_role, user_set_role

ROLES = [role.value for role in Role]


class Command(BaseCommand):
    help = "Create dashboard users with a role (viewer or operator), change a user's role, list users."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True)
        create = sub.add_parser("create", help="Create a user with a role.")
        create.add_argument("username")
        create.add_argument("--role", choices=ROLES, required=True)
        create.add_argument(
            "--no-password", action="store_true", help="Create the user without a usable password (set it later)."
        )
        set_role = sub.add_parser("set-role", help="Change a user's role.")
        set_role.add_argument("username")
        set_role.add_argument("role", choices=ROLES)
        sub.add_parser("list", help="List users and their roles.")

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        if subcommand == "create":
            password = None if options["no_password"] else self._password()
            try:
                user_create(username=options["username"], password=password, role=Role(options["role"]))
            except IntegrityError as exc:
                raise CommandError(f"a user named {options['username']!r} already exists") from exc
            self.stdout.write(f"created {options['username']} ({options['role']})")
        elif subcommand == "set-role":
            try:
                user_set_role(username=options["username"], role=Role(options["role"]))
            except UnknownUser as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"{options['username']} is now {options['role']}")
        else:
            for user in get_user_model().objects.order_by("username"):
                self.stdout.write(f"{user.get_username()}\t{user_role(user)}")

    def _password(self) -> str:
        if password := os.environ.get("DASHBOARD_PASSWORD"):
            return password
        first = getpass.getpass("Password: ")
        if not first or first != getpass.getpass("Password (again): "):
            raise CommandError("the passwords were empty or did not match")
        return first
