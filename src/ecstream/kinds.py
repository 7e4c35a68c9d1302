"""What counts as a whole or a real number in an option: numpy's too (a user's arrays give
them), never a bool (``True`` is an ``int`` to Python, not a count to a user)."""

from __future__ import annotations

import numbers


def is_whole(value: object) -> bool:
    """A whole number: Python's or numpy's, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A real number: Python's or numpy's (whole ones too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
