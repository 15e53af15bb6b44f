"""Errors a user can fix. The CLI prints them without a traceback (exit code 2)."""


class UserError(Exception):
    """Something the user can fix; the message says what and how."""


class SweepBusy(UserError):
    """Another driver is running this sweep; nothing was written."""
