"""Image-text pairs streamed from WebDataset tar shards (the layout img2dataset writes).

A shard ``NNNNN.tar`` holds, per sample, ``KEY.jpg`` (or ``.jpeg``/``.png``/``.webp``) and
``KEY.txt`` and/or ``KEY.json``. The sample's text is, in this order of preference: the JSON
document itself when it has a ``captions`` list or ``tags`` (the TSV text format), else the
``.txt`` content, else the JSON's ``caption`` string (img2dataset's metadata). A sample without
image or text, or whose image does not decode, is skipped and counted like in
:class:`~detectron2_ext.data.image_text.ImageTextTSVDataset` (None is yielded).

Shards are split across processes and DataLoader workers: with ``R`` processes of ``W`` workers,
worker ``w`` of process ``r`` reads shards ``w * R + r``, ``w * R + r + R * W``, ... of the
(per-epoch shuffled, identically on every process) shard list; at least one shard per process
is required. ``repeat=True`` (training) restarts with a new shard order after every pass.

Needs the ``webdataset`` package (``pip install webdataset``).
"""
import glob
import json
import logging
import os
import random
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from detectron2.utils import comm

from .image_text import SkipLogger, SkipSample, decode_image_bytes

__all__ = ["WebDatasetImageText", "list_shards", "iterate_shard_records", "sample_text",
           "IMAGE_EXTENSIONS"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def _webdataset():
    try:
        import webdataset
    except ImportError as e:
        raise ImportError("reading WebDataset shards needs the 'webdataset' package: "
                          "pip install webdataset (or pip install -e '.[pretrain]')") from e
    return webdataset


def list_shards(path: str) -> List[str]:
    """The tar shards of a path.

    Args:
        path (str): a folder (every ``*.tar`` in it, sorted), a brace pattern such as
            ``data/{00000..00010}.tar``, or one ``.tar`` file.

    Returns:
        list[str]: shard paths.

    Raises:
        FileNotFoundError: the path, or a shard named by a pattern, does not exist.
        ValueError: a folder without shards, or a path that is not a tar file.
    """
    if os.path.isdir(path):
        shards = sorted(glob.glob(os.path.join(path, "*.tar")))
        if not shards:
            raise ValueError(f"{path}: folder has no *.tar WebDataset shards")
        return shards
    if "{" in path:
        from braceexpand import braceexpand

        shards = list(braceexpand(path))
        missing = [s for s in shards if not os.path.isfile(s)]
        if missing:
            raise FileNotFoundError(f"{path}: {len(missing)} of {len(shards)} shards do not exist, "
                                    f"e.g. {missing[0]}")
        return shards
    if not os.path.isfile(path):
        raise FileNotFoundError(f"WebDataset path not found: {path}")
    if not path.endswith(".tar"):
        raise ValueError(f"{path}: expected a .tar shard, a folder of shards or a brace pattern")
    return [path]


def sample_text(sample: Dict[str, bytes]) -> Optional[str]:
    """The text of a raw WebDataset sample (see the module docstring), or None if it has none.

    Args:
        sample (dict): extension -> bytes, as grouped from a tar file.

    Returns:
        str or None.
    """
    meta = None
    if "json" in sample:
        text = sample["json"].decode("utf-8")
        try:
            meta = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{sample.get('__key__')}.json is not valid JSON ({e})") from e
        if isinstance(meta, dict) and ("captions" in meta or "tags" in meta):
            return text
    if "txt" in sample:
        return sample["txt"].decode("utf-8")
    if isinstance(meta, dict) and isinstance(meta.get("caption"), str):
        return meta["caption"]
    return None


class _ShardErrorHandler:
    """webdataset exception handler: log a broken shard (naming it), report it, continue."""

    def __init__(self, on_error: Optional[Callable[[Exception], None]] = None):
        self.on_error = on_error

    def __call__(self, exn: Exception) -> bool:
        logger.warning("WebDataset read error, rest of the shard skipped: %s", exn)
        if self.on_error is not None:
            self.on_error(exn)
        return True


def iterate_shard_records(shards: Sequence[str],
                          on_error: Optional[Callable[[Exception], None]] = None
                          ) -> Iterator[dict]:
    """Raw samples of shards in order: dicts of extension -> bytes plus ``__key__``/``__url__``.

    Args:
        shards (Sequence[str]): tar files.
        on_error (callable): called with each read error (a damaged shard: the rest of it is
            skipped; the error names the shard); errors are logged in any case.

    Yields:
        dict: one per sample key.
    """
    wds = _webdataset()
    stage = wds.tarfile_to_samples(handler=_ShardErrorHandler(on_error))
    yield from stage(iter([{"url": s} for s in shards]))


def _image_bytes(sample: dict) -> Tuple[Optional[bytes], Optional[str]]:
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return sample[ext], ext
    return None, None


def _shuffled(items: Iterator, buffer_size: int, rng: random.Random) -> Iterator:
    buffer = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= buffer_size:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer


class WebDatasetImageText(torch.utils.data.IterableDataset):
    """Iterable dataset of image-text pairs from WebDataset shards.

    Args:
        shards (Sequence[str]): tar files (see :func:`list_shards`).
        transform (callable): RGB PIL image -> model input; None keeps the image.
        decode_text (callable): text -> captions; None/empty skips the sample. None keeps the
            raw text in a list.
        dataset_name (str or Sequence[str]): one name, or one per shard.
        repeat (bool): loop forever (training) or stop after one pass.
        shuffle (bool): shuffle the shard order per pass and samples in a buffer.
        shuffle_buffer (int): samples held for shuffling (<= 1: no sample shuffling).
        seed (int): shard-order seed, identical on every process (default: a shared random one).

    Yields the same dicts as :class:`~detectron2_ext.data.image_text.ImageTextTSVDataset`, or
    None for a skipped sample.
    """

    def __init__(self, shards: Sequence[str], transform: Optional[Callable] = None,
                 decode_text: Optional[Callable] = None,
                 dataset_name: Union[str, Sequence[str]] = "", repeat: bool = True,
                 shuffle: bool = True, shuffle_buffer: int = 1000, seed: Optional[int] = None):
        _webdataset()
        shards = list(shards)
        if not shards:
            raise ValueError("WebDatasetImageText needs at least one shard")
        names = ([dataset_name] * len(shards) if isinstance(dataset_name, str)
                 else list(dataset_name))
        if len(names) != len(shards):
            raise ValueError(f"{len(names)} dataset names for {len(shards)} shards")
        world = comm.get_world_size()
        if len(shards) < world:
            raise ValueError(f"{len(shards)} WebDataset shards for {world} processes: every "
                             "process needs at least one shard; write smaller shards")
        self.shards = shards
        self.names = dict(zip(shards, names))
        self.transform = transform
        self.decode_text = decode_text
        self.repeat = repeat
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.seed = int(comm.shared_random_seed() if seed is None else seed)
        self._skips = SkipLogger()

    @property
    def num_skipped(self) -> int:
        """int: samples skipped so far by this process's (worker's) copy of the dataset."""
        return self._skips.num_skipped

    def shards_of(self, epoch: int, worker: int, num_workers: int) -> List[str]:
        """The shards that DataLoader worker ``worker`` of ``num_workers`` of this process reads
        in pass ``epoch`` (see the module docstring)."""
        world = comm.get_world_size()
        order = list(self.shards)
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(order)
        return order[worker * world + comm.get_rank()::world * num_workers]

    def records(self, worker: int = 0, num_workers: int = 1, epoch: int = 0,
                skip: int = 0) -> Iterator[Tuple[int, int, dict]]:
        """Raw records of one worker's stream, each with its position in the stream.

        The stream of a worker is deterministic: it depends on the seed, the process rank, the
        worker and the number of workers and processes only. Resuming it at a position reads
        the skipped records of that pass again (tar reading only: no image is decoded).

        Args:
            worker, num_workers (int): which worker's stream (of how many per process).
            epoch (int): start in this pass over the shards.
            skip (int): records of that pass to leave out (a position returned earlier).

        Yields:
            tuple: ``(epoch, count, record)``; ``count`` numbers the records of a pass from 1
            (``(epoch, count)`` is the position to pass as ``epoch``/``skip`` to continue after
            the record).
        """
        while True:
            shards = self.shards_of(epoch, worker, num_workers)
            if not shards:
                return
            records = iterate_shard_records(shards, on_error=self._read_error)
            if self.shuffle and self.shuffle_buffer > 1:
                rng = random.Random(hash((self.seed, epoch, comm.get_rank(), worker)))
                records = _shuffled(records, self.shuffle_buffer, rng)
            for count, record in enumerate(records, 1):
                if count > skip:
                    yield epoch, count, record
            if not self.repeat:
                return
            epoch, skip = epoch + 1, 0

    def _read_error(self, exn: Exception) -> None:
        # counted with the skipped samples: the rest of the shard is lost
        self._skips.skip("a WebDataset shard", f"read error, rest of the shard skipped ({exn})")

    def convert(self, record: dict) -> Optional[dict]:
        """A raw record (see :meth:`records`) -> the sample dict, or None if it is skipped."""
        key, url = record["__key__"], record["__url__"]
        where = f"{url} (key {key!r})"
        data, _ = _image_bytes(record)
        if data is None:
            self._skips.skip(where, f"no image file ({'/'.join(IMAGE_EXTENSIONS)})")
            return None
        text = sample_text(record)
        captions = None
        if text is not None:
            if self.decode_text is None:
                captions = [text] if text else None
            else:
                try:
                    captions = self.decode_text(text)
                except Exception as e:
                    raise ValueError(f"text of {where}: {e}") from e
        if captions is None or len(captions) == 0:
            self._skips.skip(where, "no caption")
            return None
        image, reason = decode_image_bytes(data)
        if image is None:
            self._skips.skip(where, reason)
            return None
        orig_size = (image.height, image.width)
        if self.transform is not None:
            try:
                image = self.transform(image)
            except SkipSample as e:
                self._skips.skip(where, str(e))
                return None
        return {"image": image, "captions": captions, "key": key, "dataset": self.names[url],
                "orig_size": orig_size}

    def __iter__(self) -> Iterator[Optional[dict]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for _, _, record in self.records(worker, workers):
            yield self.convert(record)
