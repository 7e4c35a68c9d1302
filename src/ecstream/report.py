"""Readable summaries for people: store info, set-aside reasons, metric tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .families import MIN_FAMILIES
from .plan import BatchSettings
from .splits import SplitMethod
from .store import HISTOGRAM_EDGES, SPLITS, Store


def store_tables(store: Store) -> list[Table | Text | str]:
    """The summary of a store, as rich renderables (what ``ecstream info`` prints)."""
    m = store.manifest
    policy = store.policy
    split = m["split"]
    method = split["method"]
    if SplitMethod.parse(method).kind == "cluster":
        method += f" at identity {split['identity']:g}, coverage {split['coverage']:g}"
        method += f", {split['clusters']:,} clusters"
    head = (
        f"[bold]{escape(str(store.path))}[/]  ecstream store v{m['format_version']} · built "
        f"{m['created']} · split {escape(method)} (val {split['val']}, test {split['test']}, "
        f"seed {split['seed']})"
    )
    counts = Table(title="Records per split and EC class", title_justify="left")
    counts.add_column("class")
    counts.add_column("name")
    for name in SPLITS:
        counts.add_column(name, justify="right")
    counts.add_column("all", justify="right")
    info = [m["splits"][s] for s in SPLITS]
    for key, label in zip(policy.classes, policy.names, strict=True):
        row = [i.get("per_class_single_class", i["per_class"])[key] for i in info]
        counts.add_row(key, label, *(f"{v:,}" for v in row), f"{sum(row):,}")
    spanning = [i["records"] - i.get("single_class_records", i["records"]) for i in info]
    if any(spanning):
        counts.add_row("", "several classes", *(f"{v:,}" for v in spanning), f"{sum(spanning):,}")
        counts.caption = (
            "several classes: rows whose EC numbers span classes; --target ec learns from them, "
            "a --target class run leaves them out (or takes the first with --multi-class first)"
        )
    totals = [i["records"] for i in info]
    counts.add_row("", "[bold]total", *(f"[bold]{v:,}" for v in totals), f"[bold]{sum(totals):,}")
    if all("ec_classes_per_level" in i for i in info):
        for level in range(4):
            row = [i["ec_classes_per_level"][level] for i in info]
            counts.add_row("", f"EC classes, level {level + 1}", *(f"{v:,}" for v in row), "")
        unseen = [i.get("ec_numbers_not_in_train", 0) for i in info]
        counts.add_row("", "full numbers not in train", *(f"{v:,}" for v in unseen), "")

    lengths = Table(title="Sequence lengths", title_justify="left")
    # split at the first histogram edge above the default max_length: what training truncates
    cut = next(k for k, e in enumerate(HISTOGRAM_EDGES) if e > BatchSettings.max_length) - 1
    edge = HISTOGRAM_EDGES[cut + 1]
    for col in ("split", "residues", "mean", f"< {edge}", f"≥ {edge}"):
        lengths.add_column(col, justify="right")
    for s in SPLITS:
        info = m["splits"][s]
        hist = info["length_histogram"]
        n = max(info["records"], 1)
        lengths.add_row(
            s,
            f"{info['residues']:,}",
            f"{info['residues'] / n:.0f}",
            f"{sum(hist[: cut + 1]):,}",
            f"{sum(hist[cut + 1 :]):,}",
        )

    aside = Table(title="Rows set aside (not in any split)", title_justify="left")
    aside.add_column("count", justify="right")
    aside.add_column("reason")
    aside.add_column("first seen at")
    for reason, info in m["set_aside"].items():
        # the first place quotes the input (ids, EC fields): text, never markup
        aside.add_row(f"{info['count']:,}", reason, Text(info["first"][0] if info["first"] else ""))
    if m.get("not_sampled"):
        aside.add_row(f"{m['not_sampled']:,}", "not_sampled", f"--sample {m['build']['sample']}")
    if not m["set_aside"] and not m.get("not_sampled"):
        aside.add_row("0", "nothing was set aside", "")

    dup = m["duplicates"]
    notes = (
        f"rows read {m['rows_read']:,} · records kept {m['records']:,} · "
        f"identical sequences repeated {dup['sequence']['repeated']:,} "
        f"(with conflicting labels {dup['sequence']['conflicting_labels']:,}, across splits "
        f"{dup['sequence']['across_splits']:,}) · ids repeated {dup['id']['repeated']:,} "
        f"(across splits {dup['id']['across_splits']:,})"
    )
    sources = Text(  # paths are text, never markup
        "sources: "
        + "; ".join(
            f"{s['path']} ({s['format']}, {s['rows']:,} rows, sha256 {s.get('sha256', '-')[:12]})"
            for s in m["sources"]
        )
    )
    items = [head, counts, lengths, aside, notes, sources]
    if "leakage" in m:
        items.append(Text(format_leakage(m["leakage"])))
    return items


def print_all(console: Console, items: list) -> None:
    for item in items:
        console.print(item)


def metrics_table(result: dict) -> Table:
    """Accuracy, macro-F1 and the per-class precision/recall/F1/support of an evaluation."""
    table = Table(
        title=f"accuracy {result['accuracy']:.4f} · macro-F1 {result['macro_f1']:.4f} · "
        f"n = {result['n']:,}",
        title_justify="left",
    )
    for col in ("class", "name", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="right" if col not in ("class", "name") else "left")
    for key, c in result["per_class"].items():
        table.add_row(
            key, c["name"], f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}",
            f"{c['support']:,}",
        )  # fmt: skip
    notes = []
    if sum(v["count"] for v in result.get("set_aside", {}).values()):
        reasons = ", ".join(f"{k} {v['count']:,}" for k, v in result["set_aside"].items())
        notes.append(f"set aside: {reasons}")
    if several := result.get("several_classes"):  # evaluations before 2026-11-29 lack it
        notes.append(f"{several:,} with numbers in several classes: per-level metrics only")
    if notes:
        table.caption = " · ".join(notes)
    return table


def bands_table(result: dict) -> Table | None:
    """Accuracy per band of identity to the training split, when the evaluation has it: class
    accuracy with its balanced accuracy and the band's largest class, and the top prediction's
    accuracy at every EC level the run predicts."""
    bands = result.get("identity_bands")
    if not bands:
        return None
    levels = [lv for lv in result.get("levels", []) if "identity_bands" in lv]
    table = Table(
        title="Accuracy by identity to the closest training protein", title_justify="left"
    )
    for col in (
        "identity",
        "proteins",
        "class accuracy",
        "balanced",
        "largest class",
        *(f"level {lv['level']}" for lv in levels),
    ):
        table.add_column(col, justify="right")
    for band, info in bands.items():
        # evaluations written before the balanced figures lack them
        extra = (info.get("balanced_accuracy"), info.get("majority"))
        cells = [_share(info["accuracy"]), *map(_share, extra)]
        cells += [_share(lv["identity_bands"][band]["accuracy"]) for lv in levels]
        table.add_row(band.replace("_", " "), f"{info['n']:,}", *cells)
    notes = [
        "balanced: the mean of each class's recall; largest class: what always guessing the "
        "band's most common class scores"
    ]
    if levels and (hits := levels[0].get("profile_hits", {})).get("n"):
        cells = ["", "", "", *(_share(lv["profile_hits"]["accuracy"]) for lv in levels)]
        table.add_row("profile hits", f"{hits['n']:,}", *cells)
        notes.insert(0, "profile hits: no hit in the search, found by the profile fallback")
    table.caption = "; ".join(notes)
    return table


def families_table(result: dict) -> Table | None:
    """Class accuracy with the families it rests on, overall and per band of identity (and for
    a full-EC run the top prediction's at each level), when the evaluation clustered its
    proteins (``evaluate --families``)."""
    fam = result.get("families")
    if not fam or not fam["all"]["n"]:  # e.g. every record spans several classes
        return None
    table = Table(
        title=f"Families ({fam['identity']:g} identity over {fam['coverage']:g} of both sequences)",
        title_justify="left",
    )
    level = f"{fam['level']:.0%}"
    for col in ("proteins of", "proteins", "families", "largest family", "accuracy",
                f"{level} interval", "family mean", "largest class", "its interval"):  # fmt: skip
        table.add_column(col, justify="right")
    for name, info in _selections(fam):
        guess = info.get("largest_class", {})
        table.add_row(
            name, f"{info['n']:,}", f"{info['families']:,}", _share(info["largest_family"]),
            _share(info["accuracy"]), _span(info["interval"]), _share(info["family_mean"]),
            _share(guess.get("accuracy")), _span(guess.get("interval")),
        )  # fmt: skip
    table.caption = (
        f"interval: of the accuracy, resampling whole families ({fam['resamples']:,} times); "
        f"–: under {MIN_FAMILIES} families; family mean: each family's accuracy weighed once; "
        "largest class: always guessing the most common class of those proteins"
    )
    return table


def compare_table(result: dict) -> Table:
    """Class accuracy of two evaluations of the same proteins, their difference and its
    interval over resampled families, overall and per band of identity, and for two full-EC
    runs the top prediction's accuracy at each level (``ecstream compare``)."""
    fam = result["families"]
    table = Table(title="A against B: accuracy on the same proteins", title_justify="left")
    level = f"{fam['level']:.0%} interval" if fam else "interval"
    for col in ("proteins of", "proteins", "families", "A", "B", "A − B", level):
        table.add_column(col, justify="right")
    for name, info in _selections(result):
        families = "–" if info["families"] is None else f"{info['families']:,}"
        difference = "–" if info["difference"] is None else f"{info['difference']:+.3f}"
        table.add_row(
            name, f"{info['n']:,}", families, _share(info["accuracy_a"]),
            _share(info["accuracy_b"]), difference, _span(info["interval"], signed=True),
        )  # fmt: skip
    a, b = result["a"], result["b"]
    table.caption = f"A: {escape(str(a['run']))}\nB: {escape(str(b['run']))}\n" + (
        f"interval: of A − B, resampling whole families ({fam['resamples']:,} times, the "
        f"same for both); –: under {MIN_FAMILIES} families"
        if fam
        else "no interval: neither evaluation has families (evaluate --families)"
    )
    return table


def _selections(part: dict) -> list[tuple[str, dict]]:
    """The rows of a families or a comparison table: all proteins, each band of identity, and
    each EC level's top prediction, where the result has them."""
    bands = [(b.replace("_", " "), v) for b, v in part.get("bands", {}).items()]
    levels = [(f"level {k}, top", v) for k, v in enumerate(part.get("levels", []), 1)]
    return [("all", part["all"]), *bands, *levels]


def _span(interval: list[float] | None, signed: bool = False) -> str:
    if interval is None:
        return "–"
    low, high = (f"{x:+.3f}" if signed else f"{x:.3f}" for x in interval)
    return f"{low} to {high}" if signed else f"{low}–{high}"


def levels_table(result: dict) -> Table | None:
    """Per EC level: the set metrics, Fmax, top accuracy and calibration of an evaluation."""
    levels = result.get("levels")
    if not levels:
        return None
    table = Table(title="Per EC level (sets of EC numbers at each level)", title_justify="left")
    columns = ("level", "proteins", "coverage", "micro P", "micro R", "micro F1", "weighted F1",
               "Fmax", "top acc.", "ECE")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    for lv in levels:
        table.add_row(
            str(lv["level"]), f"{lv['records']:,}", _share(lv["coverage"]),
            _share(lv["micro"]["precision"]), _share(lv["micro"]["recall"]),
            _share(lv["micro"]["f1"]), _share(lv["weighted"]["f1"]), _share(lv.get("fmax")),
            _share(lv.get("top_accuracy")), _share(lv.get("ece")),
        )  # fmt: skip
    return table


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def format_leakage(report: dict[str, Any]) -> str:
    """The leakage report as a plain-text table (counts and percentages per band)."""
    bands = report["bands"]
    head = (
        f"Highest identity of each sequence to any of {report['reference_records']:,} "
        f"{report['reference']} sequences (MMseqs2 {report['mmseqs_version']}, "
        f"-s {report['sensitivity']:g}, E <= {report['evalue']:g})"
    )
    rows = []
    for split, info in report["splits"].items():
        n = max(info["records"], 1)
        cells = [f"{c:,} ({100 * c / n:.1f}%)" for c in (info["counts"][b] for b in bands)]
        rows.append([split, f"{info['records']:,}", *cells])
    header = ["split", "records", *bands]
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    lines = [head]
    for r in [header, *rows]:
        lines.append(
            f"{r[0]:<{widths[0]}}"
            + "".join(f"  {c:>{w}}" for c, w in zip(r[1:], widths[1:], strict=True))
        )
    for split, info in report["splits"].items():
        for qid, tid, ident in info.get("closest", [])[:3]:
            lines.append(f"  closest {split}: {qid} ~ {tid} at {ident:.3f}")
    return "\n".join(lines)
