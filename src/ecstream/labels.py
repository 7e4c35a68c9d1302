"""EC numbers → class labels: the one label policy of ecstream.

An EC number has up to four levels (``3.1.1.4``); partial numbers use ``-`` for unknown levels
(``3.1.-.-``) and preliminary numbers an ``n`` prefix at the last level (``3.1.1.n2``). A row may
carry several numbers separated by ``;``, ``; `` or ``,``. A :class:`LabelPolicy` maps a row to one
class at a chosen level (default level 1: the seven EC classes) and says, with a reason, when it
cannot: no number, an invalid number, a number too unspecific for the level, or numbers that fall
into different classes (set aside by default — a single-label classifier cannot learn them).

An :class:`ECVocabulary` is the label space of a full-EC run (``--target ec``): the classes of
each of the four levels seen in a training split, and the multi-label targets of a row, where a
partial number (``3.1.-.-``) supervises only the levels it states.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np

CLASS_NAMES = {
    "1": "Oxidoreductases",
    "2": "Transferases",
    "3": "Hydrolases",
    "4": "Lyases",
    "5": "Isomerases",
    "6": "Ligases",
    "7": "Translocases",
}

_SEPARATORS = re.compile(r"\s*[;,]\s*")
_NUMBER = re.compile(r"^(?:EC[\s:]*)?([1-7])((?:\.(?:\d+|-)){0,2})(\.(?:\d+|-|n\d+))?$", re.I)

# Reasons a labelled row is not used; the same words appear in manifests and reports.
MISSING_EC = "missing_ec"
INVALID_EC = "invalid_ec"
UNSPECIFIC_EC = "ec_not_specific_enough"
MULTIPLE_CLASSES = "multiple_classes"
UNKNOWN_CLASS = "class_not_in_policy"


class ECError(ValueError):
    """An EC number that cannot be parsed."""


@dataclass(frozen=True, order=True)
class ECNumber:
    """One EC number as its (up to four) level strings, e.g. ``("3", "1", "-", "-")``."""

    parts: tuple[str, ...]

    def __str__(self) -> str:
        return ".".join(self.parts)

    def key(self, level: int) -> str | None:
        """The class key at ``level`` (``"3.1"`` at level 2), or ``None`` if not that specific."""
        if level > len(self.parts) or any(p == "-" for p in self.parts[:level]):
            return None
        return ".".join(self.parts[:level])


def parse_ec_number(text: str) -> ECNumber:
    """Parse one EC number; raise :class:`ECError` naming the text if it is not one."""
    match = _NUMBER.match(text.strip())
    if not match:
        raise ECError(f"not an EC number: {text!r}")
    parts = (match.group(1), *(p for p in (match.group(2) or "").split(".") if p))
    if match.group(3):
        parts = (*parts, match.group(3)[1:])
    if "-" in parts:
        first_dash = parts.index("-")
        if any(p != "-" for p in parts[first_dash:]):
            raise ECError(f"not an EC number (a level follows '-'): {text!r}")
    if parts[-1].lower().startswith("n") and len(parts) != 4:
        raise ECError(f"not an EC number (preliminary 'n' only at level 4): {text!r}")
    return ECNumber(tuple(p.lower() if p.lower().startswith("n") else p for p in parts))


@lru_cache(maxsize=1 << 16)
def parse_ec(text: str) -> tuple[ECNumber, ...]:
    """Parse a field holding one or more EC numbers (``"2.7.7.7; 3.1.11.1"``).

    Returns an empty tuple for an empty field; raises :class:`ECError` if any number is invalid.
    Duplicates are removed, order is kept.
    """
    items = [t for t in _SEPARATORS.split(text.strip()) if t]
    numbers = tuple(dict.fromkeys(parse_ec_number(t) for t in items))
    return numbers


def class_keys(ec_text: str, level: int) -> tuple[str, ...]:
    """Distinct class keys of an EC field at ``level``, in order (may raise ECError)."""
    numbers = parse_ec(ec_text)
    return tuple(dict.fromkeys(k for n in numbers if (k := n.key(level)) is not None))


@dataclass(frozen=True)
class LabelPolicy:
    """How a row's EC numbers become one class label (0-based index into ``classes``).

    ``multi="skip"`` sets aside rows whose numbers fall into different classes (the default);
    ``multi="first"`` takes the class of the first number.
    """

    level: int = 1
    classes: tuple[str, ...] = tuple(CLASS_NAMES)
    names: tuple[str, ...] = tuple(CLASS_NAMES.values())
    multi: str = "skip"
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.level not in (1, 2, 3, 4):
            raise ValueError(f"EC level must be 1-4, got {self.level}")
        if self.multi not in ("skip", "first"):
            raise ValueError(f"multi-class policy must be 'skip' or 'first', got {self.multi!r}")
        if len(self.names) != len(self.classes):
            raise ValueError("a label policy needs one name per class")
        object.__setattr__(self, "_index", {k: i for i, k in enumerate(self.classes)})

    @classmethod
    def for_level(
        cls, level: int = 1, keys: Iterable[str] | None = None, multi: str = "skip"
    ) -> LabelPolicy:
        """Level 1 has the seven fixed EC classes; deeper levels take the class keys seen."""
        if level == 1:
            return cls(multi=multi)
        if keys is None:
            raise ValueError(f"EC level {level} needs the class keys (scan the data first)")
        ordered = tuple(sorted(set(keys), key=_key_order))
        return cls(level=level, classes=ordered, names=ordered, multi=multi)

    def same_classes(self, other: LabelPolicy) -> bool:
        """Whether two policies label with the same classes (how they treat rows spanning
        several classes is a choice of each run, not a difference of classes)."""
        return self.level == other.level and self.classes == other.classes

    def keys_of(self, ec_text: str) -> tuple[str, ...]:
        """The distinct class keys of a field at this policy's level (may raise ECError)."""
        return class_keys(ec_text, self.level)

    def assign(self, ec_text: str | None) -> tuple[int, None] | tuple[None, str]:
        """``(label, None)`` for a usable row, or ``(None, reason)`` for one set aside."""
        if ec_text is None or not ec_text.strip():
            return None, MISSING_EC
        return _assign(self, ec_text)

    def to_dict(self) -> dict:
        return {
            "level": self.level,
            "classes": list(self.classes),
            "names": list(self.names),
            "multi": self.multi,
        }

    @classmethod
    def from_dict(cls, d: dict) -> LabelPolicy:
        return cls(
            level=d["level"], classes=tuple(d["classes"]), names=tuple(d["names"]), multi=d["multi"]
        )


@lru_cache(maxsize=1 << 16)
def _assign(policy: LabelPolicy, ec_text: str) -> tuple[int, None] | tuple[None, str]:
    try:
        keys = policy.keys_of(ec_text)
    except ECError:
        return None, INVALID_EC
    if not keys:
        return None, UNSPECIFIC_EC
    if len(keys) > 1 and policy.multi == "skip":
        return None, MULTIPLE_CLASSES
    label = policy._index.get(keys[0])
    if label is None:
        return None, UNKNOWN_CLASS
    return label, None


def _key_order(key: str) -> tuple:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in key.split("."))


LEVELS = 4


def level_keys(ec_text: str, level: int) -> tuple[str, ...]:
    """The distinct EC prefixes of a field at ``level`` (numbers not stating it add none)."""
    try:
        return class_keys(ec_text, level)
    except ECError:
        return ()


@lru_cache(maxsize=1 << 16)
def stated_levels(ec_text: str) -> int:
    """How many levels every number of a field states (0 for an empty or invalid field).

    ``2.7.7.7; 3.1.-.-`` states 2: deeper levels are unknown for this row, so they neither
    reward nor penalise a prediction there.
    """
    try:
        numbers = parse_ec(ec_text)
    except ECError:
        return 0
    if not numbers:
        return 0
    return min(sum(1 for p in n.parts if p != "-") for n in numbers)


@dataclass(frozen=True)
class ECVocabulary:
    """The classes of each EC level in a training split, and multi-label targets of rows.

    Level 1 always holds the seven EC classes in their fixed order (so level-1 indices equal
    those of a ``--target class`` run); levels 2–4 hold the prefixes seen in training, sorted.
    ``counts`` is the number of training records of every class (for reports on rare ones).
    """

    classes: tuple[tuple[str, ...], ...]
    counts: tuple[tuple[int, ...], ...]
    _memo: dict[str, tuple[list[int], int]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> ECVocabulary:
        seen = [Counter() for _ in range(LEVELS)]
        for text in texts:
            for level in range(1, LEVELS + 1):
                seen[level - 1].update(level_keys(text, level))
        classes = [tuple(CLASS_NAMES)] + [tuple(sorted(c, key=_key_order)) for c in seen[1:]]
        counts = tuple(tuple(seen[k][c] for c in classes[k]) for k in range(LEVELS))
        return cls(tuple(classes), counts)

    @classmethod
    def first_level(cls) -> ECVocabulary:
        """The seven classes alone: the label space of a ``--target class`` run."""
        return cls((tuple(CLASS_NAMES),), ((0,) * len(CLASS_NAMES),))

    @property
    def depth(self) -> int:
        """Levels this vocabulary has: 4 for a full-EC run, 1 for the seven classes."""
        return len(self.classes)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.classes)

    @cached_property
    def offsets(self) -> np.ndarray:
        """Where each level's classes start in the concatenated outputs ([5])."""
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    @cached_property
    def _index(self) -> list[dict[str, int]]:
        return [{c: i for i, c in enumerate(level)} for level in self.classes]

    def index(self, level: int, key: str) -> int | None:
        """Index of a class within its level, or None if training never saw it."""
        return self._index[level - 1].get(key)

    @cached_property
    def parents(self) -> list[np.ndarray]:
        """For levels 2–4: the index of each class's parent in the level above."""
        out = [np.zeros(0, dtype=np.int64)]
        for level in range(2, self.depth + 1):
            up = self._index[level - 2]
            out.append(
                np.array([up[c.rsplit(".", 1)[0]] for c in self.classes[level - 1]], np.int64)
            )
        return out

    def targets(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Multi-hot targets ``uint8 [B, sum(sizes)]`` and known levels ``bool [B, depth]``.

        A level is known for a row when every EC number of the row states it; a class that
        training never saw has no output and is left out of the targets.
        """
        out = np.zeros((len(texts), int(self.offsets[-1])), dtype=np.uint8)
        known = np.zeros((len(texts), self.depth), dtype=bool)
        for row, text in enumerate(texts):
            columns, depth = self._columns(text)
            out[row, columns] = 1
            known[row, :depth] = True
        return out, known

    def _columns(self, text: str) -> tuple[list[int], int]:
        """Output columns of a field's classes, and its known depth (memoised per field)."""
        if (hit := self._memo.get(text)) is not None:
            return hit
        columns = []
        for level in range(1, self.depth + 1):
            base = int(self.offsets[level - 1])
            for key in level_keys(text, level):
                if (k := self.index(level, key)) is not None:
                    columns.append(base + k)
        self._memo[text] = (columns, stated_levels(text))
        return self._memo[text]

    def rare(self, below: int = 5) -> list[int]:
        """Classes per level with fewer than ``below`` training records."""
        return [sum(1 for n in level if n < below) for level in self.counts]

    def to_dict(self) -> dict:
        return {
            "classes": [list(c) for c in self.classes],
            "counts": [list(c) for c in self.counts],
        }

    @classmethod
    def from_dict(cls, d: dict) -> ECVocabulary:
        return cls(
            tuple(tuple(c) for c in d["classes"]),
            tuple(tuple(int(n) for n in c) for c in d["counts"]),
        )
