"""The user-facing error type.

Anything raised as ``UserError`` is bad input the user can fix: the CLI prints
its message as one ``error:`` line and exits with status 2 (no traceback).
Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input; the message must name the file/column/option and the fix."""
