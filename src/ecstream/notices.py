"""How a notice (a warning) is told: one line naming the file it concerns, with no source line
(``warnings.warn_explicit`` at line 0), and, where asked, once per process for that file."""

from __future__ import annotations

import os
import warnings

_given: set[tuple[type[Warning], str]] = set()  # (category, real path) of notices given once


def notify(
    path: str | os.PathLike, message: str, category: type[Warning], once: bool = False
) -> None:
    """Warn ``message`` about ``path``; ``once``: not again in this process for that file."""
    if once:
        key = (category, os.path.realpath(path))
        if key in _given:
            return
        _given.add(key)
    warnings.warn_explicit(message, category, str(path), 0)
