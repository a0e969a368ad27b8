"""The library is a package of its own: built as a wheel and installed (not editable), it imports
and runs ``RegionCLIP`` without the checkout; nothing in it refers to the toy-world project."""
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile

from conftest import REPO
from detectron2.config import get_cfg
from tiny_clip import TINY_OPTS
from tiny_detector import CUSTOM, tiny_detector_opts, write_tiny_rpn_config

from regionclip.config import add_regionclip_config, load_config

LIBRARY = ("regionclip", "detectron2_ext")  # the packages of pyproject.toml


def _files_mentioning(root, word):
    """Text files under ``root`` whose content or path contains ``word`` (case-insensitive)."""
    hits = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                if word.encode() in f.read().lower() or word in path.lower():
                    hits.append(os.path.relpath(path, root))
    return hits


def test_the_library_does_not_mention_the_toy_world(tmp_path):
    for package in LIBRARY:
        assert _files_mentioning(os.path.join(REPO, package), "toyworld") == [], package
    # the search finds the word in a file's content and in a path (negative controls)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.py").write_text("from TOYWORLD import scenes\n")
    (tmp_path / "toyworld_b.json").write_text("{}")
    assert sorted(_files_mentioning(str(tmp_path), "toyworld")) == ["a/x.py", "toyworld_b.json"]


def _write_standalone_configs(folder):
    """A tiny random detector (tiny CLIP, random R18-FPN offline RPN) as two complete yamls with
    no ``_BASE_``, so that nothing of the checkout is read to load them; also the tiny CLIP's
    overrides and weights file."""
    opts, weights = tiny_detector_opts(folder)
    rpn = get_cfg()
    add_regionclip_config(rpn)
    rpn.merge_from_file(write_tiny_rpn_config(folder))
    rpn_yaml = os.path.join(folder, "rpn.yaml")
    with open(rpn_yaml, "w") as f:
        f.write(rpn.dump())
    cfg = load_config(CUSTOM, opts + ["MODEL.CLIP.OFFLINE_RPN_CONFIG", rpn_yaml,
                                      "MODEL.WEIGHTS", weights,
                                      "MODEL.CLIP.TEXT_EMB_PATH", "",
                                      "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", "",
                                      "MODEL.CLIP.BB_RPN_WEIGHTS", ""])
    detector_yaml = os.path.join(folder, "detector.yaml")
    with open(detector_yaml, "w") as f:
        f.write(cfg.dump())
    arch = opts[opts.index("MODEL.CLIP.ARCH") + 1]
    return detector_yaml, TINY_OPTS + ["MODEL.CLIP.ARCH", arch], weights


# Runs in a fresh interpreter whose working directory is a temp folder: the wheel's regionclip
# detects a vocabulary on a scene that the wheel's synthetic-data generator draws, with a config
# file of the temp folder, then with packaged configs named as in the original's command lines.
_SCRIPT = textwrap.dedent("""
    import json, os, sys
    site, config, weights = sys.argv[1], sys.argv[2], sys.argv[3]
    opts = json.loads(sys.argv[4])
    import regionclip
    from regionclip import RegionCLIP
    from regionclip.data.synthetic import make_synthetic_coco
    from regionclip.yaml_config import find_config_file

    data = make_synthetic_coco("scenes", num_images=1, image_size=(96, 128), seed=3)
    image = os.path.join(data.image_root, "000000000001.png")
    rc = RegionCLIP.from_config(config)
    detections = rc.detect(image, ["red rectangle", "blue ellipse", "green triangle"],
                           score_threshold=0.0)
    packaged = "COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd_zsinf.yaml"
    rpn = "./configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
    rc = RegionCLIP.from_config(packaged, weights=weights, device="cpu", opts=opts + [
        "MODEL.CLIP.TEXT_EMB_PATH", "", "MODEL.CLIP.OFFLINE_RPN_CONFIG", rpn,
        "MODEL.CLIP.OFFLINE_RPN_POST_NMS_TOPK_TEST", "20", "SEED", "0",
        "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160"])
    packaged_detections = rc.detect(image, ["red rectangle", "blue ellipse"], score_threshold=0.0)
    loaded = {name: getattr(module, "__file__", None) or "" for name, module in sys.modules.items()
              if name.split(".")[0] in ("regionclip", "detectron2_ext")}
    print(json.dumps({"file": regionclip.__file__, "loaded": loaded, "detections": detections,
                      "models": regionclip.list_models(),
                      "text_encoder": rc.text_encoder_loaded,
                      "packaged": [find_config_file(packaged), find_config_file(rpn)],
                      "packaged_detections": packaged_detections,
                      "num_classes": rc.cfg.MODEL.ROI_HEADS.NUM_CLASSES}))
""")


def test_wheel_installs_and_runs_regionclip_without_the_checkout(tmp_path):
    # build from a copy of the files pyproject.toml packages, so that the build writes no build/ or
    # egg-info folders into the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt", "LICENSE"):
        shutil.copy(os.path.join(REPO, name), src / name)
    for package in LIBRARY:
        shutil.copytree(os.path.join(REPO, package), src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    env.pop("PYTHONPATH", None)
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path / "dist"),
                          str(src)], check=True, env=env, cwd=str(tmp_path), capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("regionclip-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "regionclip/clip/bpe_simple_vocab_16e6.txt.gz" in names  # package data is in it
    assert any(n.startswith("detectron2_ext/") for n in names)
    assert not [n for n in names if "toyworld" in n or n.startswith(("tests/", "projects/"))]
    with zipfile.ZipFile(wheel) as zf:  # one command per tool module, the version of version.py
        info = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = zf.read(info[0]).decode()
        metadata = zf.read(info[0].replace("entry_points.txt", "METADATA")).decode()
    tools = sorted(n[len("regionclip/tools/"):-3] for n in names
                   if n.startswith("regionclip/tools/") and not n.endswith("__init__.py"))
    assert tools and all(f"regionclip-{t.replace('_', '-')} = regionclip.tools.{t}:main" in scripts
                         for t in tools), scripts
    version = re.search(r'__version__ = "([^"]+)"',
                        open(os.path.join(REPO, "regionclip", "version.py")).read()).group(1)
    assert f"\nVersion: {version}\n" in metadata

    site = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   env=env, cwd=str(tmp_path), capture_output=True)
    work = tmp_path / "work"
    work.mkdir()
    assert "regionclip/configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd.yaml" in names
    packaged = sorted(n[len("regionclip/configs/"):] for n in names
                      if n.startswith("regionclip/configs/"))
    assert packaged == _yaml_files(os.path.join(REPO, "configs"))  # every config of the checkout
    with zipfile.ZipFile(wheel) as zf:  # ... as it is in the checkout
        changed = [n for n in packaged if zf.read("regionclip/configs/" + n)
                   != open(os.path.join(REPO, "configs", n), "rb").read()]
    assert not changed, changed
    config, opts, weights = _write_standalone_configs(str(work))
    assert REPO not in open(config).read() and "_BASE_" not in open(config).read()
    # the installed copy comes first on the path, before the editable install of the checkout
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(site), config, weights,
                           __import__("json").dumps(opts)], cwd=str(work),
                          env=dict(env, PYTHONPATH=str(site)), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
    assert result["file"] == str(site / "regionclip" / "__init__.py")
    outside = {k: v for k, v in result["loaded"].items() if not v.startswith(str(site))}
    assert result["loaded"] and not outside, outside  # no module of the checkout was imported
    assert result["text_encoder"]
    assert "regionclip_pretrained-cc_rn50" in result["models"]  # the zoo is in the wheel
    detections = result["detections"]
    assert detections, "a random detector with threshold 0 returns boxes"
    for det in detections:
        x0, y0, x1, y1 = det["box"]
        assert 0 <= x0 <= x1 <= 128 and 0 <= y0 <= y1 <= 96
        assert det["label"] in ("red rectangle", "blue ellipse", "green triangle")
        assert 0 <= det["score"] <= 1
    # the packaged configs (and their _BASE_ files) were read from the installed package
    packaged_root = str(site / "regionclip" / "configs") + os.sep
    assert all(p.startswith(packaged_root) for p in result["packaged"]), result["packaged"]
    assert result["num_classes"] == 65  # the zero-shot COCO config over its bases
    assert result["packaged_detections"]
    assert {d["label"] for d in result["packaged_detections"]} <= {"red rectangle", "blue ellipse"}


def _yaml_files(root):
    return sorted(os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/")
                  for folder, _, files in os.walk(root) for f in files if f.endswith(".yaml"))


def test_packaged_configs_are_the_checkouts_configs(tmp_path, monkeypatch):
    from regionclip.yaml_config import find_config_file, packaged_configs, packaged_configs_dir

    root = packaged_configs_dir()
    # one copy in the checkout: the package's folder is the link regionclip/configs -> ../configs
    assert os.path.islink(os.path.join(REPO, "regionclip", "configs"))
    assert os.path.realpath(root) == os.path.realpath(os.path.join(REPO, "configs"))
    assert packaged_configs() == _yaml_files(os.path.join(REPO, "configs")) != []
    for name in packaged_configs():
        with open(os.path.join(root, name), "rb") as a, \
                open(os.path.join(REPO, "configs", name), "rb") as b:
            assert a.read() == b.read(), name
    name = "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
    monkeypatch.chdir(tmp_path)  # outside the checkout: the names are packaged ones
    for given in (name, "configs/" + name, "./configs/" + name):
        assert find_config_file(given) == os.path.join(root, name)
    assert find_config_file("no/such.yaml") == "no/such.yaml"  # left for the reader to report
    assert find_config_file(None) is None and find_config_file("") == ""  # unset keys
    (tmp_path / "configs").mkdir()  # a file of that name in the working folder comes first
    (tmp_path / "configs" / "mine.yaml").write_text("MODEL: {}\n")
    assert find_config_file("configs/mine.yaml") == "configs/mine.yaml"
