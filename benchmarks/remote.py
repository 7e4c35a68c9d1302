"""Streaming from object storage: a local S3-compatible server (moto) against local disk.

``.venv/bin/python benchmarks/run.py remote`` builds the shared data into a local store and
publishes the same store to a moto S3 server started on 127.0.0.1 by this script (nothing else
on the network). Then, in one run, one thread: an epoch of the training split from local disk
(mmap), from S3 with an empty cache (cold: every shard fetched, hashed on arrival, then read)
and from S3 again with the cache filled (warm), taking turns; and the time to open the store
and fetch every shard. The server is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import time

from common import DATA, OUTPUT, fmt, machine_info, machine_markdown, median

BATCH, LENGTH, ROUNDS = 64, 660, 3
BUCKET = "ecstream-bench"


def _epoch(store, epoch: int) -> tuple[int, float]:
    started, n = time.perf_counter(), 0
    for batch in store.batches("train", BATCH, LENGTH, epoch=epoch):
        n += len(batch)
    return n, time.perf_counter() - started


def run() -> str:
    from moto.server import ThreadedMotoServer
    from pyarrow import fs

    import ecstream

    started = time.perf_counter()
    OUTPUT.mkdir(exist_ok=True)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    cache = OUTPUT / "remote-cache"
    env = {
        "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}", "ECSTREAM_CACHE": str(cache),
    }  # fmt: skip
    os.environ.update(env)
    try:
        fs.S3FileSystem(
            endpoint_override=f"{host}:{port}", scheme="http", allow_bucket_creation=True
        ).create_dir(BUCKET)
        local_dir, uri = OUTPUT / "remote-local-store", f"s3://{BUCKET}/store"
        local = ecstream.build_store(DATA, local_dir, force=True)
        t = time.perf_counter()
        ecstream.build_store(DATA, uri)
        publish_s = time.perf_counter() - t
        size = sum(c["bytes"] for s in local.splits for c in local.shard_checksums(s))
        rates: dict[str, list[float]] = {"local disk (mmap)": [], "S3, cold cache": [],
                                         "S3, warm cache": []}  # fmt: skip
        fetch = []
        _epoch(local, 0)  # the page cache warm for local disk, as for the cache later
        for r in range(1, ROUNDS + 1):
            n, s = _epoch(local, r)
            rates["local disk (mmap)"].append(n / s)
            shutil.rmtree(cache / "shards", ignore_errors=True)
            t = time.perf_counter()
            remote = ecstream.open_store(uri)
            remote.check("train")  # every shard fetched and checked on arrival
            fetch.append(time.perf_counter() - t)
            n, s = _epoch(remote, r)
            rates["S3, cold cache"].append(n / (fetch[-1] + s))
            n, s = _epoch(ecstream.open_store(uri), r)
            rates["S3, warm cache"].append(n / s)
        identical = all(
            (a.x == b.x).all() and list(a.ids) == list(b.ids)
            for a, b in zip(local.batches("val"), ecstream.open_store(uri).batches("val"),
                            strict=True)
        )  # fmt: skip
    finally:
        server.stop()
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(OUTPUT / "remote-local-store", ignore_errors=True)
    base = median(rates["local disk (mmap)"])
    lines = [
        "## Streaming from object storage (S3 API, local server)",
        "",
        "Command: `.venv/bin/python benchmarks/run.py remote` "
        f"(this section took {(time.perf_counter() - started) / 60:.1f} min).",
        "",
        machine_markdown(machine_info()),
        f"The full shared data ({sum(local.num_records(s) for s in local.splits):,} records, "
        f"{size / 1e6:.0f} MB of shards) built once on local disk and published with "
        f"`ecstream build … --out {uri}` ({publish_s:.1f} s, build included) to a moto S3 "
        "server (`moto[server]`, `ThreadedMotoServer`) on 127.0.0.1, started and stopped by "
        f"the benchmark. One thread; an epoch of the training split, batches of {BATCH}, "
        f"length {LENGTH}, shuffled; {ROUNDS} rounds taking turns, medians. Cold: the shard "
        "cache emptied, the store opened, every shard fetched (whole, hashed with XXH3-128 on "
        "arrival, renamed into the cache), then the epoch; the time counts all of it. Warm: "
        "the cache filled, a new process state (`open_store` again).",
        "",
        "| Source | seq/s (median) | min–max | × local disk |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {fmt(median(v))} | {fmt(min(v))}–{fmt(max(v))} | {median(v) / base:.2f}× |"
            for name, v in rates.items()
        ),
        "",
        f"Fetching the shards before the first batch took {median(fetch):.2f} s (median), "
        f"{size / 1e6 / median(fetch):.0f} MB/s from the local server. Batches from S3 equal "
        f"those from local disk byte for byte: {'yes' if identical else '**NO**'} (val split, "
        "checked in this run; the tests check every split, bucketed or not, with 0 and 2 "
        "DataLoader workers). A real object store is farther away than 127.0.0.1: the cold "
        "figure is a bound on the cost of fetching and checking, not of a network.",
    ]
    return "\n".join(lines)
