"""A wrong file is never used silently: the config's embedding files win over a checkpoint's
classifier, a checkpoint of another architecture is an error naming it, evaluation needs weights,
and embedding files must fit the model, the test set and be finite."""
import dataclasses
import logging
import os
import re

import pytest
import torch
from conftest import REPO
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from ovd_world import load_train_net
from tiny_clip import TINY, TINY_OPTS, write_tiny_clip

from regionclip import RegionCLIP, add_regionclip_config
from regionclip.checkpoint import RegionCLIPCheckpointer
from regionclip.clip import CLIPConfig
from regionclip.modeling.clip_arch import save_clip_arch

OVD = os.path.join(REPO, "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd.yaml")
ZS = os.path.join(REPO, "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd_zsinf.yaml")
PRETRAIN = os.path.join(REPO, "configs/pretrain/RegionCLIP_RN50.yaml")


def _emb(path, rows, seed, dim=64):
    torch.save(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), path)
    return str(path)


def _cfg(arch, *opts, config=OVD):
    cfg = get_cfg()
    add_regionclip_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(TINY_OPTS + ["MODEL.CLIP.ARCH", arch, "MODEL.DEVICE", "cpu",
                                     "MODEL.CLIP.CROP_REGION_TYPE", "GT",
                                     "MODEL.CLIP.TEXT_EMB_PATH", "",
                                     "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", ""] + list(opts))
    return cfg


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg)


def _arch(folder, name, **visual):
    config = CLIPConfig(dataclasses.replace(TINY.visual, **visual), TINY.text)
    return save_clip_arch(config, str(folder / f"{name}.json"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wrong")
    arch, weights = write_tiny_clip(str(folder))
    return {"folder": folder, "arch": arch, "weights": weights,
            "train": _emb(folder / "train3.pth", 3, 1), "test": _emb(folder / "test5.pth", 5, 2),
            "old_train": _emb(folder / "old3.pth", 3, 3), "old_test": _emb(folder / "old5.pth", 5,
                                                                           4)}


# ----------------------------------------------------------------- embedding files vs checkpoint
def _finetuned_checkpoint(files):
    """A fine-tuned checkpoint whose classifier tables hold an *old* vocabulary of equal size."""
    cfg = _cfg(files["arch"], "MODEL.ROI_HEADS.NUM_CLASSES", "3",
               "MODEL.CLIP.TEXT_EMB_PATH", files["old_train"],
               "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", files["old_test"])
    path = str(files["folder"] / "finetuned.pth")
    torch.save({"model": _model(cfg, seed=5).state_dict()}, path)
    return path


def test_embedding_files_named_by_the_config_win_over_the_checkpoint(files, caplog):
    path = _finetuned_checkpoint(files)
    cfg = _cfg(files["arch"], "MODEL.ROI_HEADS.NUM_CLASSES", "3",
               "MODEL.CLIP.TEXT_EMB_PATH", files["train"],
               "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", files["test"])
    model = _model(cfg)
    with caplog.at_level(logging.INFO):
        RegionCLIPCheckpointer(model).load(path)
    predictor = model.roi_heads.box_predictor
    assert torch.equal(predictor.cls_score.weight, torch.load(files["train"]))
    assert torch.equal(predictor.test_cls_score.weight, torch.load(files["test"]))
    for key, file in (("MODEL.CLIP.TEXT_EMB_PATH", files["train"]),
                      ("MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", files["test"])):
        assert f"{key} = {file} is used" in caplog.text
    # the rest of the checkpoint is loaded
    source = torch.load(path)["model"]
    assert torch.equal(model.state_dict()["backbone.conv1.weight"], source["backbone.conv1.weight"])


def test_checkpoint_classifier_is_used_when_the_config_names_no_file(files):
    """Negative control: without embedding files the checkpoint's tables load, as before."""
    path = _finetuned_checkpoint(files)
    model = _model(_cfg(files["arch"], "MODEL.ROI_HEADS.NUM_CLASSES", "3"))
    RegionCLIPCheckpointer(model).load(path)
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight,
                       torch.load(files["old_train"]))


# ----------------------------------------------------------------- other architectures
@pytest.mark.parametrize("other,expected", [
    ({"width": 32}, ("a CLIP ResNet (blocks [1, 1, 1, 1], width 32)",
                     "a CLIP ResNet (blocks [1, 1, 1, 1], width 16)")),
    ({"image_size": 96}, ("96-px attention pool (3x3)", "224-px attention pool (7x7)")),
])
def test_checkpoint_of_another_architecture_is_an_error_naming_it(files, other, expected):
    arch = _arch(files["folder"], "other", **other)
    path = str(files["folder"] / "other_arch.pth")
    torch.save({"model": _model(_cfg(arch)).state_dict()}, path)
    model = _model(_cfg(files["arch"]))
    before = model.backbone.conv1.weight.clone()
    with pytest.raises(ValueError) as info:
        RegionCLIPCheckpointer(model).load(path)
    message = str(info.value)
    assert path in message and "another architecture" in message
    ours, theirs = expected
    assert re.search(rf"backbone\.\* of the checkpoint: [^;\n]*{re.escape(ours)}", message)
    assert re.search(rf"of the model: [^;\n]*{re.escape(theirs)}", message)
    assert torch.equal(model.backbone.conv1.weight, before)  # nothing half-loaded


def test_description_names_the_openai_preset():
    from regionclip.checkpoint.guards import describe_tower

    sd = {"backbone.conv1.weight": torch.zeros(40, 3, 3, 3),
          "backbone.attnpool.positional_embedding": torch.zeros(82, 1),
          "backbone.attnpool.c_proj.weight": torch.zeros(640, 1)}
    for stage, blocks in enumerate((4, 6, 10, 6), start=1):
        sd.update({f"backbone.layer{stage}.{i}.conv1.weight": torch.zeros(1)
                   for i in range(blocks)})
    assert describe_tower(sd, "backbone.") == \
        "CLIP RN50x4 with a 288-px attention pool (9x9), embedding 640"


def test_heads_of_other_shapes_are_skipped_with_a_warning(files, caplog):
    """As detectron2 when fine-tuning to other classes: only head tensors may differ."""
    cfg = _cfg(files["arch"])
    source = _model(cfg, seed=3).state_dict()
    source["roi_heads.box_predictor.bbox_pred.weight"] = torch.zeros(8, 64)
    source["roi_heads.box_predictor.bbox_pred.bias"] = torch.zeros(8)
    path = str(files["folder"] / "other_heads.pth")
    torch.save({"model": source}, path)
    model = _model(cfg)
    with caplog.at_level(logging.WARNING):
        RegionCLIPCheckpointer(model).load(path)
    assert "bbox_pred.weight" in caplog.text and "incompatible shapes" in caplog.text
    assert torch.equal(model.backbone.conv1.weight, source["backbone.conv1.weight"])


# ----------------------------------------------------------------- evaluation needs weights
def _eval_only_args(files, tmp_path, *flags):
    from detectron2.engine import default_argument_parser

    train_net = load_train_net()
    parser = getattr(train_net, "build_parser", None)
    parser = parser() if parser else train_net.add_register_arguments(default_argument_parser())
    return train_net, parser.parse_args(
        ["--config-file", ZS, "--eval-only", *flags] + TINY_OPTS + [
            "MODEL.CLIP.ARCH", files["arch"], "MODEL.CLIP.CROP_REGION_TYPE", "GT",
            "MODEL.CLIP.TEXT_EMB_PATH", "", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
            "OUTPUT_DIR", str(tmp_path)])


def test_evaluation_without_weights_is_an_error_unless_asked_for(files, tmp_path, monkeypatch):
    train_net, args = _eval_only_args(files, tmp_path)
    evaluated = []
    monkeypatch.setattr(train_net.Trainer, "test", classmethod(
        lambda cls, cfg, model, evaluators=None: evaluated.append(model) or {}))
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty.*--random-weights"):
        train_net.main(args)
    assert not evaluated
    train_net, args = _eval_only_args(files, tmp_path, "--random-weights")
    monkeypatch.setattr(train_net.Trainer, "test", classmethod(
        lambda cls, cfg, model, evaluators=None: evaluated.append(model) or {}))
    train_net.main(args)
    assert len(evaluated) == 1


def test_api_without_weights_is_an_error_unless_asked_for(files):
    opts = TINY_OPTS + ["MODEL.CLIP.ARCH", files["arch"], "MODEL.CLIP.CROP_REGION_TYPE", "GT",
                        "MODEL.CLIP.TEXT_EMB_PATH", "", "MODEL.WEIGHTS", ""]
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty.*random_weights=True"):
        RegionCLIP.from_config(ZS, opts=opts)
    rc = RegionCLIP.from_config(ZS, opts=opts, random_weights=True)
    assert not rc.text_encoder_loaded


# ----------------------------------------------------------------- embedding files themselves
def test_embedding_file_rows_must_match_the_test_set(files):
    from regionclip.engine.trainer import Trainer

    cfg = _cfg(files["arch"], "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", files["test"],
               "DATASETS.TEST", "('coco_2017_ovd_all_test',)")
    with pytest.raises(ValueError) as info:
        Trainer.test(cfg, _model(cfg))
    message = str(info.value)
    assert files["test"] in message and "5 class embeddings" in message
    assert "'coco_2017_ovd_all_test' has 65 classes" in message


def test_embedding_file_with_one_row_per_test_class_passes_the_check(files):
    from regionclip.engine.checks import check_test_classifier

    cfg = _cfg(files["arch"], "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH",
               _emb(files["folder"] / "all65.pth", 65, 5),
               "DATASETS.TEST", "('coco_2017_ovd_all_test',)")
    check_test_classifier(cfg, _model(cfg))  # no error


@pytest.mark.parametrize("key", ["MODEL.CLIP.TEXT_EMB_PATH",
                                 "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH"])
@pytest.mark.parametrize("bad", ["nan", "inf", "dim"])
def test_bad_embedding_files_are_refused(files, key, bad):
    emb = torch.randn(3, 32 if bad == "dim" else 64)
    if bad != "dim":
        emb[1, 5] = float(bad)
    path = str(files["folder"] / f"bad_{bad}.pth")
    torch.save(emb, path)
    cfg = _cfg(files["arch"], "MODEL.ROI_HEADS.NUM_CLASSES", "3", key, path)
    with pytest.raises(ValueError) as info:
        build_model(cfg)
    message = str(info.value)
    assert key in message and path in message
    assert ("non-finite" in message and "rows [1]" in message) if bad != "dim" else \
        "TEXT_EMB_DIM is 64" in message


def test_non_finite_concept_pool_is_refused(files):
    emb = torch.randn(4, 64)
    emb[2] = float("nan")
    path = str(files["folder"] / "pool_nan.pth")
    torch.save(emb, path)
    cfg = _cfg(files["arch"], "MODEL.CLIP.TEACHER_ARCH", files["arch"],
               "MODEL.CLIP.CROP_REGION_TYPE", "RANDOM", "MODEL.CLIP.CONCEPT_POOL_EMB", path,
               config=PRETRAIN)
    with pytest.raises(ValueError, match=r"CONCEPT_POOL_EMB.*non-finite.*rows \[2\]"):
        build_model(cfg)
