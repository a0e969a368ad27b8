"""ResumableBatchLoader: a loader rebuilt from a state continues the batches exactly, with or
without workers; generator states survive a weights-only checkpoint round trip."""
import itertools
import logging
import random

import numpy as np
import pytest
import torch
from _image_text_data import make_samples, write_wds_shards
from detectron2.data.samplers import TrainingSampler

from detectron2_ext.data import (
    IndexedStream,
    ResumableBatchLoader,
    WebDatasetImageText,
    WebDatasetStream,
)
from detectron2_ext.engine import capture_rng_states, restore_rng_states

SIZE = 9
UNUSABLE = 4  # this index returns None (skipped)


class Augmented(torch.utils.data.Dataset):
    """Items that draw from all three global generators (like detectron2's augmentations),
    with two aspect ratios."""

    def __len__(self):
        return SIZE

    def __getitem__(self, index):
        if index == UNUSABLE:
            return None
        return {"index": index, "width": 30 if index % 3 else 10, "height": 20,
                "draws": (random.random(), float(np.random.rand()), float(torch.rand(1)))}


def _indexed(workers, grouping=True, seed=5):
    return ResumableBatchLoader(IndexedStream(Augmented(), TrainingSampler(SIZE, seed=seed)), 2,
                                workers, aspect_ratio_grouping=grouping)


def _take(loader, count):
    return list(itertools.islice(iter(loader), count))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("grouping", [True, False])
def test_indexed_loader_resumes_exactly(workers, grouping):
    uninterrupted = _indexed(0, grouping)
    reference = _take(uninterrupted, 14)
    assert _take(_indexed(workers, grouping), 14) == reference  # the workers change nothing
    waiting = 0
    for done in (1, 4, 9):
        first = _indexed(workers, grouping)
        assert _take(first, done) == reference[:done]
        state = first.state_dict()
        waiting += sum(len(b) for b in state["pending"])
        resumed = _indexed(2 - workers, grouping)  # another number of workers, same stream
        resumed.load_state_dict(state)
        assert _take(resumed, 14 - done) == reference[done:]
        assert resumed.num_skipped == uninterrupted.num_skipped > 0  # the counter goes on
        # negative control: the stream from its start is another sequence of batches
        assert _take(_indexed(workers, grouping), 14 - done) != reference[done:]
    if grouping:
        assert waiting > 0  # some states had items waiting in an aspect-ratio bucket
    flat = [item["index"] for batch in reference for item in batch]
    assert UNUSABLE not in flat and set(flat) == set(range(SIZE)) - {UNUSABLE}


def test_reading_items_leaves_the_main_generators_alone():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    before = capture_rng_states()
    _take(_indexed(0), 5)
    after = capture_rng_states()
    assert torch.equal(before["torch"], after["torch"])
    assert torch.equal(before["numpy"]["keys"], after["numpy"]["keys"])
    assert before["python"] == after["python"]


def test_state_from_another_sampler_seed_is_followed():
    first = _indexed(0, seed=11)
    batches = _take(first, 3)
    resumed = _indexed(0, seed=99)  # e.g. SEED -1: a new random seed in the resumed run
    resumed.load_state_dict(first.state_dict())
    assert resumed.stream.seed == 11
    assert _take(resumed, 2) == _take(_indexed(0, seed=11), 5)[3:]
    assert batches


def test_negative_sampler_seed():
    # detectron2 passes SEED (-1 by default) to RepeatFactorTrainingSampler as its seed
    first = _indexed(0, seed=-1)
    batches = _take(first, 2)
    resumed = _indexed(0, seed=3)
    resumed.load_state_dict(first.state_dict())
    assert _take(resumed, 2) == _take(_indexed(0, seed=-1), 4)[2:] and batches


def test_bad_states_are_refused_with_a_reason():
    loader = _indexed(0)
    state = loader.state_dict()
    other = ResumableBatchLoader(IndexedStream(Augmented(), TrainingSampler(SIZE, seed=5)), 3)
    with pytest.raises(ValueError, match="total batch size"):
        other.load_state_dict(state)
    started = _indexed(0)
    next(iter(started))
    with pytest.raises(RuntimeError, match="before iterating"):
        started.load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        _indexed(0).load_state_dict(dict(state, version=99))


def test_state_of_another_process_count_continues_without_repeating(caplog):
    first = _indexed(0)
    _take(first, 3)
    state = first.state_dict()
    halves = [dict(state, batch_size=1, world_size=2, rank=r, position=p)
              for r, p in ((0, 3), (1, 4))]
    loader = _indexed(0)
    with caplog.at_level(logging.WARNING):
        loader.load_state_dicts(halves)
    assert "saved by 2 processes" in caplog.text and "not an exact resume" in caplog.text
    assert loader.state_dict()["position"] == 7


def _wds(tmp_path, shards=5):
    samples = make_samples(2 * shards)
    records = [{"__key__": k, "png": img, "txt": caps[0]} for k, img, caps in samples]
    paths = write_wds_shards(str(tmp_path), records, per_shard=2)
    return lambda: WebDatasetImageText(paths, shuffle_buffer=3, seed=4,
                                       transform=lambda im: torch.rand(2))


def _keys_and_draws(batches):
    return [[(s["key"], s["image"].tolist()) for s in batch] for batch in batches]


@pytest.mark.parametrize("workers", [0, 2])
def test_webdataset_loader_resumes_exactly(tmp_path, workers):
    dataset = _wds(tmp_path)
    reference = _keys_and_draws(_take(ResumableBatchLoader(WebDatasetStream(dataset()), 2,
                                                           workers), 12))
    for done in (1, 4, 7):  # 7 batches = 14 records: into the second pass over the shards
        first = ResumableBatchLoader(WebDatasetStream(dataset()), 2, workers)
        _take(first, done)
        resumed = ResumableBatchLoader(WebDatasetStream(dataset()), 2, workers)
        resumed.load_state_dict(first.state_dict())
        assert _keys_and_draws(_take(resumed, 12 - done)) == reference[done:]
        fresh = ResumableBatchLoader(WebDatasetStream(dataset()), 2, workers)
        assert _keys_and_draws(_take(fresh, 12 - done)) != reference[done:]  # control
    keys = [k for batch in reference[:5] for k, _ in batch]
    if workers == 0:  # (with 2 workers of 3 and 2 shards, their passes end at other times)
        assert sorted(keys) == sorted(f"img{i:04d}" for i in range(10))  # a pass, no duplicate


def test_webdataset_state_of_other_workers_restarts_the_pass(tmp_path, caplog):
    dataset = _wds(tmp_path)
    first = ResumableBatchLoader(WebDatasetStream(dataset()), 2, 2)
    _take(first, 5)  # 10 records: 5 from each worker, worker 1 (4 records a pass) in pass 1
    resumed = ResumableBatchLoader(WebDatasetStream(dataset()), 2, 0)
    with caplog.at_level(logging.WARNING):
        resumed.load_state_dict(first.state_dict())
    assert "2 workers per process, this run has 0" in caplog.text
    assert "restarts at the beginning of pass 0" in caplog.text  # worker 0 still in pass 0
    assert resumed.state_dict()["cursors"] == {0: [0, 0]}


def test_webdataset_workers_capped_to_the_shards(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        loader = ResumableBatchLoader(WebDatasetStream(_wds(tmp_path, shards=2)()), 2, 4)
    assert loader.num_workers == 2 and "Using 2 data-loading workers instead of 4" in caplog.text


def test_generator_states_survive_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    np.random.randn()  # a cached Gaussian in NumPy's state
    torch.manual_seed(3)
    state = capture_rng_states()
    expected = (random.random(), np.random.randn(), torch.rand(3))
    torch.save({"rng": state}, tmp_path / "c.pth")
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    restore_rng_states(torch.load(tmp_path / "c.pth", weights_only=True)["rng"])
    again = (random.random(), np.random.randn(), torch.rand(3))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])
