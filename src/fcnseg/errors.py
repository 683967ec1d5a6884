"""The one exception type for mistakes a user can make (bad file, bad option, bad data).

Its message names the file or option at fault and says how to fix it. The CLI prints it on one
line and exits with status 2; library callers can catch it like any other exception.
"""


class FcnsegError(Exception):
    """A user-facing error: the message is one line naming the culprit and the fix."""
