"""The one exception type the CLI turns into a one-line message and exit code 2."""
from __future__ import annotations

import traceback


class EvoPaiError(Exception):
    """A user-facing error: bad config, missing data, corrupt checkpoint.

    The message must name the offending field or file and say how to fix it.
    """


def brief(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` on one line, and the file:line it came from (for errors in a user's code)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())[:limit]
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    return f"{text} (at {frames[-1].filename}:{frames[-1].lineno})" if frames else text
