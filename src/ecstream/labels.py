"""EC numbers → class labels: the one label policy of ecstream.

An EC number has up to four levels (``3.1.1.4``); partial numbers use ``-`` for unknown levels
(``3.1.-.-``) and preliminary numbers an ``n`` prefix at the last level (``3.1.1.n2``). A row may
carry several numbers separated by ``;``, ``; `` or ``,``. A :class:`LabelPolicy` maps a row to one
class at a chosen level (default level 1: the seven EC classes) and says, with a reason, when it
cannot: no number, an invalid number, a number too unspecific for the level, or numbers that fall
into different classes (set aside by default — a single-label classifier cannot learn them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

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
