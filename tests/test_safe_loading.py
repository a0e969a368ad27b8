"""Files from strangers run no code: planted pickles are refused at every entry point that reads
a file, naming the file; the formats of real checkpoints still load without any flag.

The attack files are complete, loadable checkpoints / embedding files / concept pools with one
extra entry whose unpickling calls ``open(marker, "w")``: if any code in the file runs, the
marker file exists. ``test_attack_payload_is_live`` shows that full unpickling does run it.
"""
import importlib
import importlib.util
import logging
import os
import pickle
import re
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
from conftest import REPO
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, ResNet
from ovd_world import load_train_net
from tiny_clip import TINY_OPTS, write_tiny_clip
from torch import nn

from regionclip import RegionCLIP
from regionclip.checkpoint import RegionCLIPCheckpointer, load_clip_state_dict, read_torch_file

ZS = os.path.join(REPO, "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd_zsinf.yaml")
LVIS_RPN = os.path.join(REPO, "configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
PRETRAIN = os.path.join(REPO, "configs/pretrain/RegionCLIP_RN50.yaml")
TRUST_ENV = "REGIONCLIP_TRUST_PICKLE"


class Plant:
    """Unpickling this object creates ``marker`` (it unpickles as ``open(marker, "w")``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def tool_run(name):
    """``run`` of the tool module ``regionclip.tools.NAME`` (raises, where ``main`` reports)."""
    return importlib.import_module(f"regionclip.tools.{name}").run


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    arch, weights = write_tiny_clip(str(folder))
    return {"arch": arch, "weights": weights, "sd": torch.load(weights, weights_only=True),
            "folder": folder}


@pytest.fixture(autouse=True)
def no_trust(monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)


def planted_torch(path, marker, content):
    """A torch.save file holding ``content`` plus the payload."""
    torch.save({**content, "extra": Plant(marker)}, path)
    return str(path)


def planted_pkl(path, marker, state_dict):
    """A detectron2 model-zoo .pkl (numpy arrays) plus the payload."""
    data = {"model": {k: v.numpy() for k, v in state_dict.items()},
            "__author__": "Detectron2 Model Zoo", "extra": Plant(marker)}
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return str(path)


def test_attack_payload_is_live(tmp_path, tiny):
    """Negative control: full unpickling of the attack files runs their code."""
    marker = tmp_path / "marker"
    path = planted_torch(tmp_path / "a.pth", marker, {"model": tiny["sd"]})
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with open(planted_pkl(tmp_path / "a.pkl", marker, tiny["sd"]), "rb") as f:
        pickle.load(f, encoding="latin1")
    assert marker.exists()


def _tiny_opts(tiny, *extra):
    return TINY_OPTS + ["MODEL.CLIP.ARCH", tiny["arch"], "MODEL.CLIP.CROP_REGION_TYPE", "GT",
                        "MODEL.CLIP.TEXT_EMB_PATH", "", "INPUT.MIN_SIZE_TEST", "96",
                        "INPUT.MAX_SIZE_TEST", "160"] + list(extra)


def _eval_only(tiny, tmp_path, *extra, resume=False):
    train_net = load_train_net()
    argv = ["--config-file", ZS, "--eval-only"] + (["--resume"] if resume else []) + \
        _tiny_opts(tiny, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out"), *extra)
    return train_net.main(_train_net_parser(train_net).parse_args(argv))


def _train_net_parser(train_net):
    return train_net.build_parser()


def _rpn_opts(path):
    return ["MODEL.CLIP.CROP_REGION_TYPE", "RPN", "MODEL.CLIP.OFFLINE_RPN_CONFIG", LVIS_RPN,
            "MODEL.CLIP.BB_RPN_WEIGHTS", path]


def _last_checkpoint(tmp_path, path):
    os.makedirs(tmp_path / "out", exist_ok=True)
    os.replace(path, tmp_path / "out" / "model_0000009.pth")
    (tmp_path / "out" / "last_checkpoint").write_text("model_0000009.pth")
    return str(tmp_path / "out" / "model_0000009.pth")


def _concept_pool(tiny, path, form):
    return tool_run("build_concept_pool")(
        ["--captions", str(tiny["corpus"]), "--output", str(tiny["folder"] / "pool.txt"),
         "--min-count", "1", "--weights", path, "--output-emb", str(tiny["folder"] / "pool.pth"),
         "--no-progress"], noun_parser=lambda caps: [c.split() for c in caps])


# entry point -> (kind of planted file, how to reach it); every one reads the file first
ENTRY_POINTS = {
    "MODEL.WEIGHTS (train_net --eval-only)": (
        "checkpoint", lambda t, p, tmp: _eval_only(t, tmp, "MODEL.WEIGHTS", p)),
    "MODEL.WEIGHTS .pkl": (
        "pkl", lambda t, p, tmp: _eval_only(t, tmp, "MODEL.WEIGHTS", p)),
    "MODEL.CLIP.BB_RPN_WEIGHTS": (
        "checkpoint", lambda t, p, tmp: _eval_only(t, tmp, "MODEL.WEIGHTS", t["weights"],
                                                   *_rpn_opts(p))),
    "MODEL.CLIP.BB_RPN_WEIGHTS .pkl": (
        "pkl", lambda t, p, tmp: _eval_only(t, tmp, "MODEL.WEIGHTS", t["weights"],
                                            *_rpn_opts(p))),
    "--resume (last_checkpoint)": (
        "checkpoint", lambda t, p, tmp: _eval_only(t, tmp, "MODEL.WEIGHTS", t["weights"],
                                                   resume=True)),
    "API weights=": (
        "checkpoint", lambda t, p, tmp: RegionCLIP.from_config(ZS, weights=p,
                                                               opts=_tiny_opts(t))),
    "MODEL.CLIP.TEXT_EMB_PATH": (
        "embeddings", lambda t, p, tmp: RegionCLIP.from_config(
            ZS, weights=t["weights"], opts=_tiny_opts(t, "MODEL.CLIP.TEXT_EMB_PATH", p,
                                                      "MODEL.ROI_HEADS.NUM_CLASSES", "3"))),
    "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH": (
        "embeddings", lambda t, p, tmp: RegionCLIP.from_config(
            ZS, weights=t["weights"],
            opts=_tiny_opts(t, "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", p))),
    "MODEL.CLIP.CONCEPT_POOL_EMB": (
        "embeddings", lambda t, p, tmp: load_config_and_build(PRETRAIN, TINY_OPTS + [
            "MODEL.CLIP.ARCH", t["arch"], "MODEL.CLIP.TEACHER_ARCH", t["arch"],
            "MODEL.CLIP.CROP_REGION_TYPE", "RANDOM", "MODEL.CLIP.CONCEPT_POOL_EMB", p])),
    "extract_concept_features --weights": (
        "checkpoint", lambda t, p, tmp: tool_run("extract_concept_features")(
            ["--concepts", "cat", "--weights", p, "--output", str(tmp / "emb.pth")])),
    "convert_openai_clip --student": (
        "checkpoint", lambda t, p, tmp: tool_run("convert_openai_clip")(
            ["--student", p, "--output", str(tmp / "converted.pth")])),
    "convert_openai_clip --teacher": (
        "checkpoint", lambda t, p, tmp: tool_run("convert_openai_clip")(
            ["--student", t["weights"], "--teacher", p, "--output", str(tmp / "converted.pth")])),
    "build_concept_pool --weights": ("checkpoint", _concept_pool),
}


def load_config_and_build(config, opts):
    from detectron2.modeling import build_model

    from regionclip.config import load_config

    return build_model(load_config(config, opts))


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_planted_pickle_is_refused_at_every_entry_point(entry, tiny, tmp_path):
    kind, run = ENTRY_POINTS[entry]
    marker = tmp_path / "marker"
    tiny["corpus"] = tmp_path / "corpus.txt"
    tiny["corpus"].write_text("a red cat\na blue cat\n")
    if kind == "pkl":
        path = planted_pkl(tmp_path / "planted.pkl", marker, tiny["sd"])
    elif kind == "embeddings":
        path = planted_torch(tmp_path / "planted.pth", marker, {"emb": torch.randn(3, 64)})
    else:
        path = planted_torch(tmp_path / "planted.pth", marker, {"model": tiny["sd"]})
    if entry.startswith("--resume"):
        path = _last_checkpoint(tmp_path, path)
    with pytest.raises(ValueError) as info:
        run(tiny, path, tmp_path)
    assert not marker.exists(), f"{entry}: code in the file ran"
    message = str(info.value)
    assert path in message and TRUST_ENV in message, message
    assert re.search(r"\b(io|builtins)\.open\b", message)  # what the file would need


def test_trusted_file_is_read_with_a_warning(tiny, tmp_path, monkeypatch, caplog):
    """The one way to trust a file: REGIONCLIP_TRUST_PICKLE names it (not its folder)."""
    marker = tmp_path / "marker"
    path = planted_torch(tmp_path / "planted.pth", marker, {"model": tiny["sd"]})
    monkeypatch.setenv(TRUST_ENV, str(tmp_path))
    with pytest.raises(ValueError, match=TRUST_ENV):
        read_torch_file(path)
    assert not marker.exists()
    monkeypatch.setenv(TRUST_ENV, path)
    with caplog.at_level(logging.WARNING):
        loaded = read_torch_file(path)
    assert marker.exists() and set(loaded) == {"model", "extra"}
    assert TRUST_ENV in caplog.text and path in caplog.text


# ----------------------------------------------------------------- TorchScript archives
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.norm = nn.BatchNorm1d(3)
        self.register_buffer("scale", torch.full((3,), 2.0))
        self.attn_mask = torch.ones(2, 2)  # a plain tensor attribute: not in state_dict()

    def forward(self, x):
        return self.norm(self.lin(x)) * self.scale + self.attn_mask.sum()


def test_torchscript_read_without_running_its_code_equals_jit_load(tmp_path):
    """OpenAI's format: a traced module, half precision; our reader gives jit.load's state dict
    (parameters and buffers only, same order, dtypes and values)."""
    torch.manual_seed(0)
    module = Block().eval()
    traced = torch.jit.trace(module, torch.randn(5, 4)).half()
    traced.save(str(tmp_path / "ViT-like.pt"))
    ours = read_torch_file(str(tmp_path / "ViT-like.pt"))
    theirs = torch.jit.load(str(tmp_path / "ViT-like.pt")).state_dict()
    assert list(ours) == list(theirs) and "attn_mask" not in ours
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype == (torch.long if "num_batches" in key
                                                  else torch.float16)
        assert torch.equal(ours[key], value), key


def test_torchscript_with_planted_data_pickle_is_refused(tmp_path):
    torch.jit.trace(Block().eval(), torch.randn(5, 4)).save(str(tmp_path / "model.pt"))
    marker = tmp_path / "marker"
    with zipfile.ZipFile(tmp_path / "model.pt") as src, \
            zipfile.ZipFile(tmp_path / "planted.pt", "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(Plant(marker), protocol=2)
            dst.writestr(item, data)
    with pytest.raises(ValueError, match=r"planted.pt.*(io|builtins)\.open"):
        load_clip_state_dict(str(tmp_path / "planted.pt"))
    assert not marker.exists()


# ----------------------------------------------------------------- formats that must still load
def test_original_checkpoint_layout_of_the_parity_key_lists_loads(tmp_path):
    """The original's key lists (tests/parity/fixtures/keys.npz: its COCO, LVIS and pretraining
    models) saved as its trainer saved them (model, optimizer, scheduler, iteration; NumPy
    values as old detectron2 versions wrote) load with no flag. Tensors are shrunk to 2 elements
    per dimension to keep the files small; names, dtypes and layout are the original's."""
    with np.load(os.path.join(REPO, "tests", "parity", "fixtures", "keys.npz")) as f:
        keys = {k: f[k] for k in f.files}
    for name in ("keys_coco", "keys_lvis", "keys_pretrain"):
        dtypes = keys[f"{name}/dtypes"].tolist()
        state = OrderedDict((k, torch.ones(tuple(min(int(s), 2) for s in shape.split("x"))
                                           if shape else (), dtype=getattr(torch, d.split(".")[1])))
                            for k, shape, d in zip(keys[f"{name}/names"].tolist(),
                                                   keys[f"{name}/shapes"].tolist(), dtypes))
        scheduler = {"milestones": [60000, 80000], "gamma": 0.1, "warmup_factor": 0.001,
                     "warmup_iters": 1000, "warmup_method": "linear", "base_lrs": [0.02],
                     "last_epoch": 89999, "_step_count": 90000, "verbose": False,
                     "_get_lr_called_within_step": False, "_last_lr": [0.0002]}
        optimizer = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.02, momentum=0.9)
        path = tmp_path / f"{name}.pth"
        torch.save({"model": state, "optimizer": optimizer.state_dict(), "scheduler": scheduler,
                    "iteration": 89999, "loss_scale": np.float32(1.0),
                    "mean_pixel": np.array([103.53, 116.28, 123.675])}, path)
        loaded = read_torch_file(str(path))
        assert loaded["iteration"] == 89999 and list(loaded["model"]) == list(state)
        assert all(torch.equal(loaded["model"][k], v) for k, v in state.items())


def _tiny_resnet():
    torch.manual_seed(0)
    stem = BasicStem(3, 8, norm="FrozenBN")
    stage = ResNet.make_stage(BottleneckBlock, 2, in_channels=8, bottleneck_channels=4,
                              out_channels=16, norm="FrozenBN")
    model = nn.Module()
    model.backbone = ResNet(stem, [stage], out_features=["res2"])
    with torch.no_grad():
        for p in model.state_dict().values():
            p.copy_(torch.randn_like(p))
    return model


def _caffe2_name(name):
    """detectron2 name -> MSRA / Detectron (Caffe2) blob name, for the ResNet above."""
    name = name[len("backbone."):]
    suffix = {"weight": "_w", "bias": "_b"}
    if name.startswith("stem.conv1.norm."):
        return "res_conv1_bn_" + {"weight": "s", "bias": "b"}[name.rsplit(".", 1)[1]]
    if name.startswith("stem.conv1."):
        return "conv1" + suffix[name.rsplit(".", 1)[1]]
    stage, block, conv, *rest = name.split(".")
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c",
              "shortcut": "branch1"}[conv]
    if rest[0] == "norm":
        return f"{stage}_{block}_{branch}_bn_" + {"weight": "s", "bias": "b"}[rest[1]]
    return f"{stage}_{block}_{branch}" + suffix[rest[0]]


@pytest.mark.parametrize("form", ["caffe2_blobs_protocol2", "detectron2_model_zoo"])
def test_detectron2_pkl_model_files_load(tmp_path, form):
    source = _tiny_resnet()
    state = {k: v for k, v in source.state_dict().items()
             if not k.endswith(("running_mean", "running_var"))}
    path = tmp_path / "R-tiny.pkl"
    if form == "caffe2_blobs_protocol2":  # as the MSRA ImageNet files (Python 2 era, protocol 2)
        blobs = {_caffe2_name(k): v.numpy() for k, v in state.items()}
        blobs["res2_0_branch2a_w_momentum"] = np.zeros(1, np.float32)
        with open(path, "wb") as f:
            pickle.dump({"blobs": blobs}, f, protocol=2)
    else:
        with open(path, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in state.items()},
                         "__author__": "Detectron2 Model Zoo"}, f)
    model = _tiny_resnet()
    with torch.no_grad():
        for p in model.state_dict().values():
            p.zero_()
    RegionCLIPCheckpointer(model).load(str(path))
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_training_checkpoint_of_this_project_loads(tmp_path, tiny):
    """What our trainer writes (optimizer, detectron2 scheduler, iteration) needs no flag."""
    from detectron2.config import get_cfg
    from detectron2.solver import build_lr_scheduler

    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    cfg = get_cfg()
    scheduler = build_lr_scheduler(cfg, optimizer)
    checkpointer = DetectionCheckpointer(model, str(tmp_path), optimizer=optimizer,
                                         scheduler=scheduler)
    checkpointer.save("model_0000004", iteration=4)
    fresh = nn.Linear(3, 2)
    extra = RegionCLIPCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 4 and torch.equal(fresh.weight, model.weight)


# ----------------------------------------------------------------- damaged files
@pytest.mark.parametrize("content", [b"", b"<html><body>Virus scan warning</body></html>",
                                     b"hello world, not a checkpoint" * 10, "truncated"])
@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_damaged_files_name_the_file(tmp_path, tiny, content, suffix):
    path = tmp_path / f"damaged{suffix}"
    if content == "truncated":
        full = tmp_path / "full.pth"
        torch.save({"model": tiny["sd"]}, full)
        content = full.read_bytes()[:2000]
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        RegionCLIPCheckpointer(nn.Linear(2, 2)).load(str(path))
    message = str(info.value)
    assert str(path) in message
    assert ("empty" in message) if not content else ("not a readable" in message)


def test_empty_last_checkpoint_names_itself(tmp_path):
    # no intact checkpoint to fall back to (the fallback itself: tests/test_checkpoint_resume.py)
    (tmp_path / "last_checkpoint").write_text("\n")
    with pytest.raises(RuntimeError) as info:
        RegionCLIPCheckpointer(nn.Linear(2, 2), str(tmp_path)).resume_or_load("", resume=True)
    message = str(info.value)
    assert str(tmp_path / "last_checkpoint") in message and "is empty" in message
