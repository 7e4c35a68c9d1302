"""Inputs and outputs under faults: nothing lost, nothing silently wrong (issue 9).

An input that is cut short or cannot be decoded fails the command with its file and line unless
``--allow-partial``; a UTF-8 byte-order mark is accepted; ids holding tabs and line ends survive
the prediction TSV; an output never replaces an input; stdin, stdout and pipes work; a
non-positive ``--max-records`` is refused; user text is never read as rich markup; a stray
control byte is an invalid character; and damaged inputs never come back as other records.
Every case uses real files (and the real data where rows are needed).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, head_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecstream import alphabet, cli
from ecstream.atomic import OutputIsInputError, OutputRefusedError, atomic_dir
from ecstream.build import BuildConfig, build_store
from ecstream.cli import main
from ecstream.evaluate import evaluate
from ecstream.predict import predict_file
from ecstream.predictors import load_model
from ecstream.skips import Skips
from ecstream.sources import (
    TRUNCATED_INPUT,
    Columns,
    DamagedInputError,
    SourceInfo,
    read_rows,
)
from ecstream.store import StoreError

sys.path.insert(0, str(ROOT / "benchmarks"))
import input_fuzz  # the fuzz cases and their judge live with the benchmark

BOM = b"\xef\xbb\xbf"


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    """Messages on one line, so that a long path is never folded in the middle."""
    for console in (cli.console, cli.out):
        monkeypatch.setattr(console, "_width", 1000)


def _rows(source, **kw):
    return [(r[1], r[2], r[3]) for chunk in read_rows(source, **kw) for r in chunk]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fasta(records) -> str:
    return "".join(f">{i} some protein\n{s}\n" for i, s in records)


def _real(data_path, n):
    """The first ``n`` rows of the real data as (id, EC, sequence)."""
    return [tuple(line.rstrip("\n").split("\t")) for line in head_lines(data_path, n + 1)[1:]]


def _bad_crc(data: bytes) -> bytes:
    """Gzip of ``data`` whose checksum (the trailer's first 4 bytes) does not match."""
    whole = bytearray(gzip.compress(data, mtime=0))
    whole[-8] ^= 0xFF
    return bytes(whole)


def _cut_gzip(path: Path, text: str, fraction: float = 2 / 3) -> None:
    whole = gzip.compress(text.encode(), mtime=0)
    path.write_bytes(whole[: int(len(whole) * fraction)])


# --------------------------------------------------------------------------- 1. loud partial input


def test_a_cut_gzip_fails_the_build_and_leaves_the_old_store(data_path, tmp_path, capsys):
    store = tmp_path / "store"
    good = tmp_path / "good.tsv"
    good.write_text("".join(head_lines(data_path, 400)))
    assert main(["build", str(good), "--out", str(store)]) == 0
    before = (store / "manifest.json").read_bytes()
    capsys.readouterr()

    cut = tmp_path / "cut.tsv.gz"
    _cut_gzip(cut, "".join(head_lines(data_path, 3000)))
    assert main(["build", str(cut), "--out", str(store), "--force"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"{cut}:" in err and "the gzip data end early" in err and "--allow-partial" in err
    assert "Traceback" not in err
    assert (store / "manifest.json").read_bytes() == before  # the old store is intact

    assert main(["build", str(cut), "--out", str(store), "--force", "--allow-partial"]) == 0
    err = _one_line(capsys.readouterr().err)
    source = json.loads((store / "manifest.json").read_text())["sources"][0]
    assert source["partial"]["rows_kept"] == source["rows"] > 1000
    assert source["partial"]["stopped_at"].startswith(f"{cut}:")
    assert f"the {source['rows']:,} rows before it were used" in err


def test_predict_refuses_a_cut_input_and_keeps_the_old_output(cnn_run, data_path, tmp_path, capsys):
    records = [(r[0], r[2]) for r in _real(data_path, 600)]
    cut = tmp_path / "q.faa.gz"
    _cut_gzip(cut, _fasta(records))
    out = tmp_path / "p.tsv"
    out.write_text("the previous predictions\n")
    assert main(["predict", str(cnn_run), str(cut), "--out", str(out)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"{cut}:" in err and "end early" in err and "--allow-partial" in err
    assert out.read_text() == "the previous predictions\n"

    assert main(["predict", str(cnn_run), str(cut), "--out", str(out), "--allow-partial"]) == 0
    err = _one_line(capsys.readouterr().err)
    got = pd.read_csv(out, sep="\t", dtype=str, keep_default_na=False)["id"].tolist()
    assert 100 < len(got) < len(records) and got == [i for i, _ in records[: len(got)]]
    assert f"input cut short or damaged: {cut}:" in err
    assert f"the {len(got):,} records before it were used" in err


def test_evaluate_refuses_a_cut_labelled_file_unless_allowed(cnn_run, data_path, tmp_path):
    cut = tmp_path / "labelled.tsv.gz"
    _cut_gzip(cut, "".join(head_lines(data_path, 1500)))
    with pytest.raises(DamagedInputError, match=r"labelled.tsv.gz:\d+: the gzip data end early"):
        evaluate(cnn_run, cut, tmp_path / "ev", bands=False)
    assert not (tmp_path / "ev" / "metrics.json").exists()
    result = evaluate(
        cnn_run, cut, tmp_path / "ev", bands=False, allow_partial=True, allow_seen=True
    )
    written = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert written["partial"] == result["partial"] and result["partial"]["rows_kept"] > 500
    assert result["set_aside"][TRUNCATED_INPUT]["count"] == 1


@pytest.mark.parametrize(
    ("name", "content", "message", "kept"),
    [
        (
            "bad-utf8.tsv",
            b"Entry\tEC number\tSequence\nA1\t1.1.1.1\tMKV\n"
            b"A2\t1.1.1.1\tMK\xffV\nA3\t2.1.1.1\tMKL\n",
            r"bad-utf8.tsv:3: byte 14 of the line \(b'\\xff'\) is not UTF-8",
            ["A1"],
        ),
        (
            "open-quote.csv",
            b'Entry,EC number,Sequence\nA1,1.1.1.1,MKV\nA2,1.1.1.1,"MKV\nA3,2.1.1.1,MKL\n',
            r"open-quote.csv:4: CSV error: unexpected end of data",
            ["A1"],
        ),
        (
            "no-line-end.tsv",
            b"Entry\tEC number\tSequence\nA1\t1.1.1.1\tMKV\nA2\t1.1.1.1\tMKVLL",
            r"no-line-end.tsv:3: the last line has no line end",
            ["A1"],
        ),
        (
            "no-line-end.fasta",
            b">A1\nMKV\n>A2\nMKVLL",
            r"no-line-end.fasta:4: the last line has no line end",
            ["A1"],
        ),
        (
            "bad-gzip.tsv",  # gzip by its magic bytes, whatever the name says
            _bad_crc(b"Entry\tEC number\tSequence\n" + b"A1\t1.1.1.1\tMKV\n" * 3000),
            r"bad-gzip.tsv:\d+: the gzip data are damaged \(CRC check failed",
            ["A1"] * 3000,
        ),
    ],
)
def test_input_that_ends_early_or_cannot_be_decoded_names_file_and_line(
    tmp_path, name, content, message, kept
):
    path = tmp_path / name
    path.write_bytes(content)
    columns = Columns(ec=None) if name.endswith("fasta") else Columns()
    with pytest.raises(DamagedInputError, match=message):
        _rows(path, columns=columns)
    skips, info = Skips(), SourceInfo()
    rows = _rows(path, columns=columns, skips=skips, allow_partial=True, info=info)
    assert [r[0] for r in rows] == kept and skips.counts[TRUNCATED_INPUT] == 1
    assert info.partial() == {"stopped_at": info.stopped, "rows_kept": len(kept)}
    assert info.stopped.startswith(f"{path}:")


# --------------------------------------------------------------------------- 2. byte-order mark


@pytest.mark.parametrize("name", ["bom.tsv", "bom.csv", "bom.faa", "bom.tsv.gz", "bom-noext"])
def test_a_utf8_byte_order_mark_is_accepted(tmp_path, name):
    sep = "," if name.endswith("csv") else "\t"
    if name.endswith("faa"):
        text, columns, expected = ">A1 x\nMKV\n>A2\nMKL\n", Columns(ec=None), [None, None]
    else:
        text = f"Entry{sep}EC number{sep}Sequence\nA1{sep}1.1.1.1{sep}MKV\nA2{sep}2.1.1.1{sep}MKL\n"
        columns, expected = Columns(), ["1.1.1.1", "2.1.1.1"]
    data = BOM + text.encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert _rows(path, columns=columns) == [
        ("A1", expected[0], "MKV"),
        ("A2", expected[1], "MKL"),
    ]


def test_a_build_reads_a_table_with_a_byte_order_mark(data_path, tmp_path):
    path = tmp_path / "excel.tsv"
    path.write_bytes(BOM + "".join(head_lines(data_path, 300)).encode())
    store = build_store(path, tmp_path / "s")
    assert store.manifest["rows_read"] == 299


# --------------------------------------------------------------------------- 3. output TSV

ODD_IDS = ["tab\there", "new\nline", "cr\rhere", 'a "quoted" one', "comma,id", "plain", " pad "]


def _odd_csv(path: Path, ids: list[str], seqs: list[str], ecs: list[str] | None = None) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Entry", "EC number", "Sequence"])
        for k, (rid, seq) in enumerate(zip(ids, seqs, strict=True)):
            writer.writerow([rid, ecs[k] if ecs else "", seq])


def test_ids_with_tabs_and_line_ends_survive_the_prediction_tsv(cnn_run, data_path, tmp_path):
    seqs = [r[2] for r in _real(data_path, len(ODD_IDS))]
    seqs[-1] = "MK-V"  # an error row keeps its id too
    source = tmp_path / "odd.csv"
    _odd_csv(source, ODD_IDS, seqs)
    out = tmp_path / "p.tsv"
    summary = predict_file(load_model(cnn_run), source, out)
    assert summary["records"] == len(ODD_IDS)
    table = pd.read_csv(out, sep="\t", dtype=str, keep_default_na=False)
    assert table["id"].tolist() == ODD_IDS
    assert len(table.columns) == len(table.iloc[0]) and table["error"].iloc[-1] != ""
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert [r[0] for r in rows[1:]] == ODD_IDS
    assert {len(r) for r in rows} == {len(rows[0])}


@pytest.mark.slow
def test_the_homolog_column_keeps_odd_training_ids(mmseqs, data_path, tmp_path):
    from ecstream.baselines import make_knn_run

    real = _real(data_path, 240)
    ids = [f"{ODD_IDS[k % len(ODD_IDS)]}-{k}" for k in range(len(real))]
    source = tmp_path / "odd-train.csv"
    _odd_csv(source, ids, [r[2] for r in real], [r[1] for r in real])
    store = build_store(source, tmp_path / "store", val=0.2, test=0.0)
    make_knn_run(store.path, tmp_path / "knn", threads=2)
    from ecstream.records import concat

    train = concat(store.records("train"))
    queries = tmp_path / "queries.faa"
    queries.write_text(_fasta((f"q{k}", s.decode()) for k, s in enumerate(train.seqs[:20])))
    out = tmp_path / "knn.tsv"
    predict_file(load_model(tmp_path / "knn"), queries, out)
    table = pd.read_csv(out, sep="\t", dtype=str, keep_default_na=False)
    # each query is a training sequence: its best hit is itself (or an identical twin)
    by_seq = {s: i for i, s in zip(train.ids, train.seqs, strict=True)}
    assert set(table["homolog"]) <= set(train.ids) and "" not in set(table["homolog"])
    assert sum(h == by_seq[s] for h, s in zip(table["homolog"], train.seqs, strict=False)) >= 15
    assert any("\t" in h or "\n" in h for h in table["homolog"])


# --------------------------------------------------------------------------- 4. outputs vs inputs


def test_an_output_never_replaces_an_input(cnn_run, small_store, data_path, tmp_path, capsys):
    fasta = tmp_path / "q.faa"
    fasta.write_text(">a\nMKVLAAGIVG\n")
    assert main(["predict", str(cnn_run), str(fasta), "--out", str(fasta)]) == 2
    assert "would replace the input" in _one_line(capsys.readouterr().err)
    assert fasta.read_text() == ">a\nMKVLAAGIVG\n"
    with pytest.raises(OutputIsInputError):
        predict_file(load_model(cnn_run), fasta, cnn_run)

    # a store directory that holds its own input is not replaced, even with --force
    folder = tmp_path / "folder"
    folder.mkdir()
    table = folder / "in.tsv"
    table.write_text("".join(head_lines(data_path, 200)))
    assert main(["build", str(table), "--out", str(folder), "--force"]) == 2
    assert "would replace the input" in _one_line(capsys.readouterr().err)
    assert table.read_text() == "".join(head_lines(data_path, 200))

    run_files = {p: p.read_bytes() for p in Path(cnn_run).rglob("*") if p.is_file()}
    for out in (cnn_run, small_store.path, Path(cnn_run) / "eval", small_store.path / "eval"):
        args = ["evaluate", str(cnn_run), str(small_store.path), "--out", str(out), "--no-bands"]
        assert main(args) == 2
        assert "would write into the input" in _one_line(capsys.readouterr().err)
    assert {p: p.read_bytes() for p in Path(cnn_run).rglob("*") if p.is_file()} == run_files
    assert small_store.verify() == [] and not (small_store.path / "metrics.json").exists()


def test_an_output_never_replaces_a_link_a_pipe_or_an_input_named_like_the_sidecar(
    cnn_run, data_path, tmp_path, capsys
):
    fasta = tmp_path / "q.faa"
    fasta.write_text(">a\nMKVLAAGIVG\n")
    target = tmp_path / "kept.tsv"
    target.write_text("old\n")
    link = tmp_path / "link.tsv"
    link.symlink_to(target)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for out, why in ((link, "is a symbolic link"), (fifo, "is a device, pipe or socket")):
        assert main(["predict", str(cnn_run), str(fasta), "--out", str(out)]) == 2
        assert why in _one_line(capsys.readouterr().err)
    assert link.is_symlink() and target.read_text() == "old\n"
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and not Path(f"{fifo}.json").exists()

    # the sidecar OUT.json is an output too: it may not replace the input
    named = tmp_path / "x.tsv.json"
    named.write_text(">a\nMKVLAAGIVG\n")
    assert main(["predict", str(cnn_run), str(named), "--out", str(tmp_path / "x.tsv")]) == 2
    assert "would replace the input" in _one_line(capsys.readouterr().err)
    assert named.read_text() == ">a\nMKVLAAGIVG\n" and not (tmp_path / "x.tsv").exists()

    # directories too: a store's --out that is a link is refused, the linked folder kept
    table = tmp_path / "in.tsv"
    table.write_text("".join(head_lines(data_path, 200)))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("x")
    store_link = tmp_path / "store"
    store_link.symlink_to(elsewhere)
    assert main(["build", str(table), "--out", str(store_link), "--force"]) == 2
    assert "refusing to replace it" in _one_line(capsys.readouterr().err)
    assert store_link.is_symlink() and (elsewhere / "keep").read_text() == "x"
    # every writer's check, under build's own
    with pytest.raises(OutputRefusedError, match="is a symbolic link"), atomic_dir(store_link):
        pass
    assert store_link.is_symlink() and (elsewhere / "keep").read_text() == "x"


def test_a_kill_before_the_sidecar_never_leaves_another_runs_beside_the_predictions(
    cnn_run, data_path, tmp_path, monkeypatch
):
    """OUT.json records the run and thresholds of OUT: killed after the TSV is in place and
    before its sidecar is written, predict leaves no sidecar rather than the previous one."""
    import ecstream.predict as predict_module

    fasta = tmp_path / "q.fasta"
    fasta.write_text(">a\nMKVLAAGIVGLLLA\n>b\nMSTNPKPQRKTKRNTN\n")
    out = tmp_path / "p.tsv"
    predict_file(load_model(cnn_run), fasta, out)
    before = json.loads((tmp_path / "p.tsv.json").read_text())
    assert before["thresholds_from"] != "--min-confidence"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill at that moment would leave the files

    monkeypatch.setattr(predict_module, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        predict_file(load_model(cnn_run), fasta, out, min_confidence=0.9)
    assert out.is_file() and not (tmp_path / "p.tsv.json").exists()


def test_a_damaged_parquet_file_is_named(cnn_run, data_path, tmp_path, capsys):
    table = pd.read_csv(data_path, sep="\t", nrows=50)
    whole = tmp_path / "whole.parquet"
    table.to_parquet(whole, compression="none")
    good = whole.read_bytes()
    # a byte of a sequence made non-UTF-8 (pyarrow checks no string column's UTF-8)
    at = good.index(table["Sequence"].iloc[7].encode()) + 3
    not_utf8 = good[:at] + b"\xff" + good[at + 1 :]
    damaged = {
        "cut.parquet": (good[: len(good) // 2], "damaged, or not a Parquet file"),
        # cut, its footer's last bytes kept: a plain OSError without errno from pyarrow
        "footer.parquet": (good[: len(good) // 2] + good[-8:], "damaged, or not a Parquet file"),
        "noise.parquet": (b"PAR1" + bytes(range(256)) * 8, "damaged, or not a Parquet file"),
        "empty.parquet": (b"", "damaged, or not a Parquet file"),
        "utf8.parquet": (not_utf8, "rows 1–50: damaged, a text column is not UTF-8"),
    }
    for name, (data, message) in damaged.items():
        (tmp_path / name).write_bytes(data)
        for command in (["predict", str(cnn_run)], ["build"]):
            out = tmp_path / f"out-{command[0]}"
            assert main([*command, str(tmp_path / name), "--out", str(out)]) == 2
            err = _one_line(capsys.readouterr().err)
            assert err.startswith(f"error: {tmp_path / name}: {message}"), (name, err)
            assert not out.exists()


def test_a_header_repeated_by_joined_files_is_counted_not_scored(cnn_run, data_path, tmp_path):
    part = "".join(head_lines(data_path, 4))  # the header and three proteins
    joined = tmp_path / "joined.tsv"
    joined.write_text(part + part)  # cat a.tsv b.tsv
    summary = predict_file(load_model(cnn_run), joined, tmp_path / "o.tsv")
    ids = [row.split("\t")[0] for row in (tmp_path / "o.tsv").read_text().splitlines()[1:]]
    assert summary["records"] == 6 and "Entry" not in ids
    assert summary["unreadable"]["repeated_header"]["count"] == 1
    assert any(f"{joined}:5" in line for line in summary["unreadable_lines"])


# --------------------------------------------------------------------------- 5. pipelines


def _pipe(data: bytes) -> int:
    """The read end of a real pipe (not seekable) that a thread fills with ``data``."""
    read, write = os.pipe()

    def fill() -> None:
        with os.fdopen(write, "wb") as fh:
            fh.write(data)

    threading.Thread(target=fill, daemon=True).start()
    return read


@pytest.fixture(scope="module")
def queries(data_path, tmp_path_factory):
    """A folder and 300 real (id, sequence) records."""
    return tmp_path_factory.mktemp("pipes"), [(r[0], r[2]) for r in _real(data_path, 300)]


def _reference(cnn_run, folder: Path, records) -> tuple[Path, str]:
    fasta = folder / "q.faa.gz"
    if not fasta.exists():
        fasta.write_bytes(gzip.compress(_fasta(records).encode()))
        predict_file(load_model(cnn_run), fasta, folder / "reference.tsv")
    return fasta, (folder / "reference.tsv").read_text()


def test_stdin_and_stdout_with_gzip_recognised_on_a_pipe(cnn_run, queries, monkeypatch, capsys):
    folder, records = queries
    fasta, reference = _reference(cnn_run, folder, records)
    stdin = io.TextIOWrapper(os.fdopen(_pipe(fasta.read_bytes()), "rb"))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["predict", str(cnn_run), "-", "--out", "-"]) == 0
    captured = capsys.readouterr()
    assert captured.out == reference  # the TSV, and only the TSV, went to stdout
    assert "300 records → stdout" in _one_line(captured.err)


def test_process_substitution_paths_are_sniffed_without_being_read_twice(cnn_run, queries):
    folder, records = queries
    fasta, reference = _reference(cnn_run, folder, records)
    model = load_model(cnn_run)
    table = "Entry\tSequence\n" + "".join(f"{i}\t{s}\n" for i, s in records)
    out = folder / "from-pipe.tsv"
    for data, fmt in (
        (fasta.read_bytes(), "fasta"),
        (gzip.decompress(fasta.read_bytes()), "fasta"),
        (gzip.compress(table.encode()), "tsv"),
    ):
        fd = _pipe(data)
        try:
            summary = predict_file(model, f"/dev/fd/{fd}", out)  # as bash's <(zcat …) gives
        finally:
            os.close(fd)
        assert summary["format"] == fmt and out.read_text() == reference


def test_evaluate_families_of_a_pipe_is_one_line_and_writes_nothing(
    cnn_run, data_path, tmp_path, monkeypatch, capsys
):
    """Families need a second pass over the records, which a pipe cannot give: refused before
    scoring, in one line."""
    header, *rows = head_lines(data_path, 51)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(os.fdopen(_pipe(
        "".join([header, *rows]).encode()), "rb")))  # fmt: skip
    out = tmp_path / "eval"
    assert main(["evaluate", str(cnn_run), "-", "--out", str(out), "--families", "--no-bands"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "cannot be read a second time to find its families" in err
    assert "Traceback" not in err and not out.exists()


def test_format_flag_reads_what_the_first_line_cannot_tell(cnn_run, tmp_path, monkeypatch):
    # a CSV whose header holds a tab in a quoted name looks like a TSV to a sniffer
    text = 'Entry,Sequence,"a\tnote"\np1,MKVLAAGIVG,x\n'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(os.fdopen(_pipe(text.encode()), "rb")))
    out = tmp_path / "p.tsv"
    assert main(["predict", str(cnn_run), "-", "--out", str(out), "--format", "csv"]) == 0
    assert pd.read_csv(out, sep="\t", dtype=str)["id"].tolist() == ["p1"]


@pytest.mark.slow
def test_a_shell_pipeline_whose_reader_stops_early_ends_quietly(cnn_run, queries):
    folder, records = queries
    fasta, reference = _reference(cnn_run, folder, records)
    many = " ".join([str(fasta)] * 5)  # more output than a pipe holds, so head stops it early
    script = (
        f"zcat {many} | {sys.executable} -m ecstream.cli predict {cnn_run} - --out - "
        f"| head -n 3 > {folder}/head.tsv\n"
        'echo "status ${PIPESTATUS[1]}" >&2\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    assert (folder / "head.tsv").read_text().splitlines() == reference.splitlines()[:3]
    # head closing the pipe ends ecstream quietly, with SIGPIPE's status and no traceback
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "status 141", done.stderr


# --------------------------------------------------------------------------- 6. --max-records


def test_build_options_from_numpy_are_stored_and_wrong_types_named(data_path, tmp_path):
    """Python API: numpy's numbers build (they once failed at the manifest, after the whole
    build); a fraction given as text is refused naming the option, before any input is read."""
    import numpy as np

    store = build_store(data_path, tmp_path / "s", max_records=np.int64(50), seed=np.int32(1),
                        val=np.float32(0.25))  # fmt: skip
    assert store.manifest["build"]["max_records"] == 50
    assert sum(store.num_records(s) for s in store.splits) == 50
    for options, flag in (({"val": "0.1"}, "--val"), ({"seed": 1.5}, "--seed"),
                          ({"sample": "1"}, "--sample")):  # fmt: skip
        with pytest.raises(StoreError, match=flag):
            build_store(tmp_path / "never-read.tsv", tmp_path / "t", **options)
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("value", ["-5", "0"])
def test_non_positive_max_records_is_refused(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "x.tsv", "--out", str(tmp_path / "s"), "--max-records", value])
    assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    with pytest.raises(StoreError, match="--max-records must be at least 1"):
        BuildConfig(max_records=int(value))
    with pytest.raises(StoreError, match="--max-records"):
        build_store(tmp_path / "never-read.tsv", tmp_path / "s", max_records=int(value))
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("option", "value", "why"),
    [
        ("--lr", "nan", "must be a finite number above 0"),
        ("--lr", "-1", "must be a finite number above 0"),
        ("--lr", "inf", "must be a finite number above 0"),
        ("--lr", "abc", "must be a number, got 'abc'"),
        ("--max-time", "abc", "must be DD:HH:MM:SS"),
        ("--max-time", "00:08:00", "must be DD:HH:MM:SS"),
        ("--max-time", "00:00:00:00", "must be longer than zero"),
        ("--limit-train-batches", "1.5", "a fraction must be in (0, 1]"),
        ("--out", "", "--out must not be empty"),  # the last --out given wins
    ],
)
def test_training_settings_are_checked_before_a_run_directory_exists(
    option, value, why, small_store, tmp_path, capsys
):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(small_store.path), "--out", str(run), option, value])
    assert exit_info.value.code == 2 and why in _one_line(capsys.readouterr().err)
    assert not run.exists()


# --------------------------------------------------------------------------- 7. rich markup


def test_ids_and_ec_fields_that_look_like_markup_are_shown_as_text(data_path, tmp_path, capsys):
    good = head_lines(data_path, 200)
    odd = [
        "[/x]\t1.1.1.1\tMKVLLAAG\n",  # an id that closes a tag nobody opened
        "[bold]B2\t[/x]\tMKVLLAAG\n",  # an EC field that is not one: set aside, shown
        "C3[/]\t1.1.1.1\tMK[red]V\n",  # a sequence that is not letters: set aside, shown
    ]
    path = tmp_path / "markup.tsv"
    path.write_text("".join(good[:1] + odd + good[1:]))
    store = tmp_path / "s[/x]"
    assert main(["build", str(path), "--out", str(store)]) == 0
    out = capsys.readouterr().out
    assert "[bold]B2: '[/x]'" in out and "C3[/]: character '['" in out and f"{store}" in out
    assert main(["info", str(store)]) == 0
    assert "'[/x]'" in capsys.readouterr().out
    # an error message quoting the input
    assert main(["build", str(path), "--out", str(tmp_path / "t"), "--id-column", "[/x]"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "no column named '[/x]'" in err and "Traceback" not in err


# --------------------------------------------------------------------------- 8. control bytes


@pytest.mark.parametrize("byte", ["\x01", "\x0b", "\x1f", "\x7f"])
def test_a_stray_control_byte_is_an_invalid_character_with_its_position(byte):
    with pytest.raises(alphabet.SequenceError, match=re.escape(f"{byte!r} at position 3")) as error:
        alphabet.clean_sequence(f"MK{byte}VL")
    assert error.value.reason == alphabet.INVALID_CHARACTERS
    with pytest.raises(alphabet.SequenceError, match="at position 4"):
        alphabet.clean_sequence(f"MKV{byte}")  # not taken for white space at the end
    for data in (f"MK{byte}VL", f"MK{byte}VL".encode()):
        with pytest.raises(ValueError, match="at position 3") as error:
            alphabet.encode(data)
        assert not isinstance(error.value, alphabet.AlreadyEncodedError)


def test_control_bytes_in_files_are_named_where_they_are(cnn_run, tmp_path):
    fasta = tmp_path / "ctl.faa"
    fasta.write_text(">a\nMKV\x0bLL\n>b\nMKVLL\n")  # \x0b inside a line: not white space
    out = tmp_path / "p.tsv"
    predict_file(load_model(cnn_run), fasta, out)
    table = pd.read_csv(out, sep="\t", dtype=str, keep_default_na=False)
    assert table["error"].tolist() == [
        "character '\\x0b' at position 4 is not a residue letter",
        "",
    ]


# --------------------------------------------------------------------------- 9. fuzzing


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    fmt=st.sampled_from(input_fuzz.FORMATS),
    gz=st.booleans(),
    kind=st.sampled_from(input_fuzz.KINDS),
    where=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=3),
    values=st.binary(min_size=1, max_size=8),
)
def test_damaged_inputs_fail_clearly_or_give_the_undamaged_records(
    data_path, tmp_path, fmt, gz, kind, where, values
):
    case = input_fuzz.Case(fmt, gz, kind, tuple(where), values)
    outcome, detail = input_fuzz.judge(case, tmp_path, data_path)["outcome"]
    assert outcome not in input_fuzz.FAILURES, (case, detail)


def test_an_output_that_is_a_folder_or_unwritable_is_named_once(tmp_path, monkeypatch):
    """A file written over a folder says 'is a directory: OUT' (it said 'OUT → OUT'); a lock
    that cannot be made (a read-only folder: root is not refused by permissions, so the
    refusal is made here) says which output needed it."""
    from ecstream.atomic import atomic_open, claim
    from ecstream.errors import describe

    folder = tmp_path / "predictions.tsv"
    folder.mkdir()
    with pytest.raises(OSError) as error, atomic_open(folder, "w") as fh:
        fh.write("id\n")
    assert describe(error.value) == f"is a directory: {folder}"

    real_open = os.open

    def refused(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(PermissionError) as error, claim(tmp_path / "run"):
        pass
    said = describe(error.value)
    assert said.startswith(f"permission denied: {tmp_path / '.run.lock'}")
    assert said.endswith(f"writing {tmp_path / 'run'} needs a writable {tmp_path}")
