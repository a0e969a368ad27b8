"""RegionCLIP.detect changes nothing in the model: vocabulary, boxes and threshold are per call.

Calls with two vocabularies, two box sets (and the model's own RPN regions) and different
thresholds, in alternation, must leave the model's state dict and every attribute of every
submodule as they were, and each call must give what a freshly built model gives for it alone.
"""
import pytest
import torch
from tiny_detector import CUSTOM, tiny_detector_opts, write_images

from regionclip import RegionCLIP

VOCAB_A = ["red square", "blue circle", "green triangle"]
VOCAB_B = ["cat", "remote control", "sofa", "lamp"]
BOXES_A = [[10, 10, 60, 50], [70, 30, 150, 110]]
BOXES_B = [[0, 0, 40, 40], [30, 20, 90, 100], [100, 60, 159, 119]]
CALLS = [  # (vocabulary, boxes, score threshold)
    (VOCAB_A, BOXES_A, 0.0),
    (VOCAB_B, None, 0.0),
    (VOCAB_B, BOXES_B, None),
    (VOCAB_A, None, 0.2),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("state")
    opts, weights = tiny_detector_opts(str(root))
    (image,) = write_images(str(root), [("scene.png", (120, 160))])
    return opts, weights, image


def _build(world):
    opts, weights, _ = world
    torch.manual_seed(0)  # the tiny offline RPN keeps its random initialisation
    return RegionCLIP.from_config(CUSTOM, weights=weights, opts=opts)


def _snapshot(model):
    """State dict and the attributes of every submodule (children by identity)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    attrs = {}
    for name, module in model.named_modules():
        entry = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v)
                 for k, v in vars(module).items()
                 if k not in ("_parameters", "_buffers", "_modules") and not k.endswith("hooks")}
        entry["_modules"] = {k: id(v) for k, v in module._modules.items()}
        attrs[name] = entry
    return state, attrs


def _same(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b))
    try:
        return bool(a is b or a == b)
    except Exception:  # e.g. objects without a usable __eq__
        return a is b


def _differences(before, after):
    (s0, a0), (s1, a1) = before, after
    diffs = [f"state_dict[{k}]" for k in set(s0) | set(s1)
             if k not in s0 or k not in s1 or not _same(s0[k], s1[k])]
    for name in set(a0) | set(a1):
        if name not in a0 or name not in a1:
            diffs.append(f"module {name!r}")
            continue
        for k in set(a0[name]) | set(a1[name]):
            if k not in a0[name] or k not in a1[name] or not _same(a0[name][k], a1[name][k]):
                diffs.append(f"{name or 'model'}.{k}")
    return sorted(diffs)


def _detect(rc, image, call):
    vocab, boxes, threshold = call
    return rc.detect(image, vocab, boxes=boxes, score_threshold=threshold)


def test_detect_leaves_the_model_unchanged_and_equals_a_fresh_model(world):
    image = world[2]
    fresh = [_detect(_build(world), image, call) for call in CALLS]
    assert all(fresh), "every call must detect something, or the comparison says little"
    assert {d["label"] for d in fresh[0]} <= set(VOCAB_A)
    assert {d["label"] for d in fresh[1]} <= set(VOCAB_B)
    assert {tuple(d["box"]) for d in fresh[0]} != {tuple(d["box"]) for d in fresh[2]}

    rc = _build(world)
    before = _snapshot(rc.model)
    for _ in range(2):  # alternate vocabularies, box sets and thresholds, twice
        for call, expected in zip(CALLS, fresh):
            got = _detect(rc, image, call)
            assert [(d["label"], d["box"]) for d in got] == \
                [(d["label"], d["box"]) for d in expected], call
            assert [d["score"] for d in got] == pytest.approx([d["score"] for d in expected],
                                                              rel=1e-6, abs=1e-7)
    assert _differences(before, _snapshot(rc.model)) == []


def test_the_state_check_sees_a_changed_vocabulary_or_threshold(world):
    """Negative control: what the old save/restore API changed is seen by the snapshot."""
    rc = _build(world)
    before = _snapshot(rc.model)
    predictor = rc.model.roi_heads.box_predictor
    predictor.set_test_embeddings(rc.encode_text(VOCAB_A))
    assert "roi_heads.box_predictor._modules" in _differences(before, _snapshot(rc.model))
    rc = _build(world)
    before = _snapshot(rc.model)
    rc.model.roi_heads.box_predictor.test_score_thresh = 0.5
    assert _differences(before,
                        _snapshot(rc.model)) == ["roi_heads.box_predictor.test_score_thresh"]
