"""Errors a user can fix. The CLI prints them as one line and exits 2, never with a traceback."""


class UserError(Exception):
    """Bad input or setup: the message names the problem and the fix, in one line."""


def first_line(exc: BaseException) -> str:
    """What a one-line error quotes of a library's exception: its message's first line, or its type's name."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def raised_as(exc: BaseException, *names: str) -> bool:
    """Whether ``exc`` is (a subclass of) a library exception class named in ``names``, asked by name so that the
    library need not be imported (or installed) to recognise its errors."""
    return any(cls.__name__ in names for cls in type(exc).__mro__)
