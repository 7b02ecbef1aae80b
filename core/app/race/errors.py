"""The race's errors: each message is for the player, shown as it is."""

from core.errors import UserError


class RaceError(UserError, ValueError):
    """A race that cannot start or go on; the message is for the player."""


class RaceFull(RaceError):
    """Every race slot is taken; the player should wait and try again."""
