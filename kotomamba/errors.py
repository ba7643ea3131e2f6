"""Errors a user can fix themselves: bad input files, bad configuration, missing settings."""


class UserError(Exception):
    """A problem with the user's input; the message names the file, line and field.

    ``kotomamba`` subcommands print it (no traceback) and exit with status 2.
    """
