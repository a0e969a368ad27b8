"""Training loader for datasets that may skip samples (return None), with a skip counter.

Workers produce single samples (a map-style dataset is driven by an infinite
:class:`~detectron2.data.samplers.TrainingSampler`, shuffled and sharded per process as in
detectron2; an iterable dataset shards itself). The main process drops the Nones, counts them,
and groups the remaining samples into lists of exactly ``batch_size`` (a batch is never short:
the equivalent of ``drop_last=True``). The running total of skipped samples is

* available as ``loader.num_skipped`` (this process),
* written to detectron2's current :class:`EventStorage` as the scalar ``data/skipped_samples``
  whenever a batch is produced inside one (the trainer's metrics; per process, rank 0's shown),
* logged every ``log_period`` batches when it has grown.

A stream of only skipped samples (``max_consecutive_skips`` in a row) raises an error instead of
waiting forever.
"""
import logging
import operator
from typing import Iterator, List, Optional

import torch
from detectron2.data.build import worker_init_reset_seed
from detectron2.data.common import ToIterableDataset
from detectron2.data.samplers import TrainingSampler
from detectron2.utils.events import get_event_storage

__all__ = ["SkipCountingBatchLoader", "build_skipping_train_loader", "SKIPPED_METRIC"]

logger = logging.getLogger(__name__)

SKIPPED_METRIC = "data/skipped_samples"


def _current_storage():
    try:
        return get_event_storage()
    except AssertionError:  # no EventStorage active (e.g. outside the trainer)
        return None


class SkipCountingBatchLoader:
    """Iterable of batches (lists of samples) from a loader of single samples or None.

    Args:
        sample_loader (iterable): yields one sample or None at a time.
        batch_size (int): samples per batch.
        log_period (int): batches between log lines about skipped samples.
        max_consecutive_skips (int): raise after this many skipped samples in a row.
    """

    def __init__(self, sample_loader, batch_size: int, log_period: int = 200,
                 max_consecutive_skips: int = 10000):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sample_loader = sample_loader
        self.batch_size = batch_size
        self.log_period = log_period
        self.max_consecutive_skips = max_consecutive_skips
        self.num_skipped = 0
        self.num_samples = 0
        self.num_batches = 0
        self._logged_skipped = 0

    def _report(self) -> None:
        storage = _current_storage()
        if storage is not None:
            storage.put_scalar(SKIPPED_METRIC, self.num_skipped, smoothing_hint=False)
        if self.num_skipped > self._logged_skipped and (
                self._logged_skipped == 0 or self.num_batches % self.log_period == 0):
            logger.info("Skipped %d of %d samples so far (undecodable image or no caption)",
                        self.num_skipped, self.num_skipped + self.num_samples)
            self._logged_skipped = self.num_skipped

    def __iter__(self) -> Iterator[List[dict]]:
        batch = []
        consecutive = 0
        for sample in self.sample_loader:
            if sample is None:
                self.num_skipped += 1
                consecutive += 1
                if consecutive >= self.max_consecutive_skips:
                    raise RuntimeError(f"{consecutive} samples in a row were skipped (undecodable "
                                       "images or no captions); check the training data")
                continue
            consecutive = 0
            self.num_samples += 1
            batch.append(sample)
            if len(batch) == self.batch_size:
                self.num_batches += 1
                self._report()
                yield batch
                batch = []
        if batch:
            logger.info("Dropped the last %d samples (fewer than a batch of %d)", len(batch),
                        self.batch_size)


def build_skipping_train_loader(dataset, batch_size: int, num_workers: int = 0,
                                sampler: Optional[torch.utils.data.Sampler] = None,
                                seed: Optional[int] = None, **kwargs) -> SkipCountingBatchLoader:
    """Batches of a map-style or iterable dataset whose items may be None (skipped).

    Args:
        dataset: map-style (indexed through ``sampler``) or iterable dataset.
        batch_size (int): samples per batch **in this process**.
        num_workers (int): DataLoader worker processes.
        sampler: indices for a map-style dataset (default: an infinite shuffled
            ``TrainingSampler`` sharded across processes).
        seed (int): seed of the default sampler (None: shared random seed).
        **kwargs: passed to :class:`SkipCountingBatchLoader`.

    Returns:
        SkipCountingBatchLoader: iterable of lists of samples.
    """
    if not isinstance(dataset, torch.utils.data.IterableDataset):
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        sampler = sampler if sampler is not None else TrainingSampler(len(dataset), shuffle=True,
                                                                      seed=seed)
        dataset = ToIterableDataset(dataset, sampler)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, num_workers=num_workers,
        collate_fn=operator.itemgetter(0),  # single samples (or None) from the workers
        worker_init_fn=worker_init_reset_seed)
    return SkipCountingBatchLoader(loader, batch_size, **kwargs)
