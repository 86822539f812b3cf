"""Errors a user can act on: bad input, missing or unreadable files.

The command line prints these as one line (no traceback) and exits with
status 2; library callers catch them by class.
"""


class WsssFastError(Exception):
    """Base class of the errors that describe a problem with the user's input."""


class DataError(WsssFastError):
    """A file is missing, unreadable or holds values outside what is allowed."""


class UsageError(WsssFastError):
    """Arguments that are each valid but cannot work together."""


class MissingDependencyError(WsssFastError):
    """An optional dependency (pydensecrf, OpenCV's contrib modules) is not
    installed; the message says what to install."""
