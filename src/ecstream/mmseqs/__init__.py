"""MMseqs2 for ecstream: the binary, cluster splits, searches of a store split, leakage.

- :mod:`.binary`: locate ``mmseqs``, run it with its output logged, fail with a clear message;
- :mod:`.cluster`: split records by whole MMseqs2 clusters (a step of a build);
- :mod:`.search`: a store split as a target database, best hits per query, the search cache;
- :mod:`.leakage`: each val/test sequence's highest identity to the training split.

Identity everywhere is MMseqs2's ``fident``: identical residues / alignment columns of a local
alignment (``--seq-id-mode 0``), the same measure ``--min-seq-id`` uses when clustering.
"""
