"""Who may act: two roles, kept as Django groups with one permission.

Viewers see everything and may attach; operators may also act (single actions,
bulk jobs). Superusers hold every permission, so they act too.
"""

from __future__ import annotations

from enum import StrEnum

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, AnonymousUser, Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import transaction

OPERATE_PERMISSION = "invocations.operate"


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"

    @property
    def group_name(self) -> str:
        return f"{self.value}s"


class UnknownUser(LookupError):
    pass


class NotAllowed(PermissionError):
    """The user's role does not allow this (a viewer acting, an anonymous attach)."""


def user_can_operate(user: AbstractUser | AnonymousUser) -> bool:
    return bool(user.is_authenticated and user.has_perm(OPERATE_PERMISSION))


def user_role(user: AbstractUser | AnonymousUser) -> Role | None:
    if not user.is_authenticated:
        return None
    return Role.OPERATOR if user_can_operate(user) else Role.VIEWER


def _groups() -> dict[Role, Group]:
    from invocations.records.models import AuditEntry

    content_type = ContentType.objects.get_for_model(AuditEntry)
    permission, _ = Permission.objects.get_or_create(
        codename="operate",
        content_type=content_type,
        defaults={"name": "Can act on invocations in Restate (operator role)"},
    )
    groups = {role: Group.objects.get_or_create(name=role.group_name)[0] for role in Role}
    groups[Role.OPERATOR].permissions.add(permission)
    groups[Role.VIEWER].permissions.remove(permission)
    return groups


@transaction.atomic
def user_set_role(*, username: str, role: Role) -> AbstractUser:
    user_model = get_user_model()
    try:
        user = user_model.objects.get(username=username)
    except user_model.DoesNotExist as exc:
        raise UnknownUser(f"no user named {username!r}") from exc
    groups = _groups()
    user.groups.remove(*groups.values())
    user.groups.add(groups[role])
    return user


@transaction.atomic
def user_create(*, username: str, password: str | None, role: Role) -> AbstractUser:
    user = get_user_model().objects.create_user(username=username, password=password)
    return user_set_role(username=user.username, role=role)
