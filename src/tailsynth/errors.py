"""The one exception type that stage scripts turn into a one-line message and a non-zero exit."""


class TailsynthError(Exception):
    """A problem with the user's input (a param, a file, a model id) that the user can fix.

    The message names the param or file and says what to do.
    """
