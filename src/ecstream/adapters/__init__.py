"""Loader adapters over :class:`ecstream.Batches`: ``adapters.torch`` (a DataLoader of whole
batches) and ``adapters.keras`` (a ``keras.utils.PyDataset``). Import the one you need; this
package imports neither framework.
"""
