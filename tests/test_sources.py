"""Readers: every format gives the same rows from the same real slice; bad rows are counted."""

import gzip
import itertools

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import head_lines

from ecstream.skips import Skips
from ecstream.sources import (
    TRUNCATED_INPUT,
    WRONG_COLUMN_COUNT,
    Columns,
    DamagedInputError,
    InputError,
    SourceInfo,
    detect_format,
    read_rows,
)


@pytest.fixture(scope="module")
def slice_df(data_path):
    """The first 500 rows of the real data as a DataFrame."""
    return pd.read_csv(data_path, sep="\t", nrows=500, dtype=str, keep_default_na=False)


def _all(source, **kw):
    return [r for chunk in read_rows(source, **kw) for r in chunk]


def _triples(rows):
    return [(r[1], r[2], r[3]) for r in rows]


def test_real_tsv_gz_reads_in_bounded_chunks_with_line_numbers(data_path, slice_df):
    chunks = list(itertools.islice(read_rows(data_path, chunk_rows=128), 4))
    assert [len(c) for c in chunks] == [128] * 4
    first = chunks[0][0]
    assert first[0] == 2  # line 1 is the header
    assert first[1:4] == tuple(slice_df.iloc[0][["Entry", "EC number", "Sequence"]])


@pytest.mark.parametrize("fmt", ["tsv", "csv", "parquet", "parquet-dir", "dataframe", "fasta"])
def test_every_format_gives_the_same_rows(tmp_path, slice_df, fmt):
    expected = list(slice_df[["Entry", "EC number", "Sequence"]].itertuples(index=False, name=None))
    if fmt == "tsv":
        source = tmp_path / "x.tsv.gz"
        slice_df.to_csv(source, sep="\t", index=False)
    elif fmt == "csv":
        source = tmp_path / "x.csv"
        slice_df.to_csv(source, index=False)
    elif fmt == "parquet":
        source = tmp_path / "x.parquet"
        slice_df.to_parquet(source)
    elif fmt == "parquet-dir":
        source = tmp_path / "parts"
        source.mkdir()
        table = pa.Table.from_pandas(slice_df)
        pq.write_table(table.slice(0, 200), source / "part-00000.parquet")
        pq.write_table(table.slice(200), source / "part-00001.parquet")
        (source / "_SUCCESS").write_text("")
    elif fmt == "dataframe":
        source = slice_df
    else:
        source = tmp_path / "x.faa"
        with open(source, "w") as fh:
            for rid, _, seq in expected:
                fh.write(f">{rid} some description\n")
                fh.writelines(seq[i : i + 60] + "\n" for i in range(0, len(seq), 60))
        expected = [(rid, None, seq) for rid, _, seq in expected]
    rows = _all(source, chunk_rows=64)
    assert _triples(rows) == expected


def test_columns_match_case_insensitively_and_can_be_chosen(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("ENTRY\tec NUMBER\tsequence\tOther\nA1\t1.1.1.1\tMKV\tz\n")
    assert _triples(_all(path)) == [("A1", "1.1.1.1", "MKV")]
    cols = Columns(id="Other", ec="EC number", sequence="Sequence")
    assert _triples(_all(path, columns=cols)) == [("z", "1.1.1.1", "MKV")]


def test_unknown_column_names_the_file_columns_and_flag(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("Entry\tEC\tSequence\nA1\t1.1.1.1\tMKV\n")
    with pytest.raises(InputError, match=r"x.tsv:1: no column named 'EC number'.*--ec-column"):
        _all(path)


def test_wrong_column_count_is_counted_with_file_and_line(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("Entry\tEC number\tSequence\nA1\t1.1.1.1\tMKV\nA2\t1.1.1.1\nA3\t2.1.1.1\tMKL\n")
    skips = Skips()
    rows = _all(path, skips=skips)
    assert [r[1] for r in rows] == ["A1", "A3"]
    assert skips.counts[WRONG_COLUMN_COUNT] == 1
    assert skips.examples[WRONG_COLUMN_COUNT][0].startswith(f"{path}:3")


def test_truncated_gzip_is_refused_or_with_allow_partial_keeps_the_complete_rows(
    data_path, tmp_path
):
    raw = "".join(head_lines(data_path, 4000)).encode()
    broken = tmp_path / "cut.tsv.gz"
    whole = gzip.compress(raw)
    broken.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(DamagedInputError, match=r"cut.tsv.gz:\d+: the gzip data end early"):
        _all(broken)
    skips, info = Skips(), SourceInfo()
    rows = _all(broken, skips=skips, allow_partial=True, info=info)
    assert skips.counts[TRUNCATED_INPUT] == 1
    assert "reading stopped" in skips.examples[TRUNCATED_INPUT][0]
    assert len(rows) > 1000 and info.rows == len(rows)
    assert info.partial() == {"stopped_at": info.stopped, "rows_kept": len(rows)}
    # every row read is a complete, untruncated row of the original
    original = {line.split("\t")[0]: line.split("\t")[2] for line in raw.decode().splitlines()[1:]}
    assert all(original[r[1]] == r[3] for r in rows)


def test_fasta_records_carry_their_header_line(tmp_path):
    path = tmp_path / "x.fasta"
    path.write_text(">a desc\nMKV\nLL\n\n>b\nAC\n")
    assert [(r[0], r[1], r[3]) for r in _all(path)] == [(1, "a", "MKVLL"), (5, "b", "AC")]


def test_text_before_the_first_fasta_header_is_an_error(tmp_path):
    path = tmp_path / "x.fasta"
    path.write_text("MKV\n>a\nAC\n")
    with pytest.raises(InputError, match=r"x.fasta:1"):
        _all(path)


def test_format_detection_by_name_then_content(tmp_path):
    (tmp_path / "noext").write_text(">a\nMKV\n")
    (tmp_path / "tabbed").write_text("Entry\tEC number\tSequence\n")
    assert detect_format(tmp_path / "noext") == "fasta"
    assert detect_format(tmp_path / "tabbed") == "tsv"
    with pytest.raises(InputError, match="no such file"):
        detect_format(tmp_path / "missing.tsv")
