"""Counting what was not used, and why: nothing is dropped silently.

Every reader and every stage that sets a record aside calls :meth:`Skips.add` with a reason and
the place (file and line, or record). The counts go into manifests and reports; the first few
examples of each reason are kept so an error message can point at the exact line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

EXAMPLES_PER_REASON = 5


@dataclass
class Skips:
    """Counts of set-aside records per reason, with the first few places for each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    #: Input lines ``[first, end)`` this count answers for (``end`` None: to the end), e.g.
    #: one part of a sharded prediction; a place on another line is not counted here.
    lines_window: tuple[int, int | None] | None = None

    def add(
        self, reason: str, where: str, detail: str = "", n: int = 1, line: int | None = None
    ) -> None:
        if line is not None and self.lines_window is not None:
            first, end = self.lines_window
            if line < first or (end is not None and line >= end):
                return
        self.counts[reason] += n
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(f"{where}: {detail}" if detail else where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {
            reason: {"count": self.counts[reason], "first": list(self.examples.get(reason, []))}
            for reason in sorted(self.counts)
        }

    def lines(self) -> list[str]:
        """One readable line per reason, with its first example."""
        out = []
        for reason, info in self.to_dict().items():
            first = f" (first: {info['first'][0]})" if info["first"] else ""
            out.append(f"{info['count']:>9,}  {reason}{first}")
        return out
