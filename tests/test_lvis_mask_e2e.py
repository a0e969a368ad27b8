"""LVIS-style configs: CLIPFastRCNN with a mask head (train + LVIS evaluation) and the CLIP
GeneralizedRCNN of the mask_rcnn_CLIP configs."""
import os

import ovd_world
import pytest
import torch
from conftest import REPO
from detectron2.config import get_cfg
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage
from tiny_clip import TINY_OPTS, write_tiny_clip

from regionclip import add_regionclip_config
from regionclip.data.synthetic import make_synthetic_coco, register_synthetic_dataset
from regionclip.engine import Trainer

CATS = [{"name": n, "split": s} for n, s in
        [("red square", "base"), ("blue circle", "base"), ("green triangle", "base"),
         ("yellow diamond", "novel")]]
SMALL = ovd_world.SMALL + ["SOLVER.MAX_ITER", "1", "DATALOADER.SAMPLER_TRAIN", "TrainingSampler"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvisworld")
    train = make_synthetic_coco(str(root / "tr"), num_images=4, categories=CATS, seed=3)
    val = make_synthetic_coco(str(root / "va"), num_images=3, categories=CATS, seed=4, split="val")
    names = {"train": register_synthetic_dataset("_t_lvis_train", train, "lvis", filter_rare=True),
             "val": register_synthetic_dataset("_t_lvis_val", val, "lvis"),
             "coco_train": register_synthetic_dataset("_t_coco_train", train, "coco")}
    arch, weights = write_tiny_clip(str(root))
    gen = torch.Generator().manual_seed(11)
    torch.save(torch.randn(3, 64, generator=gen), root / "base.pth")
    torch.save(torch.randn(4, 64, generator=gen), root / "all.pth")
    return root, names, arch, weights


def _cfg(rel, opts):
    cfg = get_cfg()
    add_regionclip_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, rel))
    cfg.merge_from_list(opts)
    return cfg


@pytest.mark.slow
def test_lvis_clip_fast_rcnn_with_masks_trains_and_reports_apr(data, tmp_path):
    root, names, arch, weights = data
    cfg = _cfg("configs/LVISv1-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4.yaml",
               SMALL + TINY_OPTS + [
        "MODEL.CLIP.ARCH", arch, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path),
        "MODEL.CLIP.OFFLINE_RPN_CONFIG",
        os.path.join(REPO, "configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"),
        "MODEL.CLIP.OFFLINE_RPN_POST_NMS_TOPK_TEST", "30", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
        "MODEL.CLIP.TEXT_EMB_PATH", str(root / "base.pth"),
        "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", str(root / "all.pth"),
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "DATASETS.TRAIN", f"('{names['train']}',)", "DATASETS.TEST", f"('{names['val']}',)"])
    assert cfg.MODEL.MASK_ON and cfg.MODEL.CLIP.MULTIPLY_RPN_SCORE
    seed_all_rng(cfg.SEED)  # Trainer(cfg) skips default_setup: the random offline RPN, box head
    trainer = Trainer(cfg)  # and the sampler's order are then the same on every run
    trainer.resume_or_load(resume=False)
    with EventStorage():
        losses = trainer.model(next(iter(trainer.data_loader)))
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    res = Trainer.test(cfg, trainer.model)
    for task in ("bbox", "segm"):
        assert {"AP", "APr", "APc", "APf"} <= set(res[task])
    assert os.path.isfile(tmp_path / "inference" / "lvis_instances_results.json")


@pytest.mark.slow
def test_mask_rcnn_clip_c4_config_uses_the_backbone_res5(data, tmp_path):
    root, names, arch, weights = data
    cfg = _cfg("configs/COCO-InstanceSegmentation/mask_rcnn_CLIP_R_50_C4_1x.yaml",
               SMALL + TINY_OPTS + [
        "MODEL.CLIP.ARCH", arch, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path),
        "MODEL.ROI_HEADS.NUM_CLASSES", "4", "DATASETS.TRAIN", f"('{names['coco_train']}',)",
        "DATASETS.TEST", "()"])
    assert cfg.MODEL.META_ARCHITECTURE == "CLIPGeneralizedRCNN"
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    assert model.backbone.attnpool is None  # no text classifier: mean-pooled res5
    assert not any(k.startswith("roi_heads.res5") for k in model.state_dict())
    with EventStorage():
        losses = model(next(iter(trainer.data_loader)))
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    sum(losses.values()).backward()
    assert model.backbone.layer4[0].conv1.weight.grad is not None  # res5 ran through the backbone
    model.eval()
    model.roi_heads.box_predictor.test_score_thresh = 0.0  # random weights: keep every box
    img = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": img, "height": 96, "width": 128}])
    inst = out[0]["instances"]
    assert len(inst) > 0  # the mask head ran on detected boxes, through the backbone's res5
    assert inst.pred_masks.shape == (len(inst), 96, 128)
