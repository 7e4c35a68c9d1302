"""Loader adapters serve exactly the batches of plain iteration: torch DataLoader and Keras."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
from ecstream.adapters.keras import KerasBatches  # noqa: E402
from ecstream.adapters.torch import TorchBatch, loader  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Torch on one CPU thread: deterministic, and fast on a shared machine (no thread spinning)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_same(served: list, plain: list) -> None:
    """Served batches (TorchBatch or Batch) equal plain batches, byte for byte, in order."""
    assert len(served) == len(plain)
    for got, want in zip(served, plain, strict=True):
        x = np.asarray(got.x)
        assert x.dtype == np.uint8 and x.shape == want.x.shape
        assert x.tobytes() == want.x.tobytes()
        assert np.array_equal(np.asarray(got.y), want.y)
        assert list(got.ids) == want.ids.tolist()


def all_ids(store, split: str) -> Counter:
    """The ids of a split read with pyarrow, independently of ecstream's batches."""
    ids: list[str] = []
    for shard in store.manifest["splits"][split]["shards"]:
        with pa.memory_map(str(store.path / shard)) as source:
            ids += pa.ipc.open_file(source).read_all().column("id").to_pylist()
    # the batches serve the single-class rows, which a store keeps before the others
    return Counter(ids[: store.single_class_records(split)])


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("in_memory", [False, True])
def test_loader_matches_plain_iteration(small_store, in_memory, num_workers):
    args = dict(batch_size=100, max_length=660, shuffle=True, bucket=True, seed=5, epoch=1)
    plain = list(small_store.batches("train", **args))
    batches = small_store.batches("train", in_memory=in_memory, **args)
    served = list(loader(batches, num_workers=num_workers, pin_memory=False))
    assert all(isinstance(b, TorchBatch) for b in served)
    assert all(b.x.dtype == torch.uint8 and b.y.dtype == torch.int64 for b in served)
    assert len({b.x.shape[1] for b in served}) > 1  # bucketing: widths vary, still identical
    assert_same(served, plain)


def test_full_ec_targets_cross_from_workers_as_the_same_tensors(small_store):
    """A full-EC run's targets are made in the workers (as arrays) and reach the main process
    as tensors: multi-hot ``y`` and the ``known`` levels equal those computed from plain
    iteration's EC numbers, with 2 workers as with none."""
    from ecstream.labels import ECVocabulary
    from ecstream.train import ECTargets

    args = dict(batch_size=50, max_length=300, shuffle=True, seed=2, multi_class=True)
    plain = list(small_store.batches("val", **args))
    vocab = ECVocabulary.from_texts([ec for b in plain for ec in b.ecs.tolist()])
    targets = ECTargets(vocab)
    for workers in (0, 2):
        batches = small_store.batches("val", **args)
        served = list(loader(batches, num_workers=workers, pin_memory=False, targets=targets))
        assert len(served) == len(plain)
        for got, want in zip(served, plain, strict=True):
            y, known = vocab.targets(want.ecs.tolist())
            assert got.y.dtype == torch.uint8 and got.known.dtype == torch.bool
            assert np.array_equal(got.y.numpy(), y) and np.array_equal(got.known.numpy(), known)
            assert got.x.numpy().tobytes() == want.x.tobytes()


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@settings(max_examples=8, deadline=None)
@given(
    batch_size=st.integers(5, 120),
    bucket=st.booleans(),
    shuffle=st.booleans(),
    window=st.integers(1, 8),
    num_workers=st.sampled_from([0, 1, 2, 3]),
    seed=st.integers(0, 2**16),
)
def test_every_record_once_per_epoch(
    small_store, batch_size, bucket, shuffle, window, num_workers, seed
):
    expected = all_ids(small_store, "test")
    batches = small_store.batches(
        "test", batch_size=batch_size, bucket=bucket, shuffle=shuffle, window=window, seed=seed
    )
    data = loader(batches, num_workers=num_workers, pin_memory=False)
    for epoch in (0, 1):
        data.sampler.set_epoch(epoch)  # as Lightning does, with persistent workers
        served = list(data)
        assert len(served) == len(batches)
        assert Counter(i for b in served for i in b.ids) == expected
        assert sum(len(b.y) for b in served) == batches.num_samples == sum(expected.values())


def test_loader_resumes_mid_epoch(small_store):
    args = dict(batch_size=128, max_length=400, shuffle=True, seed=3, epoch=2)
    plain = list(small_store.batches("train", **args))
    first = small_store.batches("train", **args)
    stream = iter(first)
    for _ in range(5):
        next(stream)
    state = first.state_dict()
    assert state["step"] == 5

    resumed = small_store.batches("train", **args)
    resumed.load_state_dict(state)
    data = loader(resumed, num_workers=2, pin_memory=False)
    data.sampler.set_epoch(2)  # Lightning calls this at the start of the resumed epoch
    assert len(data) == len(plain)  # len() is the epoch's, as Lightning expects on resume
    assert_same(list(data), plain[5:])
    # the completed epoch rewinds: the next pass is the whole epoch again
    assert_same(list(data), plain)


def test_a_loop_through_the_loader_saves_its_state_by_the_steps_it_took(small_store):
    """The loader's workers iterate copies, so the Batches object stays at the epoch's start;
    ``state_dict(step)`` is the state after the batches the loop took, and resumes there."""
    args = dict(batch_size=128, max_length=400, shuffle=True, seed=3, epoch=2)
    plain = list(small_store.batches("train", **args))
    b = small_store.batches("train", **args)
    for taken, _ in enumerate(loader(b, num_workers=2, pin_memory=False), start=1):
        if taken == 4:
            break
    assert b.step == 0  # what the hunt found: the object does not see the loop
    state = b.state_dict(taken)
    resumed = small_store.batches("train", **args)
    resumed.load_state_dict(state)
    # a stream resumed at step 4 stays there while a loader takes 3 more: the state is at 7
    taken = 0
    for taken, _ in enumerate(loader(resumed, num_workers=2, pin_memory=False), start=1):
        if taken == 3:
            break
    assert resumed.step == 4
    again = small_store.batches("train", **args)
    again.load_state_dict(resumed.state_dict(resumed.step + taken))
    assert_same(list(again), plain[7:])
    with pytest.raises(ValueError, match="outside this epoch"):
        b.state_dict(len(b) + 1)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_set_epoch_changes_the_order_when_shuffling(small_store, num_workers):
    args = dict(batch_size=32, max_length=200, seed=11)
    data = loader(
        small_store.batches("val", shuffle=True, **args), num_workers=num_workers, pin_memory=False
    )
    epoch0 = list(data)
    data.sampler.set_epoch(1)
    epoch1 = list(data)
    ids0 = [i for b in epoch0 for i in b.ids]
    ids1 = [i for b in epoch1 for i in b.ids]
    assert ids0 != ids1 and sorted(ids0) == sorted(ids1)
    assert_same(epoch0, list(small_store.batches("val", shuffle=True, epoch=0, **args)))
    assert_same(epoch1, list(small_store.batches("val", shuffle=True, epoch=1, **args)))

    plain = list(small_store.batches("val", shuffle=False, **args))
    fixed = loader(small_store.batches("val", shuffle=False, **args), num_workers=num_workers)
    assert_same(list(fixed), plain)
    fixed.sampler.set_epoch(1)
    assert_same(list(fixed), plain)


def test_keras_pydataset_serves_plain_batches(small_store):
    args = dict(batch_size=50, max_length=300, shuffle=True, seed=2)
    ds = KerasBatches(small_store.batches("val", **args), workers=3, max_queue_size=4)
    assert (ds.workers, ds.use_multiprocessing, ds.max_queue_size) == (3, False, 4)
    assert ds.split == "val" and len(ds) == len(small_store.batches("val", **args))
    for epoch in (0, 1):
        plain = list(small_store.batches("val", epoch=epoch, **args))
        served = [ds[i] for i in range(len(ds))]
        assert all(x.dtype == np.uint8 and y.dtype == np.int64 for x, y in served)
        assert [x.tobytes() for x, _ in served] == [b.x.tobytes() for b in plain]
        assert all(np.array_equal(y, b.y) for (_, y), b in zip(served, plain, strict=True))
        ds.on_epoch_end()
    assert ds.epoch == 2

    fixed = KerasBatches(small_store.batches("val", shuffle=False, batch_size=50))
    before = [fixed[i][0].tobytes() for i in range(len(fixed))]
    fixed.on_epoch_end()
    assert fixed.epoch == 0 and [fixed[i][0].tobytes() for i in range(len(fixed))] == before


def test_keras_refuses_batches_restored_to_the_middle_of_an_epoch(small_store):
    """fit starts each epoch at index 0: batches restored to step 5 would have served their
    whole epoch again and never the 5 skipped, silently."""
    b = small_store.batches("val", batch_size=50, shuffle=True, seed=2)
    resumed = small_store.batches("val", batch_size=50, shuffle=True, seed=2)
    resumed.load_state_dict(b.state_dict(5))
    with pytest.raises(ValueError, match="stand 250 records into epoch 0"):
        KerasBatches(resumed)
    # a state of two processes, restored on one: the step is 0, the records before it are not
    two = small_store.batches("val", batch_size=50, shuffle=True, seed=2, world_size=2)
    resumed.load_state_dict(two.state_dict(3))
    with pytest.raises(ValueError, match=r"stand \d+ records into epoch 0"):
        KerasBatches(resumed)
    resumed.load_state_dict(b.state_dict(0))
    assert KerasBatches(resumed).epoch == 0  # an epoch's start resumes


class Recorder(keras.Model):
    """A model that records the bytes of every batch it trains on."""

    seen: list[bytes]

    def train_step(self, data):
        self.seen.append(keras.ops.convert_to_numpy(data[0]).tobytes())
        return super().train_step(data)


@pytest.mark.parametrize(("workers", "use_multiprocessing"), [(1, False), (2, False), (2, True)])
def test_keras_fit_trains_on_exact_epochs(small_store, workers, use_multiprocessing):
    """fit() with Keras' parallel workers trains on the same batches, each exactly once."""
    args = dict(batch_size=32, max_length=64, shuffle=True, seed=4)
    tokens = keras.Input((64,), dtype="uint8")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(22, 2)(tokens))
    model = Recorder(tokens, keras.layers.Dense(7, activation="softmax")(pooled))
    model.seen = []
    model.compile("sgd", "sparse_categorical_crossentropy")
    ds = KerasBatches(
        small_store.batches("val", **args),
        workers=workers,
        use_multiprocessing=use_multiprocessing,
        max_queue_size=3,
    )
    model.fit(ds, epochs=2, shuffle=False, verbose=0)
    # Keras calls on_epoch_end once while fit() sets up, so fit's epochs are the stream's 1 and 2
    expected = [
        b.x.tobytes() for epoch in (1, 2) for b in small_store.batches("val", epoch=epoch, **args)
    ]
    assert model.seen == expected


def test_the_dataloaders_pinning_thread_makes_a_batch_pinned_tensors(small_store, monkeypatch):
    """On a GPU the DataLoader's pinning thread, not the training loop's, turns a worker's arrays
    into pinned tensors: its pin function must reach TorchBatch.pin_memory (a namedtuple's fields
    would come back as unpinned arrays). No CUDA here, so pinning is stood in for by a mark."""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned: list[int] = []

    def mark(tensor: torch.Tensor) -> torch.Tensor:
        pinned.append(tensor.data_ptr())
        return tensor

    monkeypatch.setattr(torch.Tensor, "pin_memory", mark)
    item = next(iter(loader(small_store.batches("train", batch_size=8), pin_memory=False)))
    arrays = TorchBatch(item.x.numpy(), item.y.numpy(), item.ids, np.ones((8, 4), dtype=bool))
    got = pin_memory(arrays)
    assert isinstance(got, TorchBatch) and got.ids == item.ids
    assert all(isinstance(t, torch.Tensor) for t in (got.x, got.y, got.known))
    # zero-copy until pinned: the very buffers of the worker's arrays were pinned
    assert pinned == [arrays.x.ctypes.data, arrays.y.ctypes.data, arrays.known.ctypes.data]
    assert got.tensors() is not None and got.tensors().x is got.x  # pinned ones pass as they are


@pytest.mark.parametrize(("accelerator", "pinned"), [("cpu", False), ("auto", True), ("gpu", True)])
def test_a_run_asks_its_loaders_to_pin_only_when_it_trains_on_a_gpu(
    small_store, monkeypatch, accelerator, pinned
):
    """The loaders of a training run ask the DataLoader to pin (its pinning thread then makes
    the tensors) where the run trains on a GPU, and not under ``--accelerator cpu`` on a
    machine that has one (pinning would start CUDA for nothing)."""
    from ecstream.train import StoreData, TrainConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    data = StoreData(small_store, TrainConfig(accelerator=accelerator))
    assert data.val_dataloader().pin_memory is pinned
