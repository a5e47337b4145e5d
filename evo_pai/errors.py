"""The one exception type the CLI turns into a one-line message and exit code 2."""


class EvoPaiError(Exception):
    """A user-facing error: bad config, missing data, corrupt checkpoint.

    The message must name the offending field or file and say how to fix it.
    """
