"""Errors a user can fix. The CLI prints them as one line and exits 2, never with a traceback."""


class UserError(Exception):
    """Bad input or setup: the message names the problem and the fix, in one line."""
