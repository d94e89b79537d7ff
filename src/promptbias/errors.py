"""User-facing errors.

Raise :class:`UserError` for anything the user can fix (bad params, missing dataset, corrupt image,
bad checksum, wrong weights file). The CLI prints it as one line — ``error: <message>`` — and exits
with code 2, without a traceback unless ``--debug`` is given. The message names the thing and the fix.
"""


class UserError(Exception):
    """An error caused by user input; its message is one line naming the problem and the fix."""

    exit_code = 2
