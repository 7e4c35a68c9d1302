"""ecstream: EC class prediction from protein sequences, with an exact streaming data pipeline.

The Python API in brief::

    import ecstream
    store = ecstream.build_store("uniprot.tsv.gz", "store/")   # or ecstream.open_store("store/")
    for batch in store.batches("train", batch_size=64, max_length=660):
        batch.x, batch.y, batch.ids   # uint8 [B, L] tokens, int64 [B] labels, str [B]
"""

from .alphabet import AlreadyEncodedError, encode
from .batches import Batch, Batches
from .build import build_store
from .labels import LabelPolicy, parse_ec
from .store import Store, StoreError, open_store
from .version import __version__


def load_model(run, device: str | None = None, precision: str = "32"):
    """A trained run (CNN, kNN or hybrid) for prediction: ``load_model(RUN).predict(seqs)``;
    ``precision="bf16"`` scores a CNN with bfloat16 matrix products (``predict --precision``).

    Imported on use, so ``import ecstream`` does not load PyTorch.
    """
    from .predictors import load_model as load

    return load(run, device, precision)


__all__ = [
    "AlreadyEncodedError",
    "Batch",
    "Batches",
    "LabelPolicy",
    "Store",
    "StoreError",
    "__version__",
    "build_store",
    "encode",
    "load_model",
    "open_store",
    "parse_ec",
]
