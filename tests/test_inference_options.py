"""Inference options that must not change results: region chunking; bf16 stays close to fp32."""
import os

import pytest
import torch
from conftest import REPO
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from tiny_clip import TINY_OPTS, write_tiny_clip

from regionclip import add_regionclip_config


def _model(folder, *opts):
    arch, weights = write_tiny_clip(str(folder))
    cfg = get_cfg()
    add_regionclip_config(cfg)
    cfg.merge_from_file(os.path.join(REPO,
                                     "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd_zsinf.yaml"))
    emb = folder / "emb.pth"
    torch.save(torch.randn(65, 64, generator=torch.Generator().manual_seed(0)), emb)
    cfg.merge_from_list(TINY_OPTS + ["MODEL.CLIP.ARCH", arch, "MODEL.DEVICE", "cpu",
                                     "MODEL.CLIP.CROP_REGION_TYPE", "GT",
                                     "MODEL.CLIP.TEXT_EMB_PATH", str(emb),
                                     "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"] + list(opts))
    model = build_model(cfg)
    from regionclip.checkpoint import RegionCLIPCheckpointer
    RegionCLIPCheckpointer(model).load(weights)
    return model.eval()


def _inputs(n=40):
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(n, 2, generator=g) * 150
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 60 + 8], 1)
    inst = Instances((224, 240))
    inst.gt_boxes = Boxes(boxes)
    img = torch.randint(0, 255, (3, 224, 240), dtype=torch.uint8, generator=g)
    return [{"image": img, "instances": inst, "height": 224, "width": 240}]


def _embeddings(model, inputs):
    images = model.preprocess_image(inputs)
    with model._compute_precision():
        feats = model.backbone(images.tensor)
        from regionclip.modeling.roi_heads import region_embeddings
        heads = model.roi_heads
        emb, _ = region_embeddings(heads.pooler, [feats["res4"]], [inputs[0]["instances"].gt_boxes],
                                   model.backbone.layer4, model.backbone.attnpool,
                                   heads.inference_chunk_size)
    return emb.float()


def test_region_chunking_gives_the_same_detections(tmp_path):
    inputs = _inputs()
    with torch.no_grad():
        whole = _model(tmp_path, "MODEL.CLIP.INFERENCE_REGION_CHUNK", "0")
        chunked = _model(tmp_path, "MODEL.CLIP.INFERENCE_REGION_CHUNK", "7")
        a, b = _embeddings(whole, inputs), _embeddings(chunked, inputs)
        # equal up to float rounding (matmuls round differently for other numbers of rows)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max()))
        da, db = whole(inputs)[0]["instances"], chunked(inputs)[0]["instances"]
    # the same detections; their order may differ where scores tie (many saturate at 1.0 at the
    # 0.01 temperature), so they are compared sorted by class and box
    def ordered(d):
        keys = [(int(c), *map(float, b)) for c, b in zip(d.pred_classes, d.pred_boxes.tensor)]
        return sorted(range(len(keys)), key=keys.__getitem__), keys

    (ia, ka), (ib, kb) = ordered(da), ordered(db)
    assert [ka[i] for i in ia] == [kb[i] for i in ib]
    # cosines that round differently by ~1e-6 move logits at temperature 0.01 by ~1e-4, so
    # class probabilities by up to ~2.5e-5 (p (1 - p) times that); a wrong chunk moves them by
    # far more
    torch.testing.assert_close(da.scores[ia], db.scores[ib], rtol=1e-4, atol=3e-5)


def test_bfloat16_inference_stays_close_to_float32(tmp_path):
    inputs = _inputs()
    with torch.no_grad():
        fp32 = _embeddings(_model(tmp_path), inputs)
        bf16_model = _model(tmp_path, "MODEL.CLIP.INFERENCE_DTYPE", "bfloat16")
        bf16 = _embeddings(bf16_model, inputs)
        out = bf16_model(inputs)[0]["instances"]
    cos = torch.nn.functional.cosine_similarity(fp32, bf16, dim=1)
    assert cos.min() > 0.995, cos.min()
    # the threshold tells boxes apart: another box's float32 embedding is further away
    other = torch.nn.functional.cosine_similarity(fp32.roll(1, 0), bf16, dim=1)
    assert other.max() < 0.995, other.max()
    assert out.scores.dtype == torch.float32 and torch.isfinite(out.scores).all()


def test_unknown_dtype_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="INFERENCE_DTYPE"):
        _model(tmp_path, "MODEL.CLIP.INFERENCE_DTYPE", "int8")
