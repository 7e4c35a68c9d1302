"""Figures (matplotlib, no screen needed): the confusion matrix and the learning curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .atomic import atomic_path
from .calibrate import reliability as bins


def _save(fig, path: Path) -> None:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def confusion(result: dict, path: Path) -> None:
    """Row-normalised confusion matrix with counts, classes labelled by key and name."""
    matrix = np.asarray(result["confusion"]["rows_true_columns_predicted"], dtype=float)
    keys = list(result["per_class"])
    names = [result["per_class"][k]["name"] for k in keys]
    labels = [f"{k} {n}" if len(keys) <= 10 else k for k, n in zip(keys, names, strict=True)]
    columns = labels + ["no class"] * (matrix.shape[1] - len(keys))  # kNN queries without hit
    share = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = max(5.0, 0.7 * len(keys) + 2)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if len(keys) <= 20:
        for (i, j), count in np.ndenumerate(matrix):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{int(count):,}", ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(keys)), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(
        f"accuracy {result['accuracy']:.3f} · macro-F1 {result['macro_f1']:.3f} · n={result['n']:,}"
    )
    fig.colorbar(image, ax=ax, label="share of the true class")
    _save(fig, path)


def learning_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, training and validation."""
    epochs = [int(r["epoch"]) + 1 for r in history]

    def col(name: str) -> list[float]:
        return [float(r[name]) if r.get(name) else np.nan for r in history]

    fig, (loss, acc) = plt.subplots(1, 2, figsize=(10, 4))
    loss.plot(epochs, col("train_loss"), "o-", label="train")
    loss.plot(epochs, col("val_loss"), "o-", label="validation")
    loss.set_xlabel("epoch")
    loss.set_ylabel("cross-entropy")
    loss.legend()
    acc.plot(epochs, col("train_acc"), "o-", label="train accuracy")
    acc.plot(epochs, col("val_acc"), "o-", label="validation accuracy")
    acc.plot(epochs, col("val_macro_f1"), "s--", label="validation macro-F1")
    acc.set_xlabel("epoch")
    acc.set_ylim(0, 1)
    acc.legend()
    fig.tight_layout()
    _save(fig, path)


def reliability(curves: list[dict], path: Path) -> None:
    """Reliability diagrams per level: accuracy of the top prediction against its confidence,
    before and after calibration (15 bins; the diagonal is perfect calibration)."""
    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves) + 0.6, 3.4), squeeze=False)
    for level, (ax, curve) in enumerate(zip(axes[0], curves, strict=True), start=1):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        for key, style in (("before", "o--"), ("after", "s-")):
            conf, right = curve[key]
            _, accuracy, mean_conf, counts = bins(np.asarray(conf), np.asarray(right))
            used = counts > 0
            ax.plot(mean_conf[used], accuracy[used], style, ms=3, label=key)
        ax.set_title(f"level {level}")
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("accuracy of the top prediction")
    axes[0][0].legend(loc="upper left")
    fig.tight_layout()
    _save(fig, path)


def precision_coverage(levels: list[dict], path: Path) -> None:
    """Precision of the top prediction against the share of proteins it is made for."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for info in levels:
        curve = info.get("precision_coverage")
        if curve:
            ax.plot(curve["coverage"], curve["precision"], label=f"level {info['level']}")
    ax.set_xlabel("coverage (share of proteins with a prediction)")
    ax.set_ylabel("precision of the top prediction")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower left")
    fig.tight_layout()
    _save(fig, path)
