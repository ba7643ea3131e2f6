"""Errors a user can fix themselves: bad input files, bad configuration, missing settings."""


class UserError(Exception):
    """A problem with the user's input; the message names the file, line and field.

    ``kotomamba`` subcommands print it (no traceback) and exit with status 2.
    """


class ReportedByRankZero(UserError):
    """Rank 0's error, shared with every other rank of a job: only rank 0 prints it (all exit 2)."""
