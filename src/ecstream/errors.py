"""Errors of the store layer, defined below every module that raises them.

:mod:`ecstream.store` re-exports both; import them from there.
"""

from __future__ import annotations


class StoreError(Exception):
    """A store that cannot be built or opened, with the reason."""


class IntegrityError(StoreError):
    """Stored bytes or a manifest that are not what was written: damaged, truncated, missing,
    or pointing outside their store. The message is one line and names the file."""
