"""The one exception type users see.

Every problem caused by input (a bad file, a wrong option, unusable data) is raised as
``LowbitError`` with a single line that names the problem and the fix. The CLI prints that line
and exits with status 2; anything else escaping is a bug in lowbit.
"""


class LowbitError(Exception):
    """A problem with the user's input, with a message that says how to fix it."""
