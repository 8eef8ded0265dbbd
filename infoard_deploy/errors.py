"""User-facing errors.

Everything a user can get wrong (a missing file, a bad flag value, a checkpoint of another
architecture) is raised as :class:`UserError`. The CLI turns it into one red line and exit code 2;
library callers can catch it. Internal bugs stay ordinary exceptions.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""

    exit_code = 2

    def __init__(self, message: str):
        # One line only: the CLI prints str(self) as is.
        super().__init__(" ".join(str(message).split()))


class GateFailure(Exception):
    """A verification gate failed (exit code 1); the report says which."""

    exit_code = 1
