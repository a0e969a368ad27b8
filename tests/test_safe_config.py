"""Config files run no code: a Python tag in a config, in a _BASE_ file or in the offline RPN
config is refused at every entry point (CLI, API, demo), naming the file and the line; other
unusable config files get a clear error instead of a crash."""
import os

import pytest
import yaml
from conftest import REPO
from ovd_world import load_train_net
from tiny_clip import TINY_OPTS, write_tiny_clip

from regionclip import RegionCLIP
from regionclip.config import load_config

ZS = os.path.join(REPO, "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd_zsinf.yaml")


def planted_yaml(folder, marker, name="planted.yaml", base=None):
    """A config whose MODEL.WEIGHTS is a Python tag that creates ``marker`` when constructed."""
    text = f'MODEL:\n  WEIGHTS: !!python/object/apply:builtins.open ["{marker}", "w"]\n'
    if base:
        text = f"_BASE_: {base}\n" + text
    path = os.path.join(str(folder), name)
    with open(path, "w") as f:
        f.write(text)
    return path


def including(folder, base, name="top.yaml"):
    """A harmless config whose _BASE_ is ``base``."""
    path = os.path.join(str(folder), name)
    with open(path, "w") as f:
        f.write(f'_BASE_: "{base}"\nSOLVER:\n  MAX_ITER: 3\n')
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    arch, weights = write_tiny_clip(str(folder))
    return {"arch": arch, "weights": weights}


def _opts(tiny, *extra):
    return TINY_OPTS + ["MODEL.CLIP.ARCH", tiny["arch"], "MODEL.CLIP.CROP_REGION_TYPE", "GT",
                        "MODEL.CLIP.TEXT_EMB_PATH", ""] + list(extra)


def test_attack_payload_is_live(tmp_path):
    """Negative control: detectron2's fallback loader (yaml.unsafe_load) runs the tag."""
    marker = tmp_path / "marker"
    with open(planted_yaml(tmp_path, marker)) as f:
        yaml.unsafe_load(f)
    assert marker.exists()


def _train_net(config, tiny, tmp_path):
    train_net = load_train_net()
    from detectron2.engine import default_argument_parser

    parser = train_net.add_register_arguments(default_argument_parser())
    args = parser.parse_args(["--config-file", config, "--eval-only"] + _opts(
        tiny, "MODEL.WEIGHTS", tiny["weights"], "OUTPUT_DIR", str(tmp_path / "out")))
    return train_net.main(args)


def _demo(config, tiny, tmp_path):
    from regionclip.data.synthetic import make_synthetic_coco
    from regionclip.tools.demo import run

    data = make_synthetic_coco(str(tmp_path / "img"), num_images=1, image_size=(64, 64))
    return run(["--input", data.image_root, "--vocabulary", "cat", "--output",
                 str(tmp_path / "demo"), "--config-file", config, "--weights", tiny["weights"],
                 "--device", "cpu", "--opts"] + _opts(tiny))


ENTRY_POINTS = {
    "--config-file": lambda t, tmp, planted: _train_net(planted, t, tmp),
    "_BASE_ (train_net)": lambda t, tmp, planted: _train_net(including(tmp, planted), t, tmp),
    "API config_file": lambda t, tmp, planted: RegionCLIP.from_config(
        planted, weights=t["weights"], opts=_opts(t)),
    "_BASE_ (API)": lambda t, tmp, planted: RegionCLIP.from_config(
        including(tmp, planted), weights=t["weights"], opts=_opts(t)),
    "MODEL.CLIP.OFFLINE_RPN_CONFIG": lambda t, tmp, planted: RegionCLIP.from_config(
        ZS, weights=t["weights"], opts=_opts(t, "MODEL.CLIP.CROP_REGION_TYPE", "RPN",
                                             "MODEL.CLIP.OFFLINE_RPN_CONFIG", planted)),
    "demo --config-file": lambda t, tmp, planted: _demo(planted, t, tmp),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_python_tag_is_refused_at_every_entry_point(entry, tiny, tmp_path):
    marker = tmp_path / "marker"
    planted = planted_yaml(tmp_path, marker, base=ZS if "OFFLINE" not in entry else None)
    with pytest.raises(ValueError) as info:
        ENTRY_POINTS[entry](tiny, tmp_path, planted)
    assert not marker.exists(), f"{entry}: code in the config ran"
    message = str(info.value)
    assert f"{planted}, line " in message and "python/object/apply" in message, message


def test_python_config_is_a_clear_error(tmp_path):
    path = tmp_path / "lazy_config.py"
    path.write_text("from detectron2.config import LazyCall as L\nmodel = L(dict)()\n")
    with pytest.raises(ValueError, match=r"lazy_config.py' is a Python config"):
        load_config(str(path))


@pytest.mark.parametrize("content,expected", [("", "is empty"), ("- a\n- b\n", "mapping"),
                                              ("MODEL: [unclosed\n", "not valid yaml")])
def test_unusable_yaml_names_the_file(tmp_path, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        load_config(str(path))
    assert str(path) in str(info.value) and expected in str(info.value)


def test_plain_yaml_with_bases_still_merges(tmp_path):
    """The safe loader changes nothing for ordinary configs (bases resolved as detectron2)."""
    top = including(tmp_path, ZS)
    cfg = load_config(top)
    assert cfg.SOLVER.MAX_ITER == 3 and cfg.MODEL.META_ARCHITECTURE == "CLIPFastRCNN"
