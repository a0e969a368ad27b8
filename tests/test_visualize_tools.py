"""tools/visualize_json_results.py: which predictions are drawn, pictures per image, LVIS custom
images without the LVIS json, bad inputs."""
import json
import os
import subprocess
import sys
import uuid

import cv2
import numpy as np
import pytest
from detectron2.data import MetadataCatalog
from tiny_detector import REPO, write_images

from regionclip.data.datasets.lvis_ovd import register_lvis_custom_img
from regionclip.tools import visualize_json_results as vj


def _pred(score, bbox, image_id=0, category_id=1):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


# best first; p1 and p5 repeat p0's box; p2 is small (area 4)
PREDS = [_pred(0.9, [0, 0, 10, 10]), _pred(0.8, [0, 0, 10, 10]), _pred(0.7, [5, 5, 2, 2]),
         _pred(0.6, [20, 20, 30, 30]), _pred(0.4, [1, 1, 50, 50]), _pred(0.3, [0, 0, 10, 10])]


@pytest.mark.parametrize("kwargs, expected", [
    ({}, [0, 1, 2, 3]),                                        # conf 0.5, no limit
    ({"conf_threshold": 0.6}, [0, 1, 2]),                      # strictly above
    ({"show_unique_boxes": True}, [0, 2, 3]),
    ({"show_unique_boxes": True, "small_region_px": 10}, [0, 3]),
    ({"small_region_px": 10}, [0, 1, 3]),                      # acts without --show-unique-boxes
    ({"max_boxes": 2}, [0, 1]),
    ({"max_boxes": 2, "show_unique_boxes": True}, [0]),        # the limit comes first
    ({"conf_threshold": 0.0, "show_unique_boxes": True}, [0, 2, 3, 4]),
    ({"conf_threshold": 0.0}, [0, 1, 2, 3, 4, 5]),
])
def test_select_predictions(kwargs, expected):
    kept = vj.select_predictions(PREDS, **kwargs)
    assert kept == [PREDS[i] for i in expected]


def test_unique_boxes_default_to_thirty_first_predictions():
    preds = [_pred(1 - i / 100, [i, 0, 5, 5]) for i in range(40)]
    assert len(vj.select_predictions(preds, conf_threshold=0.0)) == 40
    assert vj.select_predictions(preds, 0.0, show_unique_boxes=True) == preds[:30]


def test_group_by_image_sorts_each_image_by_score():
    preds = [_pred(0.2, [0, 0, 1, 1], 5), _pred(0.9, [0, 0, 2, 2], 5), _pred(0.5, [0, 0, 3, 3], 6)]
    grouped = vj.group_by_image(preds)
    assert [p["score"] for p in grouped[5]] == [0.9, 0.2] and len(grouped[6]) == 1


def test_create_instances_converts_boxes_and_category_ids():
    meta = MetadataCatalog.get("lvis_v1_val_custom_img")
    to_contiguous = vj.category_mapper(meta, "lvis_v1_val_custom_img")
    inst = vj.create_instances([_pred(0.9, [1, 2, 3, 4], category_id=1),
                                _pred(0.5, [0, 0, 10, 20], category_id=3)], (50, 60), to_contiguous)
    np.testing.assert_allclose(inst.pred_boxes.tensor.numpy(), [[1, 2, 4, 6], [0, 0, 10, 20]])
    assert inst.pred_classes.tolist() == [0, 2]
    coco_like = type("M", (), {"get": lambda self, k, d=None: {1: 0, 3: 1}})()
    with pytest.raises(ValueError, match="category_id 2 is not a category of dataset 'x'"):
        vj.category_mapper(coco_like, "x")(2)
    with pytest.raises(ValueError, match="Unsupported dataset 'y'"):
        vj.category_mapper(type("M", (), {"get": lambda self, k, d=None: None})(), "y")


def test_bad_results_json_names_the_file(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="r.json' is not valid json"):
        vj.load_predictions(str(path))
    path.write_text(json.dumps([{"image_id": 0, "bbox": [0, 0, 1, 1], "score": 1}]))
    with pytest.raises(ValueError, match=r"r.json', detection 0: expected keys"):
        vj.load_predictions(str(path))


def test_draws_one_picture_per_image_with_the_selected_predictions(tmp_path):
    images = tmp_path / "imgs"
    write_images(str(images), [("a.jpg", (96, 128)), ("b.png", (80, 100)), ("c.jpg", (64, 64))])
    name = f"test_vis_{uuid.uuid4().hex}"
    register_lvis_custom_img(name, str(tmp_path / "absent.json"), str(images))
    # image ids are the sorted-file indices: a=0, b=1, c=2 (no predictions); id 9 is unknown
    preds = ([_pred(0.9 - i / 100, [i, i, 20, 30], 0, category_id=1 + i) for i in range(30)]
             + [_pred(0.95, [0, 0, 10, 10], 1), _pred(0.9, [0, 0, 10, 10], 1, category_id=7),
                _pred(0.01, [5, 5, 40, 40], 1), _pred(0.8, [1, 1, 4, 4], 1),
                _pred(0.5, [0, 0, 5, 5], 9)])
    results = tmp_path / "results.json"
    results.write_text(json.dumps(preds))
    drawn = vj.visualize_json_results(str(results), str(tmp_path / "out"), name,
                                      conf_threshold=0.05, max_boxes=25, small_region_px=50,
                                      show_unique_boxes=True, progress=False)
    paths = {os.path.basename(p): p for p in drawn}
    assert set(paths) == {"a.jpg", "b.png", "c.jpg"}
    for file_name, (h, w) in (("a.jpg", (96, 128)), ("b.png", (80, 100)), ("c.jpg", (64, 64))):
        assert cv2.imread(paths[file_name]).shape == (h, w, 3)
    assert drawn[paths["a.jpg"]] == preds[:25]  # --max-boxes
    # b: the duplicate box, the low score and the 16-px box are gone
    assert drawn[paths["b.png"]] == [preds[30]]
    assert drawn[paths["c.jpg"]] == []


def test_cli_draws_custom_images_without_the_lvis_json(tmp_path):
    root = tmp_path / "datasets"
    write_images(str(root / "custom_images"), [("x.jpg", (96, 128)), ("y.jpg", (96, 128))])
    preds = [_pred(0.9, [10, 10, 50, 40], 0, 1), _pred(0.8, [10, 10, 50, 40], 0, 2),
             _pred(0.7, [60, 20, 30, 30], 1, 1203)]
    (tmp_path / "r.json").write_text(json.dumps(preds))
    cmd = [sys.executable, os.path.join(REPO, "tools/visualize_json_results.py"), "--input",
           str(tmp_path / "r.json"), "--output", str(tmp_path / "regions"), "--dataset",
           "lvis_v1_val_custom_img", "--conf-threshold", "0.05", "--show-unique-boxes",
           "--max-boxes", "25", "--small-region-px", "100"]
    env = dict(os.environ, PYTHONPATH=REPO, DETECTRON2_DATASETS=str(root))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "regions")) == ["x.jpg", "y.jpg"]
    assert "Drew 2 boxes on 2 images" in proc.stdout
    assert not (root / "lvis").exists()
