"""One exception type for every user-facing failure; the CLI prints it as one line and exits non-zero."""


class SpecdecError(Exception):
    """A problem with the user's input (file, text, option), stated in one line."""
