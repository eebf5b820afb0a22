"""The one exception type a user sees.

A `ScratchError` is a mistake the user can fix (bad argument, missing file, mismatched tokenizer).
The CLI prints its message on one line and exits with code 2; anything else is a bug and keeps its
traceback. Internal invariants use `assert`, not this.
"""


class ScratchError(Exception):
    """A user-facing error: the message says what is wrong, where, and what to do."""
