"""Run the benchmarks and write their sections of BENCHMARKS.md.

Usage: ``.venv/bin/python benchmarks/run.py [SECTION ...]`` (``make bench`` runs them all).
Each section is a module in ``benchmarks/`` with ``run() -> str`` returning its markdown; only
the block between its ``<!-- section:NAME -->`` markers is rewritten, so sections can be rerun
one at a time. Generated data goes to ``bench-output/``.
"""

from __future__ import annotations

import argparse
import importlib
import time

from common import REPORT, limit_threads, write_section

# section name → module in benchmarks/
SECTIONS = {
    "pipeline": "pipeline",
    "training": "training",
    "accuracy": "accuracy",
    "families": "families",
    "prediction": "prediction",
    "prediction-cache": "prediction_cache",
    "scorer-blocks": "scorer_blocks",
    "layout": "layout",
    "compiled": "compiled",
    "gpu": "gpu",
    "input-fuzz": "input_fuzz",
    "faults": "faults",
    "scale": "scale",
    "remote": "remote",
}
NEEDS_CUDA = {"gpu"}


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default: all)")
    names = parser.parse_args(argv).sections
    if not names:  # all of them, but those that need a GPU only where there is one
        names = [n for n in SECTIONS if n not in NEEDS_CUDA or _has_cuda()]
        if skipped := [n for n in SECTIONS if n not in names]:
            print(f"== skipping {', '.join(skipped)}: no CUDA GPU here", flush=True)
    if unknown := [n for n in names if n not in SECTIONS]:
        parser.error(f"unknown section {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    limit_threads()  # before any section imports numpy, torch or pyarrow
    for name in names:
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        body = importlib.import_module(SECTIONS[name]).run()
        write_section(name, body)
        print(f"== {name}: {time.perf_counter() - started:.0f} s, written to {REPORT}", flush=True)


if __name__ == "__main__":
    main()
