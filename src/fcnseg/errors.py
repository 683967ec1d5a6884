"""The one exception type for mistakes a user can make (bad file, bad option, bad data).

Its message names the file or option at fault and says how to fix it. The CLI prints it on one
line and exits with status 2; library callers can catch it like any other exception.
"""


class FcnsegError(Exception):
    """A user-facing error: the message is one line naming the culprit and the fix."""


def did_you_mean(name: str, choices) -> str:
    """ " (did you mean X or Y?)" for the registered names closest to a mistyped ``name``, else "".
    The one suggestion rule for every place that looks a name up (weights, backbones, datasets)."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""
