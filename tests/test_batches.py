"""Exact batches from a real store: RAM and mmap byte-identical, tokens faithful, resumable."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecstream import alphabet


def _same(a, b):
    return (
        a.x.dtype == b.x.dtype == np.uint8
        and np.array_equal(a.x, b.x)
        and np.array_equal(a.y, b.y)
        and np.array_equal(a.ids, b.ids)
    )


@pytest.fixture(scope="module")
def sequences(small_store):
    """id → (sequence letters, label) read straight from the Arrow shards."""
    import pyarrow as pa

    out = {}
    for split in ("train", "val", "test"):
        for shard in small_store.manifest["splits"][split]["shards"]:
            table = pa.ipc.open_file(str(small_store.path / shard)).read_all()
            for rid, seq, label in zip(
                *(table[c].to_pylist() for c in ("id", "sequence", "label")), strict=True
            ):
                out[rid] = (seq.decode(), label)
    return out


@settings(max_examples=25, deadline=None)
@given(
    split=st.sampled_from(["train", "val", "test"]),
    batch_size=st.integers(1, 200),
    max_length=st.integers(1, 900),
    shuffle=st.booleans(),
    bucket=st.booleans(),
    seed=st.integers(0, 1000),
    epoch=st.integers(0, 3),
    padding=st.sampled_from(["post", "pre"]),
    truncating=st.sampled_from(["post", "pre"]),
)
def test_ram_and_mmap_give_byte_identical_batches(small_store, **kw):
    ram = list(small_store.batches(in_memory=True, **kw))
    mapped = list(small_store.batches(in_memory=False, **kw))
    assert (
        len(ram)
        == len(mapped)
        == math.ceil(small_store.single_class_records(kw["split"]) / kw["batch_size"])
    )
    assert all(_same(a, b) for a, b in zip(ram, mapped, strict=True))


@pytest.mark.parametrize(("bucket", "span_rows"), [(False, 8192), (True, 8192), (True, 15)])
def test_read_in_order_random_access_and_a_copy_give_the_same_batches(
    small_store, bucket, span_rows, monkeypatch
):
    """Batches read in order (looked up 32 steps at a time, or as many as ``SPAN_ROWS`` records
    allow: 2 here) equal those read one step at a time in reverse and those of a pickled copy
    taken mid-epoch; what a batch hands out is its own (changing it changes no later read)."""
    import pickle

    import ecstream.batches

    monkeypatch.setattr(ecstream.batches, "SPAN_ROWS", span_rows)
    kw = {"batch_size": 7, "max_length": 300, "seed": 5, "bucket": bucket}
    in_order = list(small_store.batches("train", **kw))
    assert len(in_order) > 40  # more than one lookahead of steps
    alone = small_store.batches("train", **kw)
    for step in reversed(range(len(alone))):
        assert _same(alone[step], in_order[step])
    read = small_store.batches("train", **kw)
    first = [read[s] for s in range(10)]
    first[3].y[:] = -1
    first[3].lengths[:] = 0
    assert _same(read[3], in_order[3]) and np.array_equal(read[3].lengths, in_order[3].lengths)
    copy = pickle.loads(pickle.dumps(read))  # as a spawned loader worker receives it
    for step in range(10, 45):
        assert _same(copy[step], in_order[step])
    assert all(_same(a, b) for a, b in zip(first[:3], in_order[:3], strict=True))
    with pytest.raises(IndexError, match="out of range"):
        read[len(read)]


@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("truncating", ["post", "pre"])
def test_tokens_are_the_sequence_padded_and_truncated_as_asked(
    small_store, sequences, padding, truncating
):
    L = 300
    for batch in small_store.batches("val", max_length=L, padding=padding, truncating=truncating):
        assert batch.x.shape[1] == L
        for row, rid, y, n in zip(batch.x, batch.ids, batch.y, batch.lengths, strict=True):
            seq, label = sequences[rid]
            assert y == label and n == len(seq)
            kept = seq[:L] if truncating == "post" else seq[-L:]
            tokens = alphabet.encode(kept)
            body = row[: len(kept)] if padding == "post" else row[L - len(kept) :]
            pad = row[len(kept) :] if padding == "post" else row[: L - len(kept)]
            assert np.array_equal(body, tokens) and not pad.any()
            assert (body != 0).all()  # unknown residues (X, U, …) never look like padding


def test_len_is_steps_and_num_samples_is_records(small_store):
    n = small_store.single_class_records("train")
    b = small_store.batches("train", batch_size=64)
    assert len(b) == math.ceil(n / 64) and b.num_samples == n
    sizes = [len(x) for x in b]
    assert sum(sizes) == n and sizes[-1] == n - 64 * (len(b) - 1)
    dropped = small_store.batches("train", batch_size=64, drop_last=True)
    assert len(dropped) == n // 64 and dropped.num_samples == n // 64 * 64


def test_bucketed_width_is_the_longest_capped_and_rounded_to_8(small_store):
    for batch in small_store.batches("train", bucket=True, max_length=500):
        longest = min(int(batch.lengths.max()), 500)
        assert batch.x.shape[1] == min(500, -(-longest // 8) * 8)


def test_bucketing_cuts_padding(small_store):
    def padded(bucket):
        cells = pads = 0
        for b in small_store.batches("train", bucket=bucket):
            cells += b.x.size
            pads += int((b.x == 0).sum())
        return pads / cells

    assert padded(True) < 0.05 < 0.3 < padded(False)


def test_state_dict_resumes_the_identical_remaining_stream(small_store):
    kw = {"batch_size": 50, "seed": 7, "epoch": 2, "bucket": True}
    full = list(small_store.batches("train", **kw))
    b = small_store.batches("train", **kw)
    it = iter(b)
    for _ in range(5):
        next(it)
    state = b.state_dict()
    assert len(json.dumps(state)) < 1024
    resumed = small_store.batches("train", in_memory=True, **kw)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    rest = list(resumed)
    assert len(rest) == len(full) - 5
    assert all(_same(a, b) for a, b in zip(rest, full[5:], strict=True))


def test_state_of_another_stream_is_refused(small_store):
    state = small_store.batches("train", seed=1).state_dict()
    with pytest.raises(ValueError, match="seed: the state's 1, these batches' 2"):
        small_store.batches("train", seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="split"):
        small_store.batches("val", seed=1).load_state_dict(state)
    # another order: the opt-in block shuffle, or another block, is another stream
    blocked = small_store.batches("train", seed=1, block=1024).state_dict()
    for other in (state, small_store.batches("train", seed=1, block=512).state_dict()):
        with pytest.raises(ValueError, match="settings"):
            small_store.batches("train", seed=1, block=1024).load_state_dict(other)
    with pytest.raises(ValueError, match="settings"):
        small_store.batches("train", seed=1, block=1024, blocks=8).load_state_dict(blocked)


def test_a_refused_state_or_epoch_leaves_the_stream_where_it_was(small_store):
    """A state that does not fit (a step outside its epoch, a damaged or foreign object) and an
    impossible epoch start are refused with the stream unchanged: its state and its batches."""
    b = small_store.batches("train", batch_size=64, seed=1, epoch=3)
    expected = [x.ids for x in small_store.batches("train", batch_size=64, seed=1, epoch=3)]
    other = small_store.batches("train", batch_size=64, seed=1, epoch=7).state_dict()
    before = b.state_dict()
    refused = [
        {**other, "step": 999},
        {k: v for k, v in other.items() if k != "split"},
        [("format", other["format"])],
    ]
    for state in refused:
        with pytest.raises(ValueError):
            b.load_state_dict(state)
        assert b.state_dict() == before
    with pytest.raises(ValueError):
        b.set_epoch(5, -1)
    assert b.state_dict() == before
    assert all(np.array_equal(x.ids, y) for x, y in zip(b, expected, strict=True))


def test_epochs_reorder_but_keep_the_records(small_store):
    b = small_store.batches("val", batch_size=32)
    first = np.concatenate([x.ids for x in b])
    b.set_epoch(1)
    second = np.concatenate([x.ids for x in b])
    assert not np.array_equal(first, second)
    assert sorted(first) == sorted(second)
    again = np.concatenate([x.ids for x in b])  # a completed epoch rewinds
    assert np.array_equal(second, again)


def test_batches_of_a_split_hold_only_that_split(small_store):
    val_ids = {i for x in small_store.batches("val") for i in x.ids}
    train_ids = {i for x in small_store.batches("train") for i in x.ids}
    assert val_ids and train_ids and not val_ids & train_ids


def test_unknown_split_is_a_clear_error(small_store):
    with pytest.raises(KeyError, match=r"no split 'validation'.*train, val, test"):
        small_store.batches("validation")


@pytest.mark.parametrize("global_batch", [False, True])
@pytest.mark.parametrize(("before", "after"), [(4, 2), (4, 8), (3, 1)])
def test_a_state_resumes_on_another_number_of_ranks(small_store, before, after, global_batch):
    """Checkpointed by 4 ranks, continued by 2 or 8: exactly the records not seen yet, each once,
    from a state under 1 KB that is the same on every rank."""
    kw = {"batch_size": 48 if global_batch else 20, "seed": 5, "epoch": 1, "bucket": True,
          "global_batch": global_batch}  # fmt: skip
    ranks = [small_store.batches("train", rank=r, world_size=before, **kw) for r in range(before)]
    seen = []
    for b in ranks:
        stream = iter(b)
        seen += [i for _ in range(3) for i in next(stream).ids]
    states = [json.dumps(b.state_dict()) for b in ranks]
    assert len(set(states)) == 1 and len(states[0]) < 1024
    for r in range(after):
        resumed = small_store.batches("train", rank=r, world_size=after, **kw)
        resumed.load_state_dict(json.loads(states[0]))
        seen += [i for batch in resumed for i in batch.ids]
    everything = [i for batch in small_store.batches("train", **kw) for i in batch.ids]
    assert sorted(seen) == sorted(everything) and len(set(seen)) == len(seen)


def test_a_state_of_the_previous_format_still_resumes(small_store):
    """States saved before elastic resume (format v1: a rank's step) load as before, and on
    another world size too."""
    kw = {"batch_size": 30, "seed": 2, "epoch": 0}
    full = list(small_store.batches("train", rank=1, world_size=2, **kw))
    old = {
        "format": "ecstream-batches/v1", "split": "train",
        "fingerprint": small_store.fingerprint("train"), "seed": 2, "epoch": 0, "step": 4,
        "rank": 1, "world_size": 2, "records": small_store.single_class_records("train"),
        "settings": {k: v for k, v in small_store.batches("train", **kw).settings.to_dict().items()
                     if k != "global_batch"},
    }  # fmt: skip
    same = small_store.batches("train", rank=1, world_size=2, **kw)
    same.load_state_dict(old)
    assert all(_same(a, b) for a, b in zip(list(same), full[4:], strict=True))
    one = small_store.batches("train", **kw)
    one.load_state_dict(old)
    assert one.num_samples == small_store.single_class_records("train") - 8 * 30


def test_many_shards_give_the_batches_of_one(small_store, data_path, tmp_path, monkeypatch):
    """A split's shards side by side in one address range: a store cut into many small shards
    streams the same bytes as one shard per split, memory-mapped or in RAM."""
    import functools

    import ecstream
    from ecstream import build, shards

    cut = functools.partial(shards.SplitWriter, shard_rows=256, batch_rows=64)
    monkeypatch.setattr(build, "SplitWriter", cut)
    many = ecstream.build_store(data_path, tmp_path / "many", max_records=3000)
    # one shard of single-class rows, one of the rows spanning classes
    assert len(many.shard_paths("train")) > 5 and len(small_store.shard_paths("train")) == 2
    for split in ("train", "val"):
        assert many.fingerprint(split) == small_store.fingerprint(split)
        for kw in ({"bucket": True, "seed": 3}, {"in_memory": True, "padding": "pre"}):
            ours = list(many.batches(split, batch_size=70, **kw))
            theirs = list(small_store.batches(split, batch_size=70, **kw))
            assert all(_same(a, b) for a, b in zip(ours, theirs, strict=True))


def test_batch_arguments_of_the_wrong_type_are_named(small_store):
    """Python API: a float where a whole number belongs is refused when the batches are made,
    naming it (it failed inside numpy or Arrow at the first batch, or never); numpy's whole
    numbers are whole."""
    for name, value in (("batch_size", 2.5), ("max_length", 2.5), ("block", 1.5),
                        ("world_size", 2.0), ("rank", 1.0), ("seed", 0.5)):  # fmt: skip
        with pytest.raises(TypeError, match=f"{name} must be a whole number"):
            small_store.batches("train", **{name: value})
    b = small_store.batches("train", batch_size=np.int64(32), seed=np.int32(1))
    assert json.loads(json.dumps(b.state_dict()))["settings"]["batch_size"] == 32


def test_a_step_out_of_range_is_named_as_given(small_store):
    b = small_store.batches("val", batch_size=64)
    assert np.array_equal(b[-1].ids, b[len(b) - 1].ids)  # from the end, as a list
    with pytest.raises(IndexError, match=f"step {-len(b) - 1} out of range"):
        b[-len(b) - 1]
