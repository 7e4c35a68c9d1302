"""Stores on object storage: a real S3-compatible server (moto) on 127.0.0.1, started here.

Remote batches must be byte-identical to local ones; an outage (a TCP proxy in front of the
server, cut by the test) is ridden out by retries or fails naming the shard, never serving
other bytes; the local cache stays within its bound.
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import threading

import numpy as np
import pytest

import ecstream
from ecstream import build, shards
from ecstream import remote as remote_module
from ecstream.adapters.torch import loader
from ecstream.remote import RemoteError, is_remote

BUCKET = "ecstream-test"


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of the server; ``cut()`` drops every connection and
    refuses new ones until ``mend()``."""

    def __init__(self, target: tuple[str, int]):
        self.target, self.up = target, True
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.lock, self.open = threading.Lock(), []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self.lock:
            for s in self.open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self.open = []

    def mend(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.server.close()


def _admin(host: str, port: int, **options):
    """The test's own client of the server, outside ecstream."""
    from pyarrow import fs

    return fs.S3FileSystem(
        endpoint_override=f"{host}:{port}", scheme="http", access_key="testing",
        secret_key="testing", region="us-east-1", **options,
    )  # fmt: skip


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on 127.0.0.1 (a free port), with a bucket; stopped afterwards."""
    moto_server = pytest.importorskip("moto.server")

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (
            ("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_ENDPOINT_URL", f"http://{host}:{port}"), ("AWS_REGION", "us-east-1"),
        ):  # fmt: skip
            mp.setenv(name, value)
        _admin(host, port, allow_bucket_creation=True).create_dir(BUCKET)
        yield host, port
    server.stop()


@pytest.fixture(scope="module")
def stores(s3_server, data_path, tmp_path_factory):
    """The same records as a local store and a remote one, in several shards per split."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "SplitWriter", functools.partial(shards.SplitWriter, shard_rows=400,
                                                          batch_rows=128))  # fmt: skip
        local = ecstream.build_store(
            data_path, tmp_path_factory.mktemp("local") / "store", max_records=3000
        )
        remote = ecstream.build_store(data_path, f"s3://{BUCKET}/store", max_records=3000)
    return local, remote


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty local cache, so that shards are fetched again."""
    monkeypatch.setenv("ECSTREAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _same(a, b) -> bool:
    return np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) and list(a.ids) == list(b.ids)


def test_a_remote_build_writes_the_same_store(stores):
    local, remote = stores
    assert is_remote(remote.path) and remote.remote
    assert len(local.shard_paths("train")) > 3  # several shards: the order crosses them
    for split in ("train", "val", "test"):
        assert remote.fingerprint(split) == local.fingerprint(split)
        assert remote.shard_checksums(split) == local.shard_checksums(split)
    assert ecstream.open_store(str(remote.path)).manifest == remote.manifest


@pytest.mark.parametrize("bucket", [False, True])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_remote_batches_are_byte_identical_to_local_ones(stores, fresh_cache, split, bucket):
    local, remote = stores
    remote = ecstream.open_store(str(remote.path))  # a cold cache
    kw = {"batch_size": 50, "max_length": 500, "bucket": bucket, "seed": 3, "epoch": 1}
    mine = list(local.batches(split, **kw))
    theirs = list(remote.batches(split, **kw))
    assert len(mine) == len(theirs) and all(_same(a, b) for a, b in zip(mine, theirs, strict=True))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_remote_batches_through_dataloader_workers(stores, fresh_cache, num_workers):
    local, remote = stores
    remote = ecstream.open_store(str(remote.path))
    kw = {"batch_size": 64, "bucket": True, "seed": 1}
    mine = list(local.batches("train", **kw))
    theirs = list(loader(remote.batches("train", **kw), num_workers=num_workers))
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs, strict=True):
        assert np.array_equal(a.x, b.x.numpy()) and list(a.ids) == b.ids


def test_the_cache_stays_within_its_bound(stores, fresh_cache, monkeypatch):
    local, remote = stores
    sizes = [c["bytes"] for c in remote.shard_checksums("train")]
    monkeypatch.setenv("ECSTREAM_CACHE_BYTES", str(2 * max(sizes)))
    remote = ecstream.open_store(str(remote.path))
    kw = {"batch_size": 40, "shuffle": False}
    for a, b in zip(local.batches("train", **kw), remote.batches("train", **kw), strict=True):
        assert _same(a, b)
        cached = sum(_size(p) for p in (fresh_cache / "shards").glob("*.arrow"))
        assert cached <= 2 * max(sizes)


def _through(proxy: Proxy, remote, monkeypatch, **env) -> ecstream.Store:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("ECSTREAM_PREFETCH_THREADS", "0")  # shards are fetched as needed
    monkeypatch.setenv("ECSTREAM_REMOTE_TIMEOUT", "2")
    monkeypatch.setenv("ECSTREAM_REMOTE_PAUSE", "0.1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return ecstream.open_store(str(remote.path))


def test_a_short_outage_mid_epoch_is_ridden_out(stores, s3_server, fresh_cache, monkeypatch):
    local, remote = stores
    proxy = Proxy(s3_server)
    try:
        remote = _through(proxy, remote, monkeypatch, ECSTREAM_REMOTE_DEADLINE="30")
        kw = {"batch_size": 100, "shuffle": False}  # stored order: shards one after another
        mine = list(local.batches("train", **kw))
        theirs = []
        for step, batch in enumerate(remote.batches("train", **kw)):
            theirs.append(batch)
            if step == 5:  # in the second shard; the next ones are not fetched yet
                proxy.cut()
                threading.Timer(1.5, proxy.mend).start()
        assert len(mine) == len(theirs)
        assert all(_same(a, b) for a, b in zip(mine, theirs, strict=True))
    finally:
        proxy.close()


def test_a_long_outage_fails_naming_the_shard(stores, s3_server, fresh_cache, monkeypatch):
    local, remote = stores
    proxy = Proxy(s3_server)
    try:
        remote = _through(
            proxy,
            remote,
            monkeypatch,
            ECSTREAM_REMOTE_DEADLINE="1.5",
            ECSTREAM_PREFETCH_THREADS="1",
        )
        kw = {"batch_size": 100, "shuffle": False}
        mine = list(local.batches("train", **kw))
        served = []
        with pytest.raises(RemoteError, match=r"s3://.*/train/shard-\d{5}\.arrow: failed after"):
            for step, batch in enumerate(remote.batches("train", **kw)):
                served.append(batch)
                if step == 5:
                    proxy.cut()
        assert 5 < len(served) < len(mine)
        # nothing wrong was yielded before the error
        assert all(_same(a, b) for a, b in zip(mine, served, strict=False))
        # and the fetches queued ahead were dropped: they would each retry to their deadline
        # before the command could exit
        source = remote.split_data("train").source
        assert source._pool is None and not source._pending
    finally:
        proxy.close()


def test_damaged_bytes_on_the_server_are_never_served(stores, s3_server, fresh_cache, monkeypatch):
    """A shard changed on the server fails its checksum on arrival, naming it."""
    from pyarrow import fs

    _, remote = stores
    host, port = s3_server
    admin = fs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http")
    name = f"{BUCKET}/store/val/shard-00000.arrow"
    with admin.open_input_stream(name) as fh:
        good = fh.read()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 1
    try:
        with admin.open_output_stream(name) as fh:
            fh.write(bytes(bad))
        monkeypatch.setenv("ECSTREAM_REMOTE_DEADLINE", "0.5")
        with pytest.raises(RemoteError, match=r"val/shard-00000\.arrow.*checksum"):
            list(ecstream.open_store(str(remote.path)).batches("val"))
    finally:
        with admin.open_output_stream(name) as fh:
            fh.write(good)


def test_a_cache_entry_damaged_after_its_arrival_is_fetched_again(stores, fresh_cache):
    """The cache may be damaged (a disk, a hand); the object store still holds the checked
    bytes: the entry is downloaded anew and the batches are the local store's, instead of a
    store reported as damaged for good."""
    local, remote = stores
    args = dict(batch_size=64, shuffle=True, seed=2)
    list(ecstream.open_store(str(remote.path)).batches("val", **args))  # fills the cache
    entries = sorted((fresh_cache / "shards").glob("*.arrow"))
    assert entries

    def damage():  # one flipped byte in each entry, the size unchanged
        for entry in entries:
            data = bytearray(entry.read_bytes())
            data[len(data) // 2] ^= 1
            entry.write_bytes(bytes(data))

    damage()
    pairs = zip(ecstream.open_store(str(remote.path)).batches("val", **args),
                local.batches("val", **args), strict=True)  # fmt: skip
    assert all(_same(a, b) for a, b in pairs)
    assert all(_checksum_ok(entry) for entry in entries)
    damage()  # and a check of the store says it is sound
    from ecstream.cli import main

    assert main(["info", str(remote.path), "--verify"]) == 0
    assert all(_checksum_ok(entry) for entry in entries)


def test_a_shard_unlike_its_manifest_is_refused_after_one_download(
    stores, fresh_cache, monkeypatch
):
    """Bytes that match the manifest's checksum but not its record count are the store's
    damage: a fresh download cannot help, so it is not fetched again (a shard is ~1 GB)."""
    _, remote = stores
    data = ecstream.open_store(str(remote.path)).split_data("val")
    data.checksums[0] = {**data.checksums[0], "records": data.checksums[0]["records"] + 1}
    downloads = []
    real = remote_module._download
    monkeypatch.setattr(remote_module, "_download", lambda *a: downloads.append(a) or real(*a))
    with pytest.raises(shards.IntegrityError, match="the manifest says"):
        data.fetch_all()
    assert len(downloads) == 1


def _checksum_ok(path) -> bool:
    from ecstream.hashing import file_checksum

    return file_checksum(path)["xxh3_128"] == path.stem


def test_a_build_to_a_file_uri_gives_the_batches_of_a_local_one(
    small_store, data_path, tmp_path, fresh_cache
):
    """Any pyarrow URI is a store's place: file:// too (its folders did not exist, so its first
    shard failed as 'not found')."""
    uri = (tmp_path / "o").as_uri()
    remote = build.build_store(data_path, uri, max_records=3000)  # small_store's records
    assert is_remote(remote.path)
    assert remote.fingerprint("train") == small_store.fingerprint("train")
    args = dict(batch_size=64, shuffle=True, seed=1)
    pairs = zip(ecstream.open_store(uri).batches("train", **args),
                small_store.batches("train", **args), strict=True)  # fmt: skip
    assert all(_same(a, b) for a, b in pairs)


def test_a_remote_input_builds_the_store_of_the_local_file(small_store, data_path, tmp_path):
    """The readers take remote inputs, so build does too (it hashed the input as a local path
    first, and failed with 'no such file'); the input is read once, so no checksum is kept."""
    built = build.build_store(data_path.as_uri(), tmp_path / "s", max_records=3000)
    for split in ("train", "val", "test"):
        assert built.fingerprint(split) == small_store.fingerprint(split)
    (source,) = built.manifest["sources"]
    assert source["rows"] == 3000 and "sha256" not in source
    assert "sha256" in small_store.manifest["sources"][0]


def test_a_remote_build_refuses_to_replace_without_force(stores, data_path, monkeypatch):
    """… before it builds anything (a build may take hours)."""
    _, remote = stores
    monkeypatch.setattr(build, "staging", lambda: pytest.fail("built before refusing"))
    with pytest.raises(ecstream.StoreError, match="already exists"):
        ecstream.build_store(data_path, str(remote.path), max_records=100)


def test_cli_builds_to_and_reads_from_object_storage(s3_server, data_path, tmp_path, fresh_cache):
    from ecstream.cli import main

    uri = f"s3://{BUCKET}/cli-store"
    assert main(["build", str(data_path), "--out", uri, "--max-records", "500"]) == 0
    assert main(["info", uri, "--verify"]) == 0
    manifest = json.loads(json.dumps(ecstream.open_store(uri).manifest))
    assert manifest["records"] > 0
    # replaced with --force: a complete store again, the old shards gone
    assert main(["build", str(data_path), "--out", uri, "--max-records", "300", "--force"]) == 0
    assert ecstream.open_store(uri).manifest["rows_read"] == 300


def test_a_block_shuffle_streams_a_store_larger_than_its_cache(stores, fresh_cache, monkeypatch):
    """Opt-in locality: shuffled batches from a cache that holds a third of the split, each
    shard fetched about once per epoch, identical to local disk."""
    local, remote = stores
    sizes = [c["bytes"] for c in remote.shard_checksums("train")]
    bound = 2 * max(sizes)
    assert bound < sum(sizes) / 2
    monkeypatch.setenv("ECSTREAM_CACHE_BYTES", str(bound))
    remote = ecstream.open_store(str(remote.path))
    # blocks of a shard's records (512), one per group: the cache holds the shard in use and
    # the next, fetched ahead
    kw = {"batch_size": 50, "block": 512, "blocks": 1, "seed": 4, "bucket": True}
    fetched = []
    real = remote_module.fetch_shard
    monkeypatch.setattr(remote_module, "fetch_shard", lambda *a: fetched.append(a[0]) or real(*a))
    for a, b in zip(local.batches("train", **kw), remote.batches("train", **kw), strict=True):
        assert _same(a, b)
        cached = sum(_size(p) for p in (fresh_cache / "shards").glob("*.arrow"))
        assert cached <= bound
    # about once per epoch (a shard fetched ahead may be let go and fetched again), not a fetch
    # per batch (47 batches; a whole-split shuffle touches every shard in every batch)
    assert len(fetched) <= 3 * len(sizes), len(fetched)


def test_a_shard_let_go_between_its_arrival_and_its_opening_is_fetched_again(small_store, tmp_path):
    """Processes share the cache: another one's fetch may evict an entry this one has just been
    handed, before it opened it. It is fetched again, not reported as a damaged store."""
    import shutil

    paths, checksums = small_store.shard_paths("train"), small_store.shard_checksums("train")

    class Evicting:  # hands out a copy of the local shard, the first one deleted at once
        budget = 1 << 30
        calls = 0

        def fetch(self, k):
            self.calls += 1
            copy = tmp_path / f"cache-{self.calls}-{k}.arrow"
            shutil.copyfile(paths[k], copy)
            if self.calls == 1:
                copy.unlink()
            return copy

        def prefetch(self, shards):
            pass

    source = Evicting()
    fingerprint = small_store.fingerprint("train")
    remote = shards.SplitData("train", paths, fingerprint, checksums=checksums, source=source)
    local = shards.SplitData("train", paths, fingerprint, checksums=checksums)
    rows = np.arange(local.n)
    assert np.array_equal(remote.lengths(rows), local.lengths(rows))
    assert source.calls == len(paths) + 1


class _Failing:  # a dataset whose reads fail as a remote store's do after the deadline
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise RemoteError("s3://bucket/store/train/shard-00003.arrow: failed after 9 attempts")


def test_an_error_in_a_dataloader_worker_is_still_one_line():
    """torch re-raises a worker's exception with the worker's whole traceback in its message;
    the user sees the last line, as from the main process."""
    from torch.utils.data import DataLoader

    from ecstream.errors import describe

    with pytest.raises(RemoteError) as caught:
        next(iter(DataLoader(_Failing(), num_workers=1)))
    assert "Original Traceback" in str(caught.value)
    assert describe(caught.value) == (
        "s3://bucket/store/train/shard-00003.arrow: failed after 9 attempts"
    )


def test_predict_reads_fasta_and_parquet_from_object_storage(
    s3_server, cnn_run, data_path, tmp_path, capsys
):
    """A remote input gives the rows of the same local file: gzip FASTA (streamed), a Parquet
    file and a prefix of Parquet parts (read through the filesystem; a prefix is read as Parquet
    without being told, as a local directory is); a missing one is one line naming it."""
    import gzip
    import itertools

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ecstream.cli import main

    host, port = s3_server
    with gzip.open(data_path, "rt") as fh:
        rows = [line.rstrip("\n").split("\t") for line in itertools.islice(fh, 1, 61)]
    table = pa.table({"Entry": [r[0] for r in rows], "Sequence": [r[2] for r in rows]})
    local = tmp_path / "local"
    (local / "parts").mkdir(parents=True)
    with gzip.open(local / "in.faa.gz", "wt") as fh:
        fh.writelines(f">{rid}\n{seq}\n" for rid, _, seq in rows)
    pq.write_table(table, local / "in.parquet")
    for k in range(3):  # a dataset of three parts, in name order
        pq.write_table(table.slice(20 * k, 20), local / "parts" / f"part-{k}.parquet")
    (local / "parts" / "_delta_log").mkdir()  # hidden at any depth: not a part
    pq.write_table(table.slice(0, 5), local / "parts" / "_delta_log" / "0.checkpoint.parquet")
    pa.fs.copy_files(str(local), f"{BUCKET}/inputs", destination_filesystem=_admin(host, port))

    def predicted(source: str, name: str, *flags: str) -> str:
        out = tmp_path / f"{name}.tsv"
        assert main(["predict", str(cnn_run), source, "--out", str(out), *flags]) == 0
        return out.read_text()

    expected = predicted(str(local / "in.faa.gz"), "expected")
    assert expected.count("\n") == 61
    remote = f"s3://{BUCKET}/inputs"
    assert predicted(f"{remote}/in.faa.gz", "fasta") == expected
    assert predicted(f"{remote}/in.parquet", "parquet") == expected
    assert predicted(f"{remote}/parts", "parts", "--format", "parquet") == expected
    assert predicted(f"{remote}/parts/", "parts-by-listing") == expected  # a prefix, like a dir
    assert predicted(str(local / "parts"), "local-parts") == expected
    capsys.readouterr()
    assert main(["predict", str(cnn_run), f"{remote}/none.parquet", "--out", "x.tsv"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.parquet" in err[0] and "not found" in err[0], err


@pytest.mark.parametrize("name", ["in.faa.gz", "in.parquet"])
def test_an_outage_in_the_middle_of_a_remote_input(
    s3_server, data_path, tmp_path, monkeypatch, name
):
    """Reads of a remote input (ranged, small here) ride out a short outage with the same rows,
    and a long one fails as one error naming the object, after only right rows."""
    import gzip
    import itertools

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ecstream.predict import PREDICT_COLUMNS
    from ecstream.sources import read_rows

    host, port = s3_server
    with gzip.open(data_path, "rt") as fh:
        rows = [line.rstrip("\n").split("\t") for line in itertools.islice(fh, 1, 1501)]
    local = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(local, "wt") as fh:
            fh.writelines(f">{rid}\n{seq}\n" for rid, _, seq in rows)
    else:
        table = pa.table({"Entry": [r[0] for r in rows], "Sequence": [r[2] for r in rows]})
        pq.write_table(table, local, row_group_size=100)
    pa.fs.copy_files(
        str(local), f"{BUCKET}/outage/{name}", destination_filesystem=_admin(host, port)
    )
    monkeypatch.setattr(remote_module, "_BLOCK", 16 << 10)  # many ranged reads, not one

    def ids(chunks) -> list[str]:
        return [row[1] for chunk in chunks for row in chunk]

    expected = ids(read_rows(str(local), PREDICT_COLUMNS, chunk_rows=100))
    for deadline, outage in (("30", 1.5), ("1.5", None)):
        proxy = Proxy(s3_server)
        try:
            monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
            for key, value in (("DEADLINE", deadline), ("TIMEOUT", "2"), ("PAUSE", "0.1")):
                monkeypatch.setenv(f"ECSTREAM_REMOTE_{key}", value)
            got = []
            chunks = read_rows(f"s3://{BUCKET}/outage/{name}", PREDICT_COLUMNS, chunk_rows=100)
            try:
                for step, chunk in enumerate(chunks):
                    got.append(chunk)
                    if step == 2:
                        proxy.cut()
                        if outage:
                            threading.Timer(outage, proxy.mend).start()
            except RemoteError as error:
                assert outage is None and f"outage/{name}: failed after" in str(error)
                assert 300 <= len(ids(got)) < len(expected)
                assert ids(got) == expected[: len(ids(got))]  # nothing wrong before the error
            else:
                assert outage is not None and ids(got) == expected
        finally:
            proxy.close()


@pytest.mark.parametrize("replacement", ["same size", "shorter", "removed"])
def test_an_input_replaced_in_the_middle_of_its_reading_fails_after_only_right_rows(
    s3_server, data_path, tmp_path, monkeypatch, replacement
):
    """Every ranged read is a request of its own: an object rewritten (same size and other
    bytes, or shorter) or removed while it is read must not be read on, nor waited for as if
    the network were down (the deadline here is long)."""
    import gzip
    import itertools
    import time

    import pyarrow as pa

    from ecstream.predict import PREDICT_COLUMNS
    from ecstream.sources import read_rows

    host, port = s3_server
    admin = _admin(host, port)
    with gzip.open(data_path, "rt") as fh:
        rows = [line.rstrip("\n").split("\t") for line in itertools.islice(fh, 1, 1501)]
    text = "".join(f">{rid}\n{seq}\n" for rid, _, seq in rows)
    old, new = tmp_path / "old.faa", tmp_path / "new.faa"
    old.write_text(text)
    new.write_text(text.replace(">", ">X", 1).replace("A", "G"))  # one id and residues differ
    assert old.stat().st_size + 1 == new.stat().st_size
    new.write_text(new.read_text()[:-2] + "\n")  # the same size: only the bytes differ
    if replacement == "shorter":
        new.write_text(text[:1000])  # ends before where the reading has come to
    uri, key = f"s3://{BUCKET}/changing/in.faa", f"{BUCKET}/changing/in.faa"
    pa.fs.copy_files(str(old), key, destination_filesystem=admin)
    monkeypatch.setattr(remote_module, "_BLOCK", 16 << 10)  # many ranged reads, not one
    monkeypatch.setenv("ECSTREAM_REMOTE_DEADLINE", "120")
    expected = [row[1] for chunk in read_rows(str(old), PREDICT_COLUMNS, 100) for row in chunk]
    got, started = [], time.monotonic()
    message = "removed while" if replacement == "removed" else "changed while it was being read"
    with pytest.raises(RemoteError, match=message):
        for step, chunk in enumerate(read_rows(uri, PREDICT_COLUMNS, chunk_rows=100)):
            got += [row[1] for row in chunk]
            if step == 2:
                time.sleep(1.1)  # S3's modification time counts seconds
                if replacement == "removed":
                    admin.delete_file(key)
                else:
                    pa.fs.copy_files(str(new), key, destination_filesystem=admin)
    assert 300 <= len(got) < len(expected) and got == expected[: len(got)]
    assert time.monotonic() - started < 30  # failed at once, not at the deadline


def test_training_downloads_each_shard_once_before_the_first_epoch(
    stores, fresh_cache, monkeypatch, tmp_path
):
    """With a cache far smaller than the split, the check, the label space of a full-EC run and
    the hashes of what the run sees come from one pass: each shard downloaded once."""
    from collections import Counter

    from lightning.pytorch.callbacks import Callback

    from ecstream.train import TrainConfig, train

    _, remote = stores
    sizes = [c["bytes"] for c in remote.shard_checksums("train")]
    monkeypatch.setenv("ECSTREAM_CACHE_BYTES", str(2 * max(sizes)))
    downloads: Counter = Counter()
    download = remote_module._download

    def counted(handler, path, dest, expected):
        downloads[path.rsplit("/", 2)[-2]] += 1  # by split
        return download(handler, path, dest, expected)

    monkeypatch.setattr(remote_module, "_download", counted)
    before: dict = {}

    class Snapshot(Callback):  # before Lightning asks for any batch
        def on_fit_start(self, trainer, module) -> None:
            before.update(downloads)

    config = TrainConfig(target="ec", epochs=1, batch_size=32, limit_train_batches=2,
                         progress=False)  # fmt: skip
    train(str(remote.path), tmp_path / "run", config, callbacks=[Snapshot()])
    assert len(sizes) >= 5 and before["train"] == len(sizes)


def _size(path) -> int:
    """A cached shard's size; 0 if the prefetch thread evicted it since it was listed (a full
    suite run on a loaded machine once met one between the listing and the stat)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
