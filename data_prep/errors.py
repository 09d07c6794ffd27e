"""The one error data_prep shows the user: a single line that says what and what to do."""


class PrepError(Exception):
    """A problem with the input, the options or the output directory (one-line message)."""
