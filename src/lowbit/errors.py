"""The one exception type users see.

Every problem caused by input (a bad file, a wrong option, unusable data) is raised as
``LowbitError`` with a single line that names the problem and the fix. The CLI prints that line
and exits with status 2; anything else escaping is a bug in lowbit.
"""


class LowbitError(Exception):
    """A problem with the user's input, with a message that says how to fix it."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when there is none), for one-line errors."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
