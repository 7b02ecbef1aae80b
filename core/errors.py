"""The one base of every error whose message is meant for the user as it is.

A ``UserError`` says what was wrong with what the user gave (a flag, a form field, a file or folder, a
player name, a track) and how to fix it. The CLI prints it as one ``error:`` line, a background job
reports it as its message and the pages show it in a box; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or files; the message names the bad value and the fix."""


# OS errors a user can fix (a missing, misnamed or unwritable path; a full disk) count as theirs too.
USER_OS_ERRORS = (FileNotFoundError, NotADirectoryError, PermissionError)


def is_user_error(error: BaseException) -> bool:
    """Whether ``error``'s message is for the user as it is (no traceback)."""
    return isinstance(error, (UserError, *USER_OS_ERRORS))
