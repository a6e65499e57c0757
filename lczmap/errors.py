"""The one exception type whose message the CLI prints as a single line to the user."""


class LczmapError(Exception):
    """A problem with the user's input or environment, explained in one line (no traceback)."""
