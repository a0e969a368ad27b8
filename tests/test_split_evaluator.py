"""AP per class split against pycocotools called directly on the same data."""
import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2_ext.evaluation import COCOSplitEvaluator

CATS = [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 7, "name": "cup"},
        {"id": 9, "name": "car"}]
BASE, NOVEL = ["dog", "car"], ["cat", "cup"]


def _make_data(tmp_path, seed=0):
    rng = np.random.RandomState(seed)
    images, anns, preds = [], [], []
    for img_id in range(1, 9):
        images.append({"id": img_id, "width": 200, "height": 150, "file_name": f"{img_id}.jpg"})
        for _ in range(rng.randint(1, 5)):
            x, y = rng.uniform(0, 120), rng.uniform(0, 90)
            w, h = rng.uniform(10, 70), rng.uniform(10, 50)
            cat = CATS[rng.randint(4)]["id"]
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            # a jittered true positive (sometimes with a wrong class) and a random false positive
            j = rng.normal(0, 4, 4)
            pcat = cat if rng.rand() < 0.8 else CATS[rng.randint(4)]["id"]
            preds.append((img_id, [x + j[0], y + j[1], w + j[2], h + j[3]], pcat, rng.rand()))
            preds.append((img_id, [rng.uniform(0, 150), rng.uniform(0, 100), 30, 30],
                          CATS[rng.randint(4)]["id"], rng.rand() * 0.5))
    gt = {"images": images, "annotations": anns, "categories": CATS}
    path = os.path.join(tmp_path, "gt.json")
    with open(path, "w") as f:
        json.dump(gt, f)
    return path, preds


def _register(name, json_path, base=BASE, novel=NOVEL):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    from detectron2.data.datasets import load_coco_json

    DatasetCatalog.register(name, lambda: load_coco_json(json_path, "", name))
    MetadataCatalog.get(name).set(json_file=json_path, evaluator_type="coco",
                                  thing_classes=[c["name"] for c in CATS],
                                  thing_dataset_id_to_contiguous_id={c["id"]: i for i,
                                                                     c in enumerate(CATS)},
                                  base_classes=base, novel_classes=novel)


def _pycocotools_ap(json_path, preds, cat_ids, iou_index):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_path)
        dt = gt.loadRes([{"image_id": i, "bbox": b, "category_id": c, "score": s}
                         for i, b, c, s in preds])
        ev = COCOeval(gt, dt, "bbox")
        ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[iou_index] * 100


def test_split_ap50_matches_pycocotools_restricted_to_split(tmp_path):
    json_path, preds = _make_data(str(tmp_path))
    _register("_test_split_eval", json_path)
    ev = COCOSplitEvaluator("_test_split_eval", tasks=("bbox",), distributed=False,
                            output_dir=str(tmp_path))
    ev.reset()
    contiguous = {c["id"]: i for i, c in enumerate(CATS)}
    for img_id in range(1, 9):
        mine = [p for p in preds if p[0] == img_id]
        inst = Instances((150, 200))
        xywh = torch.tensor([p[1] for p in mine], dtype=torch.float32)
        inst.pred_boxes = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1))
        inst.scores = torch.tensor([p[3] for p in mine], dtype=torch.float32)
        inst.pred_classes = torch.tensor([contiguous[p[2]] for p in mine])
        ev.process([{"image_id": img_id}], [{"instances": inst}])
    res = ev.evaluate()["bbox"]
    # detectron2 rounds boxes/scores when converting to json; compare with loose tolerance
    name_to_id = {c["name"]: c["id"] for c in CATS}
    for split, names in (("novel", NOVEL), ("base", BASE), ("all", NOVEL + BASE)):
        ids = sorted(name_to_id[n] for n in names)
        assert res[f"AP50_{split}"] == pytest.approx(_pycocotools_ap(json_path, preds, ids, 1),
                                                     abs=0.05)
        assert res[f"AP_{split}"] == pytest.approx(_pycocotools_ap(json_path, preds, ids, 0),
                                                   abs=0.05)
    assert res["AP50_all"] == pytest.approx(res["AP50"], abs=1e-6)
    assert res["AP50_novel"] != pytest.approx(res["AP50_base"])  # the data makes them differ


def test_no_predictions_still_reports_every_split_key(tmp_path):
    """A model that detects nothing (e.g. every score under the threshold): detectron2 reports NaN
    for its metrics; the split keys are there too, as NaN, instead of missing."""
    json_path, _ = _make_data(str(tmp_path))
    _register("_test_split_eval_empty", json_path)
    ev = COCOSplitEvaluator("_test_split_eval_empty", tasks=("bbox",), distributed=False,
                            output_dir=str(tmp_path))
    ev.reset()
    for img_id in range(1, 9):
        inst = Instances((150, 200))
        inst.pred_boxes = Boxes(torch.zeros(0, 4))
        inst.scores = torch.zeros(0)
        inst.pred_classes = torch.zeros(0, dtype=torch.int64)
        ev.process([{"image_id": img_id}], [{"instances": inst}])
    res = ev.evaluate()["bbox"]
    keys = [f"{p}_{s}" for p in ("AP50", "AP") for s in ("novel", "base", "all")]
    assert set(keys) <= set(res)
    assert all(np.isnan(res[k]) for k in keys + ["AP", "AP50"])


def test_unknown_split_class_is_an_error(tmp_path):
    json_path, _ = _make_data(str(tmp_path))
    _register("_test_split_eval_bad", json_path, novel=["cat", "zebra"])
    with pytest.raises(ValueError, match="zebra"):
        COCOSplitEvaluator("_test_split_eval_bad", tasks=("bbox",), distributed=False)


def test_no_split_metadata_reports_only_standard_metrics(tmp_path):
    json_path, _ = _make_data(str(tmp_path))
    _register("_test_split_eval_plain", json_path, base=[], novel=[])
    ev = COCOSplitEvaluator("_test_split_eval_plain", tasks=("bbox",), distributed=False)
    assert ev._splits == {}


def test_split_proposal_recall_known_answers(tmp_path):
    from detectron2_ext.evaluation import split_proposal_recall

    # image 1: a cat box 10x10 at the origin, a crowd dog box, a car box far away
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100,
             "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 10], "area": 100,
             "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 9, "bbox": [50, 50, 20, 20], "area": 400,
             "iscrowd": 0}]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": [{"id": 1, "width": 100, "height": 100}],
                                "annotations": anns, "categories": CATS}))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    # proposal 0 covers the cat with IoU exactly 0.5 (half of it); proposal 1 is the car box
    props = Instances((100, 100), proposal_boxes=Boxes(torch.tensor(
        [[0.0, 0.0, 10.0, 5.0], [50.0, 50.0, 70.0, 70.0]])))
    preds = [{"image_id": 1, "proposals": props}]
    recall, n = split_proposal_recall(preds, coco, [3], limit=100, ious=(0.5, 0.55))
    assert n == 1 and recall.tolist() == [1.0, 0.0]
    recall, n = split_proposal_recall(preds, coco, [5, 9], limit=100, ious=(0.5, 0.95))
    assert n == 1 and recall.tolist() == [1.0, 1.0]  # the crowd dog box is not counted
    recall, _ = split_proposal_recall(preds, coco, [9], limit=1)  # only the first proposal
    assert recall.tolist() == [0.0]
    recall, n = split_proposal_recall(preds, coco, [7])  # no cup box at all
    assert n == 0 and np.isnan(recall).all()
