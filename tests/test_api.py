"""The Python API: identity with CLIP on whole images, text embeddings, detection, bad input."""
import os

import numpy as np
import pytest
import torch
from conftest import REPO
from tiny_clip import TINY, TINY_OPTS, write_tiny_clip

from regionclip import RegionCLIP
from regionclip.clip import build_clip_from_state_dict
from regionclip.clip.prompts import PROMPT_TEMPLATES
from regionclip.clip.tokenizer import tokenize

ZS = os.path.join(REPO, "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd_zsinf.yaml")
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    arch, weights = write_tiny_clip(str(folder))
    rc = RegionCLIP.from_config(ZS, weights=weights, opts=TINY_OPTS + [
        "MODEL.CLIP.ARCH", arch, "MODEL.CLIP.CROP_REGION_TYPE", "GT",
        "MODEL.CLIP.TEXT_EMB_PATH", "", "INPUT.MIN_SIZE_TEST", "224", "INPUT.MAX_SIZE_TEST", "224"])
    clip = build_clip_from_state_dict(torch.load(weights), text_heads=TINY.text.heads,
                                      visual_heads=TINY.visual.heads).eval()
    return rc, clip


def test_whole_image_region_equals_clip_image_embedding(tiny):
    rc, clip = tiny
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    region = rc.encode_regions(image, [[0, 0, 224, 224]])
    x = (torch.as_tensor(image).permute(2, 0, 1).float() / 255.0 - MEAN) / STD
    with torch.no_grad():
        expected = clip.encode_image(x[None])
    assert region.shape == (1, 64)
    torch.testing.assert_close(region, expected, rtol=1e-4, atol=1e-5)


def test_encode_text_is_the_81_template_mean(tiny):
    rc, clip = tiny
    names = ["red triangle", "cat"]
    emb = rc.encode_text(names)
    with torch.no_grad():
        for i, name in enumerate(names):
            prompts = [t.format(name) for t in PROMPT_TEMPLATES]
            ref = clip.encode_text(tokenize(prompts)).mean(0)
            torch.testing.assert_close(emb[i], ref, rtol=1e-4, atol=1e-5)
        raw = clip.encode_text(tokenize(names))
    torch.testing.assert_close(rc.encode_text(names, prompt_ensemble=False), raw, rtol=1e-4,
                               atol=1e-5)
    assert rc.encode_text(names) is emb  # cached per vocabulary


def test_encode_text_with_user_templates(tiny):
    rc, clip = tiny
    names = ["red triangle", "cat"]
    templates = ["a drawing of a {}.", "{} in the wild", "there is a {} here."]
    emb = rc.encode_text(names, templates=templates)
    with torch.no_grad():
        for i, name in enumerate(names):
            ref = clip.encode_text(tokenize([t.format(name) for t in templates])).mean(0)
            torch.testing.assert_close(emb[i], ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(emb, rc.encode_text(names))  # cached apart from the 81-template mean
    assert rc.encode_text(names, templates=tuple(templates)) is emb
    with pytest.raises(ValueError, match=r"template 1 \('a cat'\) must be a string containing"):
        rc.encode_text(names, templates=["a {}", "a cat"])
    with pytest.raises(ValueError, match="templates is empty"):
        rc.encode_text(names, templates=[])


def test_detect_given_boxes_labels_every_box_from_the_vocabulary(tiny, tmp_path):
    rc, _ = tiny
    from PIL import Image

    path = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 160, 3),
                                                      dtype=np.uint8)).save(path)
    vocab = ["square", "circle", "triangle"]
    boxes = [[10, 10, 60, 50], [70, 30, 150, 110]]
    dets = rc.detect(str(path), vocab, boxes=boxes, score_threshold=0.0)
    assert dets and all(d["label"] in vocab for d in dets)
    assert {tuple(np.round(d["box"], 3)) for d in dets} <= {tuple(map(float, b)) for b in boxes}
    assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)
    # the model is not changed (per-call class embeddings)
    assert rc.model.roi_heads.box_predictor.test_cls_score is None


def test_bad_input_is_a_clear_error(tiny, tmp_path):
    rc, _ = tiny
    with pytest.raises(ValueError, match="non-empty"):
        rc.detect(np.zeros((32, 32, 3), np.uint8), [], boxes=[[0, 0, 8, 8]])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        rc.encode_regions(str(bad), [[0, 0, 4, 4]])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        rc.encode_regions(str(tmp_path / "missing.png"), [[0, 0, 4, 4]])
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        rc.encode_regions(np.zeros((32, 32), np.uint8), [[0, 0, 4, 4]])
    with pytest.raises(ValueError, match="pass boxes"):
        rc.detect(np.zeros((32, 32, 3), np.uint8), ["cat"])
