"""Training loader for datasets that may skip samples (return None), with a skip counter.

A map-style dataset is driven by an infinite :class:`~detectron2.data.samplers.TrainingSampler`
(shuffled and sharded per process as in detectron2); a
:class:`~detectron2_ext.data.WebDatasetImageText` shards itself. The main process drops the
Nones, counts them, and groups the remaining samples into lists of exactly ``batch_size`` (a
batch is never short: the equivalent of ``drop_last=True``). The running total of skipped
samples is

* available as ``loader.num_skipped`` (this process),
* written to detectron2's current :class:`EventStorage` as the scalar ``data/skipped_samples``
  whenever a batch is produced inside one (the trainer's metrics; per process, rank 0's shown),
* logged every ``log_period`` batches when it has grown.

A stream of only skipped samples (``max_consecutive_skips`` in a row) raises an error instead of
waiting forever. The loader is a :class:`~detectron2_ext.data.resumable.ResumableBatchLoader`:
its position in the data stream is saved in checkpoints and restored on resume.
"""
from typing import Optional

import torch
from detectron2.data.samplers import TrainingSampler

from .image_text_wds import WebDatasetImageText
from .resumable import SKIPPED_METRIC, IndexedStream, ResumableBatchLoader, WebDatasetStream

__all__ = ["SkipCountingBatchLoader", "build_skipping_train_loader", "SKIPPED_METRIC"]

# the name under which the pretraining loader was introduced
SkipCountingBatchLoader = ResumableBatchLoader


def build_skipping_train_loader(dataset, batch_size: int, num_workers: int = 0,
                                sampler: Optional[torch.utils.data.Sampler] = None,
                                seed: Optional[int] = None, **kwargs) -> ResumableBatchLoader:
    """Batches of a map-style dataset or a WebDataset whose items may be None (skipped).

    Args:
        dataset: map-style (indexed through ``sampler``) or a ``WebDatasetImageText``.
        batch_size (int): samples per batch **in this process**.
        num_workers (int): DataLoader worker processes.
        sampler: indices for a map-style dataset (default: an infinite shuffled
            ``TrainingSampler`` sharded across processes).
        seed (int): seed of the default sampler (None: shared random seed).
        **kwargs: passed to :class:`ResumableBatchLoader`.

    Returns:
        ResumableBatchLoader: iterable of lists of samples, with ``state_dict()``.
    """
    if isinstance(dataset, WebDatasetImageText):
        stream = WebDatasetStream(dataset)
    elif isinstance(dataset, torch.utils.data.IterableDataset):
        raise TypeError(f"{type(dataset).__name__}: the only iterable dataset the training loader "
                        "reads is WebDatasetImageText (its position can be saved); use a "
                        "map-style dataset")
    else:
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        sampler = sampler if sampler is not None else TrainingSampler(len(dataset), shuffle=True,
                                                                      seed=seed)
        stream = IndexedStream(dataset, sampler)
    return ResumableBatchLoader(stream, batch_size, num_workers, **kwargs)
