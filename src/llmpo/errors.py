"""The library's own exception types.

Every message names the field or object at fault, the value that was given and
what was expected, so that a user can fix the input from the message alone.
"""


class LlmpoError(Exception):
    """Base class of every error the library raises on purpose."""


class InputError(LlmpoError, ValueError):
    """Bad input from the user: a file, an argument or a value out of range.

    The command line turns it into one line on standard error and exit status 2.
    """


class BackendError(LlmpoError):
    """A backend could not produce a generation, after its retries."""


class JudgeError(LlmpoError):
    """A judge could not produce a verdict, after its retries."""


class StoreError(LlmpoError):
    """The run store is missing, unreadable or inconsistent."""
