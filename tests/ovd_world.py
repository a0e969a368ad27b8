"""A tiny COCO-OVD-shaped dataset tree for end-to-end tests.

Synthetic shapes named after four COCO classes (two base, two novel) are written as official-looking
``instances_{train,val}2017.json`` files with real COCO category ids, then turned into the
``ovd_ins_*`` jsons by ``datasets/prepare_ovd_coco.py`` — so the registered names
``coco_2017_ovd_*`` load them from ``<root>/datasets/coco`` exactly as they would load real COCO.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import torch
from conftest import REPO

from regionclip.data.synthetic import make_synthetic_coco

# (COCO id, name, split): person/car are base classes, bus/cat novel ones in the OVR-CNN split
CLASSES = [(1, "person", "base"), (3, "car", "base"), (6, "bus", "novel"), (17, "cat", "novel")]
BASE = [c for c in CLASSES if c[2] == "base"]
# small, fast training and test settings shared by the end-to-end tests
SMALL = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "160",
         "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160", "SOLVER.IMS_PER_BATCH", "2",
         "SOLVER.BASE_LR", "0.0001", "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0",
         "TEST.EVAL_PERIOD", "0", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
         # parts without weights (an offline RPN, a box head) are initialised at random: a fixed
         # seed makes every run of a test see the same model (SEED -1 draws a new one each run)
         "SEED", "0"]
ALL_COCO_OVD = json.load(open(os.path.join(REPO,
                                           "regionclip/data/metadata/coco_ovd_categories.json")))


def _instances(data, coco_cats):
    coco = json.load(open(data.coco_json))
    remap = {c["id"]: cid for c, (cid, _, _) in zip(data.categories, CLASSES)}
    for a in coco["annotations"]:
        a["category_id"] = remap[a["category_id"]]
        a["iscrowd"] = 0
    coco["categories"] = coco_cats
    return coco


def make_ovd_coco_tree(root, num_train=6, num_val=4, size=(96, 128), seed=0):
    """Write ``root/datasets/coco/{train2017,val2017,annotations}`` and return ``root/datasets``."""
    coco_root = os.path.join(root, "datasets", "coco")
    ann_dir = os.path.join(coco_root, "annotations")
    os.makedirs(ann_dir, exist_ok=True)
    cats = [{"name": n, "split": s} for _, n, s in CLASSES]
    coco_cats = [{"id": c["id"], "name": c["name"], "supercategory": "thing"}
                 for c in ALL_COCO_OVD["categories"]]
    for split, n, s in (("train2017", num_train, seed), ("val2017", num_val, seed + 1)):
        tmp = os.path.join(root, "_gen_" + split)
        data = make_synthetic_coco(tmp, num_images=n, image_size=size, categories=cats, seed=s,
                                   split=split, objects_per_image=(2, 3))
        shutil.move(data.image_root, os.path.join(coco_root, split))
        with open(os.path.join(ann_dir, f"instances_{split}.json"), "w") as f:
            json.dump(_instances(data, coco_cats), f)
        shutil.rmtree(tmp)
    subprocess.run([sys.executable, os.path.join(REPO, "datasets", "prepare_ovd_coco.py"),
                    "--coco-root", coco_root], check=True, capture_output=True)
    return os.path.join(root, "datasets")


def write_embeddings(path, num, dim=1024, seed=0):
    """A random (num, dim) text-embedding file."""
    g = torch.Generator().manual_seed(seed)
    torch.save(torch.randn(num, dim, generator=g), path)
    return path


def load_train_net():
    """``tools/train_net.py`` as a module (its ``main(args)`` runs in this process)."""
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO,
                                                                            "tools/train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
