"""Training loaders whose position in the data stream can be saved and restored exactly.

A :class:`ResumableBatchLoader` produces the same infinite sequence of batches whether it runs
from the start or is rebuilt from a :meth:`~ResumableBatchLoader.state_dict` taken after some
batches, with any number of DataLoader workers:

* **Order.** Each process reads a deterministic stream of items. For a map-style dataset the
  stream is its sampler's (e.g. detectron2's seeded, per-process sharded ``TrainingSampler``);
  worker ``w`` of ``W`` handles stream positions ``w, w + W, ...`` and the DataLoader returns
  them in order. On resume every worker replays the sampler up to its first position (indices
  only: no image is read). A WebDataset stream (:class:`WebDatasetStream`) is per worker: the
  state keeps each worker's position in its pass.
* **Randomness.** Each item is read and augmented with the ``random``, NumPy and torch
  generators seeded from (stream seed, process rank, stream position): its augmentation does
  not depend on which worker made it or on what came before. Without workers the main
  process's generators are saved around each item and restored, so the model's random draws
  do not depend on the data.
* **Batching.** Items that are None (unreadable samples) are dropped and counted. Batches are
  formed in the main process, in stream order, either from consecutive items or, with
  aspect-ratio grouping, in two buckets (width > height or not) as detectron2 does; the state
  records the stream positions waiting in the buckets, and a restored loader reads those
  items again.

A state can only be loaded before iteration starts.
"""
import contextlib
import itertools
import logging
import math
import operator
import random
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

__all__ = ["seeded_rngs", "IndexedStream", "WebDatasetStream", "ResumableBatchLoader",
           "SKIPPED_METRIC", "STATE_VERSION",
           "approximate_position"]

logger = logging.getLogger(__name__)

SKIPPED_METRIC = "data/skipped_samples"
STATE_VERSION = 1


@contextlib.contextmanager
def seeded_rngs(*words: int, restore: bool = False):
    """Seed ``random``, NumPy's global generator and torch's CPU generator from ``words``.

    Args:
        words (int): integers (negative ones, e.g. a sampler seeded with ``SEED -1``, are taken
            modulo 2**64); equal words give equal seeds.
        restore (bool): put the previous generator states back on exit.
    """
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state()) if restore else None
    state = np.random.SeedSequence([int(w) % 2**64 for w in words]).generate_state(4)
    random.seed(int(state[0]) << 32 | int(state[1]))
    np.random.seed(state)
    torch.default_generator.manual_seed(int(state[2]) << 32 | int(state[3]))
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


def _in_worker() -> bool:
    return torch.utils.data.get_worker_info() is not None


class IndexedStream:
    """The item stream of a map-style dataset driven by an infinite sampler.

    Args:
        dataset: map-style dataset (``dataset[i]``).
        sampler: infinite iterable of indices, deterministic for its seed, already sharded for
            this process (detectron2's ``TrainingSampler`` and ``RepeatFactorTrainingSampler``).
            Its seed is read from and restored to its ``_seed`` attribute.
        map_func (callable): applied to ``dataset[i]`` (e.g. a ``DatasetMapper``); may return
            None (the item is skipped).
        seed (int): seed of the per-item generators when the sampler has no ``_seed``
            (default: a random one shared by all processes).
    """

    def __init__(self, dataset, sampler, map_func: Optional[Callable] = None,
                 seed: Optional[int] = None):
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.dataset = dataset
        self.sampler = sampler
        self.map_func = map_func
        if not hasattr(sampler, "_seed"):
            self._own_seed = int(comm.shared_random_seed() if seed is None else seed)

    @property
    def seed(self) -> int:
        """int: the stream's seed (the sampler's)."""
        return int(getattr(self.sampler, "_seed", getattr(self, "_own_seed", 0)))

    @seed.setter
    def seed(self, value: int) -> None:
        if hasattr(self.sampler, "_seed"):
            self.sampler._seed = int(value)
        else:
            self._own_seed = int(value)

    def _item(self, index: int, position: int):
        with seeded_rngs(self.seed, comm.get_rank(), position, restore=not _in_worker()):
            item = self.dataset[index]
            if self.map_func is not None and item is not None:
                item = self.map_func(item)
        return item

    def items(self, worker: int, num_workers: int, position: int,
              cursor=None) -> Iterator[tuple]:
        """``(position, item)`` for the stream positions ``p >= position`` with
        ``p % num_workers == worker``, in order (``cursor`` is unused)."""
        first = position + (worker - position) % num_workers
        indices = itertools.islice(iter(self.sampler), first, None, num_workers)
        for p, index in zip(itertools.count(first, num_workers), indices):
            yield p, self._item(index, p)

    def items_at(self, positions: List[int]) -> List:
        """The items at the given stream positions (read again, in this process)."""
        wanted = set(positions)
        found = {}
        if wanted:
            indices = itertools.islice(iter(self.sampler), max(wanted) + 1)
            for p, index in enumerate(indices):
                if p in wanted:
                    found[p] = self._item(index, p)
        return [found[p] for p in positions]

    def max_workers(self, num_workers: int) -> int:
        return num_workers


class WebDatasetStream:
    """The item stream of a :class:`~detectron2_ext.data.WebDatasetImageText`: per DataLoader
    worker, its records in order; a worker's cursor is ``(pass, records of the pass read)``.

    Every worker must have a shard of its own (``workers * processes <= shards``, see
    :meth:`max_workers`); a worker without one would end its stream and change the order in
    which the DataLoader takes the items of the others.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    @property
    def seed(self) -> int:
        return int(self.dataset.seed)

    @seed.setter
    def seed(self, value: int) -> None:
        self.dataset.seed = int(value)

    def items(self, worker: int, num_workers: int, position: int,
              cursor=None) -> Iterator[tuple]:
        epoch, skip = cursor if cursor is not None else (0, 0)
        rank = comm.get_rank()
        for epoch, count, record in self.dataset.records(worker, num_workers, epoch, skip):
            with seeded_rngs(self.seed, rank, worker, epoch, count, restore=not _in_worker()):
                item = self.dataset.convert(record)
            yield (epoch, count), item

    def items_at(self, positions: List[int]) -> List:
        raise NotImplementedError("items of a WebDataset stream cannot be read again by position")

    def max_workers(self, num_workers: int) -> int:
        """The number of workers that can be used: at most one per shard of each process."""
        usable = max(1, len(self.dataset.shards) // comm.get_world_size())
        if num_workers > usable:
            logger.info("Using %d data-loading workers instead of %d: %d shards for %d processes "
                        "give each worker one shard at least", usable, num_workers,
                        len(self.dataset.shards), comm.get_world_size())
            return usable
        return num_workers


class _WorkerStream(torch.utils.data.IterableDataset):
    """What a DataLoader worker runs: its share of the stream, tagged with its logical id."""

    def __init__(self, stream, num_workers: int, position: int, cursors: Dict[int, object]):
        self.stream = stream
        self.num_workers = num_workers
        self.position = position
        self.cursors = cursors

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        physical = info.id if info is not None else 0
        # the DataLoader asks worker 0 first: it must make the item at `position`
        worker = (physical + self.position) % self.num_workers
        for cursor, item in self.stream.items(worker, self.num_workers, self.position,
                                              self.cursors.get(worker)):
            yield worker, cursor, item


def _current_storage():
    try:
        return get_event_storage()
    except AssertionError:  # no EventStorage active (e.g. outside the trainer)
        return None


class ResumableBatchLoader:
    """Infinite batches (lists of items) of a stream, with a state to save and restore.

    Args:
        stream: :class:`IndexedStream` or :class:`WebDatasetStream`.
        batch_size (int): items per batch in this process.
        num_workers (int): DataLoader worker processes.
        aspect_ratio_grouping (bool): batch items with width > height separately from the
            others (items must have ``"width"`` and ``"height"``; map-style streams only).
        log_period (int): batches between log lines about skipped items.
        max_consecutive_skips (int): raise after this many skipped items in a row.

    The running total of skipped items is ``num_skipped``; inside an :class:`EventStorage` it
    is also written as the scalar ``data/skipped_samples`` with every batch.
    """

    def __init__(self, stream, batch_size: int, num_workers: int = 0,
                 aspect_ratio_grouping: bool = False, log_period: int = 200,
                 max_consecutive_skips: int = 10000):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if aspect_ratio_grouping and isinstance(stream, WebDatasetStream):
            raise ValueError("aspect-ratio grouping needs a map-style dataset")
        self.stream = stream
        self.batch_size = batch_size
        self.num_workers = stream.max_workers(int(num_workers))
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.log_period = log_period
        self.max_consecutive_skips = max_consecutive_skips
        self.num_skipped = self.num_samples = self.num_batches = 0
        self._logged_skipped = 0
        self._position = 0  # stream items taken by this process so far
        self._cursors: Dict[int, object] = {}  # worker -> cursor after its last item taken
        self._pending: List[List[int]] = [[], []]  # positions waiting in the buckets
        self._started = False

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """The position in the stream (plain data: ints, lists, dicts)."""
        return {"version": STATE_VERSION, "seed": self.stream.seed, "position": self._position,
                "cursors": {int(k): list(v) if isinstance(v, tuple) else v
                            for k, v in self._cursors.items()},
                "pending": [list(b) for b in self._pending], "num_workers": self.num_workers,
                "world_size": comm.get_world_size(), "rank": comm.get_rank(),
                "batch_size": self.batch_size, "num_skipped": self.num_skipped,
                "num_samples": self.num_samples, "num_batches": self.num_batches}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly the stream of ``state``, taken from a loader of the same data and
        settings in the process of the same rank (see :meth:`load_state_dicts` otherwise).

        Raises:
            RuntimeError: iteration has already started.
            ValueError: the state is of another version or batch size.
        """
        self._check_loadable(state)
        self.stream.seed = state["seed"]
        self._position = int(state["position"])
        self._pending = [list(b) for b in state["pending"]]
        self.num_skipped = self._logged_skipped = int(state["num_skipped"])
        self.num_samples, self.num_batches = int(state["num_samples"]), int(state["num_batches"])
        self._cursors = {int(k): tuple(v) if isinstance(v, list) else v
                         for k, v in state["cursors"].items()}
        if isinstance(self.stream, WebDatasetStream) and state["num_workers"] != self.num_workers:
            self._restart_pass([state], f"{state['num_workers']} workers per process, this run "
                               f"has {self.num_workers}")

    def load_state_dicts(self, states: List[dict]) -> None:
        """Continue the streams of a run's processes (``states[r]`` from rank ``r``).

        With as many processes as ``states``, this process continues its own stream exactly.
        With another number of processes the resume is approximate, and a warning says so: a
        map-style stream continues at the position that leaves no item of the earlier run
        repeated (:func:`approximate_position`, buckets emptied), a WebDataset stream restarts
        its current pass.
        """
        world = comm.get_world_size()
        if len(states) == world:
            self.load_state_dict(states[comm.get_rank()])
            return
        self._check_loadable(states[0])
        self.stream.seed = states[0]["seed"]
        if isinstance(self.stream, WebDatasetStream):
            self._restart_pass(states, f"{len(states)} processes, this run has {world}")
            return
        position = approximate_position(states, world)
        logger.warning("The data-loader state was saved by %d processes, this run has %d: the "
                       "data stream continues at position %d of each process (not an exact "
                       "resume)", len(states), world, position)
        self._position, self._pending, self._cursors = position, [[], []], {}

    def _check_loadable(self, state: dict) -> None:
        if self._started:
            raise RuntimeError("the loader state must be loaded before iterating")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data-loader state of version {state.get('version')!r}, expected "
                             f"{STATE_VERSION}")
        if state["batch_size"] * state["world_size"] != self.batch_size * comm.get_world_size():
            raise ValueError(f"the data-loader state is for batches of {state['batch_size']} x "
                             f"{state['world_size']} processes, this loader makes batches of "
                             f"{self.batch_size} x {comm.get_world_size()}: resume with the same "
                             "total batch size (SOLVER.IMS_PER_BATCH)")

    def _restart_pass(self, states: List[dict], why: str) -> None:
        epoch = min((int(c[0]) for s in states for c in s["cursors"].values()), default=0)
        logger.warning("The data-loader state was saved with %s: the WebDataset stream restarts "
                       "at the beginning of pass %d (samples of that pass may be seen twice; not "
                       "an exact resume)", why, epoch)
        self._position, self._pending = 0, [[], []]
        self._cursors = {w: (epoch, 0) for w in range(max(1, self.num_workers))}

    # ------------------------------------------------------------------ iteration

    def _report(self) -> None:
        storage = _current_storage()
        if storage is not None:
            storage.put_scalar(SKIPPED_METRIC, self.num_skipped, smoothing_hint=False)
        if self.num_skipped > self._logged_skipped and (
                self._logged_skipped == 0 or self.num_batches % self.log_period == 0):
            logger.info("Skipped %d of %d samples so far (unreadable or unusable)",
                        self.num_skipped, self.num_skipped + self.num_samples)
            self._logged_skipped = self.num_skipped

    def _bucket(self, item) -> int:
        return 0 if not self.aspect_ratio_grouping or item["width"] > item["height"] else 1

    def _items(self) -> Iterator[tuple]:
        workers = max(1, self.num_workers)
        dataset = _WorkerStream(self.stream, workers, self._position, dict(self._cursors))
        # an own generator: creating the iterator must not draw from torch's global one
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=1, num_workers=self.num_workers,
            collate_fn=operator.itemgetter(0), worker_init_fn=_worker_init,
            generator=torch.Generator().manual_seed(self.stream.seed % 2**63))
        return iter(loader)

    def __iter__(self) -> Iterator[List]:
        if self._started:
            raise RuntimeError("a ResumableBatchLoader can be iterated once")
        self._started = True
        buckets = [[], []]
        for bucket, positions in zip(buckets, self._pending):
            items = self.stream.items_at(positions) if positions else []
            bucket.extend(zip(positions, items))
        consecutive = 0
        for worker, cursor, item in self._items():
            position = self._position
            self._position += 1
            self._cursors[worker] = cursor
            if item is None:
                self.num_skipped += 1
                consecutive += 1
                if consecutive >= self.max_consecutive_skips:
                    raise RuntimeError(f"{consecutive} samples in a row were skipped (unreadable "
                                       "or unusable); check the training data")
                continue
            consecutive = 0
            self.num_samples += 1
            index = self._bucket(item)
            bucket = buckets[index]
            bucket.append((position, item))
            self._pending[index].append(position)
            if len(bucket) == self.batch_size:
                batch = [it for _, it in bucket]
                bucket.clear()
                self._pending[index] = []
                self.num_batches += 1
                self._report()
                yield batch


def _worker_init(worker_id: int) -> None:
    # items seed the generators themselves; this only makes anything else in a worker repeatable
    seed = torch.initial_seed() % 2**31
    random.seed(seed)
    np.random.seed(seed)


def approximate_position(states: List[dict], world_size: int) -> int:
    """Per-process stream position that continues, approximately, the streams of ``states``
    (one per process of a run with another number of processes): the items taken in total,
    divided evenly, rounded up (none is repeated, a few may be left out)."""
    return math.ceil(sum(int(s["position"]) for s in states) / world_size)


def build_resumable_detection_train_loader(cfg, mapper: Optional[Callable] = None
                                           ) -> ResumableBatchLoader:
    """detectron2's detection train loader of a config, as a :class:`ResumableBatchLoader`.

    Same dataset dicts, mapper (default ``DatasetMapper(cfg, True)``), sampler
    (``DATALOADER.SAMPLER_TRAIN``), batch size per process, aspect-ratio grouping and workers as
    ``build_detection_train_loader(cfg)``. Differences: the items reach the batches in sampler
    order (detectron2 interleaves the workers' chunks), each item is augmented with generators
    seeded from its stream position, and a mapper returning None skips the item (detectron2
    retries another random index).
    """
    from detectron2.data import build_detection_train_loader
    from detectron2.data.common import DatasetFromList

    args = build_detection_train_loader.from_config(cfg, mapper)
    dataset, sampler = args["dataset"], args["sampler"]
    if sampler is None:
        raise ValueError(f"DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)}: an iterable dataset has no "
                         "sampler; the resumable detection loader needs a map-style dataset")
    if isinstance(dataset, list):
        dataset = DatasetFromList(dataset, copy=False)
    world, total = comm.get_world_size(), args["total_batch_size"]
    if total % world != 0 or total < world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({total}) must be a positive multiple of the "
                         f"number of processes ({world})")
    return ResumableBatchLoader(IndexedStream(dataset, sampler, args["mapper"]), total // world,
                                args["num_workers"],
                                aspect_ratio_grouping=args["aspect_ratio_grouping"])
