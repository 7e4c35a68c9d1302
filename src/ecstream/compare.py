"""Two evaluations of the same proteins side by side: which run is right more often, and by how
much, with an interval that resamples whole families (:func:`ecstream.families.paired_difference`).

Each evaluation keeps the class of every record it measured (``classes.npz``, see
:data:`ecstream.evaluate.CLASS_ROWS`), so two runs are compared protein by protein without
scoring again; the sequences' hashes must agree, so a comparison of different test sets is
refused rather than reported. Paired, the noise both runs share (an easy or a hard family)
cancels, which two separate intervals cannot show.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import OutputIsInputError, OutputRefusedError, read_json, write_json
from .evaluate import CLASS_ROWS, seen_line
from .families import paired_difference
from .hashing import file_sha256
from .identity import BANDS, identity_bands
from .runs import RunError, check_outside_runs_and_stores

_ARRAYS = {
    "hash": "u", "true": "i", "predicted": "i", "identity": "f", "family": "i", "level_top": "i",
}  # fmt: skip


class CompareError(RunError):
    """Two evaluations that cannot be compared, or one that cannot be read."""


def compare(
    a: str | os.PathLike, b: str | os.PathLike, out: str | os.PathLike | None = None
) -> dict:
    """Compare the evaluation folders ``a`` and ``b`` (``ecstream evaluate --out``) on the
    records in one class both measured: ``all`` and, where both runs have the same identities
    to their training split, each band (``bands``) give :func:`paired_difference` of A's and
    B's class accuracy; between two full-EC runs, ``levels`` gives it for the top prediction
    at each EC level, on the same proteins (for a homolog's run, level 1's top can differ from
    its class when the hit spans several classes). Its interval needs the families of ``evaluate
    --families`` (either evaluation's). ``out``: also written there as JSON (atomically),
    which may lie neither in a run, a store nor either evaluation (an evaluation's folder is
    replaced whole)."""
    if out is not None:
        _check_out(Path(out), Path(a), Path(b))
    meta_a, rows_a = _read(Path(a))
    meta_b, rows_b = _read(Path(b))
    n_a, n_b = len(rows_a["hash"]), len(rows_b["hash"])
    if n_a != n_b or not np.array_equal(rows_a["hash"], rows_b["hash"]):
        raise CompareError(
            f"{a} and {b} measured different proteins ({n_a:,} and {n_b:,} records in one "
            "class, not the same sequences in the same order): evaluate both runs on the same "
            "store split or file"
        )
    if not np.array_equal(rows_a["true"], rows_b["true"]):
        raise CompareError(
            f"{a} and {b} measured the same sequences with different classes: the runs' "
            "classes or the files' labels differ"
        )
    family = rows_a.get("family", rows_b.get("family"))
    if (
        "family" in rows_a
        and "family" in rows_b
        and not np.array_equal(rows_a["family"], rows_b["family"])
    ):
        raise CompareError(
            f"{a} and {b} put these proteins in different families (other clustering settings "
            "or MMseqs2 versions): evaluate one of them again, or one without --families"
        )
    right_a = rows_a["predicted"] == rows_a["true"]
    right_b = rows_b["predicted"] == rows_b["true"]
    result: dict = {
        "a": _side(Path(a), meta_a),
        "b": _side(Path(b), meta_b),
        "source": meta_a.get("source"),
        "families": None if family is None else _family_settings(meta_a, meta_b),
        "all": paired_difference(right_a, right_b, family),
    }
    ident_a, ident_b = rows_a.get("identity"), rows_b.get("identity")
    if (
        ident_a is not None
        and ident_b is not None
        and np.array_equal(ident_a, ident_b, equal_nan=True)
    ):
        names = identity_bands(ident_a)
        bands = {}
        for band in BANDS:
            sel = names == band
            fam = None if family is None else family[sel]
            bands[band] = paired_difference(right_a[sel], right_b[sel], fam)
        result["bands"] = bands
    elif ident_a is not None or ident_b is not None:
        result["bands_skipped"] = (
            "the two runs' identities to their training splits differ (or one evaluation has "
            "none): their bands would not hold the same proteins"
        )
    tops_a, tops_b = rows_a.get("level_top"), rows_b.get("level_top")
    full_ec = all(len(meta.get("levels") or []) > 1 for meta in (meta_a, meta_b))
    if (  # the same depth, and each level stated by the same proteins' numbers
        tops_a is not None
        and tops_b is not None
        and tops_a.shape == tops_b.shape
        and np.array_equal(tops_a >= 0, tops_b >= 0)
    ):
        result["levels"] = []
        for top_a, top_b in zip(tops_a, tops_b, strict=True):
            sel = top_a >= 0  # the proteins whose number states the level
            fam = None if family is None else family[sel]
            result["levels"].append(paired_difference(top_a[sel] == 1, top_b[sel] == 1, fam))
    elif full_ec and (tops_a is None or tops_b is None):
        result["levels_skipped"] = (
            "an evaluation made before 2026-11-30 kept no per-level rows: evaluate it again"
        )
    elif tops_a is not None or tops_b is not None:
        result["levels_skipped"] = (
            "per EC level only between two full-EC runs of the same depth (--target ec) "
            "evaluated on the same EC numbers"
        )
    if out is not None:
        write_json(out, result)
    return result


def _check_out(out: Path, *evaluations: Path) -> None:
    check_outside_runs_and_stores(out)
    for folder in evaluations:
        if folder.resolve() in out.resolve().parents:
            raise OutputIsInputError(
                f"the output {out} lies inside the evaluation {folder}, which an evaluation "
                "again would replace whole; choose another output"
            )
    if out.is_dir():
        raise OutputRefusedError(f"{out} is a folder; the comparison is one JSON file")


def _side(folder: Path, meta: dict) -> dict:
    """One evaluation's folder and run, and what its run had seen of the records (the
    evaluation's ``seen``: records in its training or validation split, or why unknown)."""
    return {"evaluation": str(folder.resolve()), "run": meta.get("run"), "seen": meta.get("seen")}


def seen_warnings(result: dict) -> list[str]:
    """A line for each side whose run had seen records it was compared on, or could not say."""
    lines = []
    for side in ("a", "b"):
        seen = result[side].get("seen") or {}
        name = side.upper()
        if seen.get("checked") is False:
            lines.append(f"{name}: whether its run had seen these records is unknown")
        elif line := seen_line(seen):
            lines.append(f"{name}: {line}")
    return lines


def _family_settings(meta_a: dict, meta_b: dict) -> dict:
    """How the families were made: the first evaluation's that has them."""
    fam = meta_a.get("families") or meta_b.get("families") or {}
    return {k: fam.get(k) for k in ("identity", "coverage", "tool", "resamples", "level")}


def _read(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """An evaluation's metrics.json and its class rows: the file checked against the digest
    metrics.json records, then for the arrays the evaluation says it has."""
    metrics, rows_file = folder / "metrics.json", folder / CLASS_ROWS
    if not metrics.is_file():
        raise CompareError(f"{folder}: not an evaluation folder (no metrics.json)")
    meta = read_json(metrics)
    recorded = meta.get("class_rows") if isinstance(meta, dict) else None
    if not rows_file.is_file() or not recorded:
        raise CompareError(
            f"{folder}: has no {CLASS_ROWS} recorded in its metrics.json (evaluations made "
            "before 2026-11-30 kept no per-protein classes): evaluate the run again"
        )
    if file_sha256(rows_file) != recorded.get("sha256"):
        raise CompareError(
            f"{rows_file}: damaged (its SHA-256 differs from the one metrics.json recorded); "
            "evaluate the run again"
        )
    needed = {"hash", "true", "predicted"}
    needed |= {"family"} if meta.get("families") else set()
    needed |= {"identity"} if meta.get("identity_bands") else set()
    depth = len(meta.get("levels") or [])  # level_top: [depth, n] where there is one
    try:
        with np.load(rows_file, allow_pickle=False) as npz:
            rows = {k: npz[k] for k in npz.files}
    except Exception as error:  # recorded yet unreadable: written by something else
        raise CompareError(f"{rows_file}: not an evaluation's class file ({error})") from None
    if not needed <= set(rows) or not set(rows) <= set(_ARRAYS):
        raise CompareError(
            f"{rows_file}: holds {', '.join(sorted(rows))}; an evaluation of this kind holds "
            f"{', '.join(sorted(needed))}"
        )
    n = len(rows["hash"]) if rows["hash"].ndim == 1 else -1
    for key, array in rows.items():
        shape = (depth, n) if key == "level_top" else (n,)
        if array.shape != shape or array.dtype.kind != _ARRAYS[key]:
            raise CompareError(f"{rows_file}: {key!r} is not {shape} numbers of its kind")
    if rows["hash"].dtype != np.uint64:
        raise CompareError(f"{rows_file}: 'hash' is not 64-bit sequence hashes")
    return meta, rows
