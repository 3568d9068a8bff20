"""Errors for user mistakes: the CLI prints them as one line, without a traceback."""


class XPLError(Exception):
    """A problem the user can fix: a bad config key, a missing file, bad data."""


class DataError(XPLError):
    """Input data (vocabulary, annotations, shards) is missing or malformed."""
