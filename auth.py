"""Who is asking: the one place where the current user is known.

Authentication is not built yet: every request is the anonymous operator,
who sees everything. Views and streams ask current_viewer() and filter
through Viewer, so tokens slot in here without touching them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Viewer:
    """A reader: its email, or None for one who may see every user's tasks."""

    email: str | None
    scopes: frozenset[str] = frozenset()

    @property
    def only_email(self) -> str | None:
        """The user_email this viewer is limited to, or None when it sees all."""
        return None if "admin" in self.scopes else self.email

    def may_see(self, user_email: str) -> bool:
        only = self.only_email
        return only is None or only == user_email


EVERYONE = Viewer(email=None, scopes=frozenset({"admin"}))


def current_viewer() -> Viewer:
    """The viewer of the current request or Socket.IO connection."""
    return EVERYONE
