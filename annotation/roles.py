"""The three roles, as Django groups, and the questions pages ask about them."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group

RATER = "rater"  # rates the campaigns they were invited to; sees only their own items
RESEARCHER = "researcher"  # configures campaigns and sees their progress and data
ADMIN = "admin"  # everything: every campaign, rounds, roles
ROLES = (RATER, RESEARCHER, ADMIN)

User = AbstractBaseUser | AnonymousUser


def _groups(user: User) -> set[str]:
    if not user.is_authenticated:
        return set()
    cached = getattr(user, "_role_names", None)
    if cached is None:
        cached = set(user.groups.values_list("name", flat=True))
        user._role_names = cached
    return cached


def is_admin(user: User) -> bool:
    return bool(user.is_authenticated and (user.is_superuser or ADMIN in _groups(user)))


def is_researcher(user: User) -> bool:
    return is_admin(user) or RESEARCHER in _groups(user)


def role_add(user, role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    group, _ = Group.objects.get_or_create(name=role)
    user.groups.add(group)
    if hasattr(user, "_role_names"):
        del user._role_names
