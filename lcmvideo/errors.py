"""The one exception type users see: a message and the exit code it maps to."""

USAGE = 2  # the command, a flag, a schedule file or a model path is wrong: fix the input
RUNTIME = 1  # the input looked right but the work failed: a file unreadable, a device error, a full disk


class LcmvideoError(Exception):
    """A user-facing error: printed as one line, no traceback."""

    def __init__(self, message: str, exit_code: int = USAGE):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


def usage(message: str) -> LcmvideoError:
    return LcmvideoError(message, USAGE)


def runtime(message: str) -> LcmvideoError:
    return LcmvideoError(message, RUNTIME)
