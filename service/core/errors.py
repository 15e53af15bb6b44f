"""Errors a user can fix. The CLI prints them without a traceback (exit code 2)."""


class UserError(Exception):
    """Something the user can fix; the message says what and how."""


class SweepBusy(UserError):
    """Another driver is running this sweep; nothing was written."""


class DataFormatError(ValueError):
    """A dataset's files are not in the format its ``data.name`` says (trainer/data/formats.py):
    reading them again gives the same error, so the trial is not retried."""


class FinalTrialError(Exception):
    """A trial failed with an error no restart can fix (trainer/trainable.py's ``final_error``
    decides which): raised ``from`` the original exception, it carries that exception's type name
    and message, and tells the driver not to retry the trial (trainer/driver/retries.py).
    Pickles by its three strings, so it crosses Ray's processes intact."""

    def __init__(self, type_name: str, message: str, reason: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.message, self.reason = type_name, message, reason

    def __reduce__(self):
        return (self.__class__, (self.type_name, self.message, self.reason))


class TrialRejected(FinalTrialError):
    """The trial's config breaks a constraint known before training (its parameter count): raised
    before any data is loaded (trainer/loop.py). Final like the others (the same config breaks it
    again), but no failure: the driver records the trial as ``rejected``, with ``message`` (which
    constraint, by how much) as the reason, not as an error."""

    def __init__(self, type_name: str = "TrialRejected", message: str = "", reason: str = "breaks a constraint"):
        super().__init__(type_name, message, reason)


class SweepStopped(Exception):
    """The driver stopped the sweep before it finished, and recorded why (``status`` in the
    record: interrupted or failed). ``exit_code``: what sweepctl exits with (130 SIGINT, 143
    SIGTERM, 1 otherwise). The message says what happened and how to continue."""

    def __init__(self, message: str, *, status: str, exit_code: int):
        super().__init__(message)
        self.status, self.exit_code = status, exit_code
