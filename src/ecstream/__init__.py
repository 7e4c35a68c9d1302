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


def load_model(run, device: str | None = None):
    """A trained run (CNN, kNN or hybrid) for prediction: ``load_model(RUN).predict(seqs)``.

    Imported on use, so ``import ecstream`` does not load PyTorch.
    """
    from .predictors import load_model as load

    return load(run, device)


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
