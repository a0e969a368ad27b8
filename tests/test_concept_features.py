"""tools/extract_concept_features.py against an independent open_clip computation."""
import os
import subprocess
import sys
import warnings

import open_clip
import pytest
import torch

from regionclip.checkpoint import convert_openai_clip
from regionclip.clip import PROMPT_TEMPLATES
from regionclip.tools.extract_concept_features import expand_concepts, read_concepts_file, run

warnings.filterwarnings("ignore", category=FutureWarning)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZSINF_CONFIG = os.path.join(ROOT, "configs", "LVISv1-InstanceSegmentation",
                            "CLIP_fast_rcnn_R_50_C4_zsinf.yaml")
# COCO OVD novel classes (Bansal et al. / OVR-CNN split) in COCO category-id order.
COCO_17 = ["airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard",
           "skateboard", "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random tiny open_clip CLIP (QuickGELU like OpenAI's), saved as an OpenAI state dict."""
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        16, {"layers": [1, 1, 1, 1], "width": 8, "image_size": 32},
        {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
        quick_gelu=True).eval()
    with torch.no_grad():
        model.text_projection.normal_()
        model.positional_embedding.normal_(std=0.1)
    path = tmp_path_factory.mktemp("weights") / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return model, str(path)


_REFERENCE = {}


def reference(model, names):
    """Per name: 81 prompts formatted here, encoded one at a time, mean of raw embeddings."""
    assert len(PROMPT_TEMPLATES) == 81 and PROMPT_TEMPLATES[:2] == ("{}.", "a photo of a {}.")
    rows = []
    with torch.no_grad():
        for name in names:
            if (id(model), name) not in _REFERENCE:
                prompts = [template.format(name) for template in PROMPT_TEMPLATES]
                embs = [model.encode_text(open_clip.tokenize([p]), normalize=False)[0]
                        for p in prompts]
                _REFERENCE[id(model), name] = torch.stack(embs).mean(0)
            rows.append(_REFERENCE[id(model), name])
    return torch.stack(rows)


def test_direct_form_matches_reference(tiny_clip, tmp_path):
    model, weights = tiny_clip
    out = tmp_path / "emb.pth"
    saved = run(["--concepts", "cat", "traffic light", "--weights", weights, "--output", str(out),
                  "--batch-size", "50", "--device", "cpu"])
    loaded = torch.load(out, weights_only=True)
    assert loaded.shape == (2, 16) and loaded.dtype == torch.float32
    torch.testing.assert_close(loaded, reference(model, ["cat", "traffic light"]),
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(saved, loaded)


def test_single_concept_is_squeezed(tiny_clip, tmp_path):
    model, weights = tiny_clip
    out = tmp_path / "one.pth"
    run(["--concepts", "cat", "--weights", weights, "--output", str(out), "--device", "cpu"])
    loaded = torch.load(out, weights_only=True)
    assert loaded.shape == (16,)
    torch.testing.assert_close(loaded, reference(model, ["cat"])[0], rtol=1e-5, atol=1e-5)


def test_original_invocation_with_converted_checkpoint(tiny_clip, tmp_path):
    model, weights = tiny_clip
    checkpoint, _ = convert_openai_clip(weights)  # lang_encoder.* keys, like RegionCLIP files
    converted = tmp_path / "regionclip_like.pth"
    torch.save(checkpoint, converted)
    input_dir, output_dir = tmp_path / "concepts", tmp_path / "out"
    input_dir.mkdir()
    (input_dir / "concepts.txt").write_text("  traffic light \ncat\n")
    run(["--config-file", ZSINF_CONFIG, "MODEL.WEIGHTS", str(converted),
          "MODEL.CLIP.GET_CONCEPT_EMB", "True", "INPUT_DIR", str(input_dir),
          "OUTPUT_DIR", str(output_dir), "MODEL.CLIP.OFFLINE_RPN_CONFIG",
          os.path.join(ROOT, "configs", "LVISv1-InstanceSegmentation",
                       "mask_rcnn_R_50_FPN_1x.yaml"),
          "MODEL.DEVICE", "cpu"])
    loaded = torch.load(output_dir / "concept_embeds.pth", weights_only=True)
    torch.testing.assert_close(loaded, reference(model, ["traffic light", "cat"]),
                               rtol=1e-5, atol=1e-5)


def test_subprocess(tiny_clip, tmp_path):
    model, weights = tiny_clip
    (tmp_path / "c.txt").write_text("cat\n")
    out = tmp_path / "sub.pth"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "extract_concept_features.py"),
         "--concepts", str(tmp_path / "c.txt"), "--weights", weights, "--output", str(out),
         "--device", "cpu"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    torch.testing.assert_close(torch.load(out, weights_only=True),
                               reference(model, ["cat"])[0], rtol=1e-5, atol=1e-5)


def test_named_vocabulary(tiny_clip, tmp_path):
    assert expand_concepts(["coco_17"]) == COCO_17
    assert len(expand_concepts(["coco_65"])) == 65 and len(expand_concepts(["coco_48"])) == 48
    assert len(expand_concepts(["coco_80"])) == 80
    lvis = expand_concepts(["lvis_1203"])
    assert len(lvis) == 1203 and lvis[0] == "aerosol can"
    assert len(expand_concepts(["lvis_866"])) == 866
    assert expand_concepts(["coco_17", "hat"]) == COCO_17 + ["hat"]

    model, weights = tiny_clip
    out = tmp_path / "coco17.pth"
    run(["--concepts", "coco_17", "--weights", weights, "--output", str(out),
          "--no-prompt-ensemble", "--device", "cpu"])
    with torch.no_grad():
        bare = model.encode_text(open_clip.tokenize(COCO_17), normalize=False)
    torch.testing.assert_close(torch.load(out, weights_only=True), bare, rtol=1e-5, atol=1e-5)


def test_bad_concept_inputs(tiny_clip, tmp_path):
    _, weights = tiny_clip
    blank = tmp_path / "blank.txt"
    blank.write_text("cat\n\ndog\n")
    with pytest.raises(ValueError, match=r"blank.txt, line 2: blank line"):
        read_concepts_file(str(blank))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt: no concepts"):
        run(["--concepts", str(empty), "--weights", weights, "--output", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="No concepts"):
        expand_concepts([])
    with pytest.raises(FileNotFoundError, match="nothere.txt"):
        expand_concepts(["nothere.txt"])
    input_dir = tmp_path / "in"
    input_dir.mkdir()
    (input_dir / "concepts.txt").write_text("a\n   \n")
    with pytest.raises(ValueError, match="line 2"):
        run(["--config-file", ZSINF_CONFIG, "MODEL.WEIGHTS", weights, "INPUT_DIR",
              str(input_dir), "OUTPUT_DIR", str(tmp_path / "o"), "MODEL.DEVICE", "cpu"])


def test_depth_mismatch_in_direct_form(tiny_clip, tmp_path):
    _, weights = tiny_clip
    with pytest.raises(ValueError, match="does not match depth 50: width 64"):
        run(["--concepts", "cat", "--weights", weights, "--output", str(tmp_path / "x"),
              "--depth", "50"])
