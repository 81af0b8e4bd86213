"""The one exception type that reaches the user as `kiwi: <message>`."""


class KiwiError(Exception):
    """A problem the user can act on. The message is one line and says what to do."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
