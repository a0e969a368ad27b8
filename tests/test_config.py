"""Tests of the config keys (``add_regionclip_config``) and of every yaml under ``configs/``."""

import ast
import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import REPO_PATH as REPO
from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg

import detectron2_ext.config as ext_config
import regionclip.config as rc_config
from regionclip.config import add_regionclip_config

CONFIG_DIR = REPO / "configs"
YAMLS = sorted(CONFIG_DIR.rglob("*.yaml"))
YAML_IDS = [str(p.relative_to(CONFIG_DIR)) for p in YAMLS]
ORIGINAL_VALUES = json.loads(
    (REPO / "tests" / "fixtures" / "original_regionclip_yaml_values.json").read_text()
)

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Dataset names registered by this project (never a detectron2 builtin name).
LVIS_SPLITS = ("train", "val", "test_dev", "test_challenge")
OUR_DATASET_NAMES = {
    f"lvis_v1_{s}_{fam}" for s in LVIS_SPLITS for fam in ("ovd", "custom_img", "fullysup")
} | {f"coco_2017_ovd_{c}_{s}" for c in ("all", "b", "t") for s in ("train", "test")}
# Not a dataset: the literal that selects the pretraining image-caption loader.
IMG_TXT_TRIGGER = "imgtxtpairs"
# The original's names that mean something else in detectron2 -> our names.
RENAMED_DATASETS = {"lvis_v1_train": "lvis_v1_train_ovd", "lvis_v1_val": "lvis_v1_val_ovd"}
# The original edited detectron2's GeneralizedRCNN for CLIP backbones; we register a subclass.
RENAMED_META_ARCHS = {"GeneralizedRCNN": "CLIPGeneralizedRCNN"}

# fmt: off
RN50X4 = [
    "MODEL.RESNETS.DEPTH", "200",
    "MODEL.CLIP.TEXT_EMB_DIM", "640",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "18",
]
RN50X4_MASK = RN50X4 + [
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "320",
]
RN50X4_PRETRAIN = [
    "MODEL.RESNETS.DEPTH", "200",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "18",
    "MODEL.CLIP.TEACHER_RESNETS_DEPTH", "200",
    "MODEL.CLIP.TEACHER_POOLER_RESOLUTION", "18",
]
# fmt: on
COCO = "COCO-InstanceSegmentation/"
LVIS = "LVISv1-InstanceSegmentation/"
# RN50x4 yaml -> command-line overrides the original scripts added to the RN50 yaml (whose name
# is the same with R_50 / RN50).
RN50X4_VARIANTS = {
    COCO + "CLIP_fast_rcnn_R_50x4_C4_ovd.yaml": RN50X4,
    COCO + "CLIP_fast_rcnn_R_50x4_C4_ovd_zsinf.yaml": RN50X4,
    COCO + "CLIP_fast_rcnn_R_50x4_C4_ovd_testb.yaml": RN50X4,
    COCO + "CLIP_fast_rcnn_R_50x4_C4_ovd_testt.yaml": RN50X4,
    LVIS + "CLIP_fast_rcnn_R_50x4_C4.yaml": RN50X4_MASK,
    LVIS + "CLIP_fast_rcnn_R_50x4_C4_zsinf.yaml": RN50X4,
    LVIS + "CLIP_fast_rcnn_R_50x4_C4_custom_img.yaml": RN50X4,
    "pretrain/RegionCLIP_RN50x4.yaml": RN50X4_PRETRAIN,
}


def rn50_parent(rel: str) -> str:
    return rel.replace("R_50x4", "R_50").replace("RN50x4", "RN50")


def fresh_cfg() -> CfgNode:
    cfg = get_cfg()
    add_regionclip_config(cfg)
    cfg.set_new_allowed(False)
    return cfg


def load(rel: str) -> CfgNode:
    cfg = fresh_cfg()
    cfg.merge_from_file(str(CONFIG_DIR / rel))
    return cfg


def flatten(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def plain(value):
    """Tuples and lists compare equal (yaml/json give lists, detectron2 tuples)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that raises on a repeated key in any mapping."""


def _construct_unique_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def test_config_tree_is_complete():
    names = set(YAML_IDS)
    expected_x4 = set(RN50X4_VARIANTS)
    assert expected_x4 <= names
    assert {n for n in names if "R_50x4" in n or "RN50x4" in n} == expected_x4
    assert set(ORIGINAL_VALUES) - {"_provenance"} <= names
    assert len(ORIGINAL_VALUES) - 1 == 21  # every RegionCLIP yaml of the original


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_yaml_loads_with_strict_keys(path):
    cfg = load(str(path.relative_to(CONFIG_DIR)))
    assert cfg.VERSION == 2
    assert not cfg.is_new_allowed()


def test_unknown_key_is_rejected(tmp_path):
    for bad in ("MODEL:\n  CLIP:\n    NOT_A_KEY: 1\n", "AUG:\n  SCALE: (0.08, 1.0)\n",
                "MODEL:\n  CLIP:\n    GRID_REGIONS: True\n"):
        path = tmp_path / "bad.yaml"
        path.write_text(bad)
        with pytest.raises(KeyError):
            fresh_cfg().merge_from_file(str(path))


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_yaml_has_no_duplicate_keys(path):
    yaml.load(path.read_text(), Loader=UniqueKeyLoader)


def test_duplicate_key_loader_rejects_duplicates():
    for text in ("INPUT:\n  A: 1\nINPUT:\n  B: 2\n", "MODEL:\n  CLIP:\n    X: 1\n    X: 2\n"):
        with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key"):
            yaml.load(text, Loader=UniqueKeyLoader)


def test_every_added_key_is_documented():
    added = set(flatten(fresh_cfg())) - set(flatten(get_cfg()))
    assert added == set(rc_config.CONFIG_KEY_DOCS)
    for key in rc_config.CONFIG_KEYS:
        for field in (key.doc, key.allowed, key.used_by):
            assert isinstance(field, str) and len(field.strip()) > 3, key.name
        doc = rc_config.CONFIG_KEY_DOCS[key.name]
        assert key.doc in doc and "Allowed:" in doc and "Read by:" in doc
    ext_added = set(flatten(_ext_only_cfg())) - set(flatten(get_cfg()))
    assert ext_added == set(ext_config.CONFIG_KEY_DOCS)
    assert set(ext_config.CONFIG_KEY_DOCS) <= set(rc_config.CONFIG_KEY_DOCS)


def _ext_only_cfg():
    cfg = get_cfg()
    ext_config.add_detectron2_ext_config(cfg)
    return cfg


def test_no_op_keys_say_so_and_a_yaml_sets_each():
    no_ops = {k.name for k in rc_config.CONFIG_KEYS if "no-op" in k.used_by}
    assert no_ops == {"AUG.TEST.IMAGE_SIZE", "AUG.TEST.MAX_SIZE"}
    for name in no_ops:  # the only reason to keep a key nothing reads
        assert any(name in flatten_yaml(yaml.safe_load(p.read_text()) or {}) for p in YAMLS), name


def flatten_yaml(data, prefix=""):
    out = set()
    for key, value in data.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= flatten_yaml(value, prefix + key + ".")
    return out


def test_keys_not_added_are_absent_rejected_and_documented():
    flat = flatten(fresh_cfg())
    fidelity = (REPO / "docs" / "FIDELITY.md").read_text()
    assert len(rc_config.KEYS_NOT_ADDED) == len(set(rc_config.KEYS_NOT_ADDED)) == 40
    for name in rc_config.KEYS_NOT_ADDED:
        assert name not in flat
        with pytest.raises(AssertionError, match=f"Non-existent key: {name}"):
            fresh_cfg().merge_from_list([name, "1"])
        for path in YAMLS:  # no yaml of configs/ sets it
            assert name not in flatten_yaml(yaml.safe_load(path.read_text()) or {}), (name, path)
    assert rc_config.dropped_keys_markdown() in (REPO / "docs" / "CONFIGS.md").read_text()
    for keys, _ in rc_config.DROPPED_KEYS:  # FIDELITY.md lists each group (braces allowed)
        for name in keys:
            parent, leaf = name.rsplit(".", 1)
            listed = f"`{parent}.{{" in fidelity and leaf in fidelity
            assert f"`{name}`" in fidelity or listed, name


def _attribute_reads(exclude=()):
    """(attribute names, (owner name, attribute) pairs) read in the package's and tools' code
    (docstrings and comments do not count), except in the files that declare the keys."""
    declare = {REPO / "regionclip" / "config.py", REPO / "detectron2_ext" / "config.py"}
    attrs, pairs = set(), set()
    for folder in ("regionclip", "detectron2_ext", "tools"):
        for path in (REPO / folder).rglob("*.py"):
            if path in declare or path.name in exclude:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute):
                    attrs.add(node.attr)
                    owner = getattr(node.value, "attr", getattr(node.value, "id", None))
                    pairs.add((owner, node.attr))
    return attrs, pairs


def _keys_without_reader(keys, exclude=()):
    attrs, pairs = _attribute_reads(exclude)
    leaves = [k.split(".")[-1] for k in rc_config.CONFIG_KEY_DOCS]
    missing = []
    for name in keys:
        parts = name.split(".")
        if name in rc_config.CONFIG_KEY_DOCS and leaves.count(parts[-1]) == 1:  # unique leaf
            found = parts[-1] in attrs
        else:  # e.g. AUG.TRAIN.IMAGE_SIZE / AUG.TEST.IMAGE_SIZE: read through its parent
            found = (parts[-2], parts[-1]) in pairs
        if not found:
            missing.append(name)
    return missing


def test_every_declared_key_has_a_reader():
    no_ops = {k.name for k in rc_config.CONFIG_KEYS if "no-op" in k.used_by}
    assert sorted(_keys_without_reader(rc_config.CONFIG_KEY_DOCS)) == sorted(no_ops)
    # negative controls: a key whose only reader is excluded, and the dropped keys
    assert _keys_without_reader(["MODEL.CLIP.TEACHER_POOLER_RESOLUTION"],
                                exclude=("pretrain_fast_rcnn.py",)) == \
        ["MODEL.CLIP.TEACHER_POOLER_RESOLUTION"]
    assert sorted(_keys_without_reader(rc_config.KEYS_NOT_ADDED)) == \
        sorted(rc_config.KEYS_NOT_ADDED)


# Defaults from the spec's tables (§2.1, §2.2) and the task's new keys.
SPEC_DEFAULTS = {
    "MODEL.CLIP.CROP_REGION_TYPE": "",
    "MODEL.CLIP.BB_RPN_WEIGHTS": None,
    "MODEL.CLIP.USE_TEXT_EMB_CLASSIFIER": False,
    "MODEL.CLIP.TEXT_EMB_PATH": None,
    "MODEL.CLIP.OFFLINE_RPN_CONFIG": None,
    "MODEL.CLIP.NO_BOX_DELTA": False,
    "MODEL.CLIP.BG_CLS_LOSS_WEIGHT": None,
    "MODEL.CLIP.ONLY_SAMPLE_FG_PROPOSALS": False,
    "MODEL.CLIP.MULTIPLY_RPN_SCORE": False,
    "MODEL.CLIP.VIS": False,
    "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH": None,
    "MODEL.CLIP.CLSS_TEMP": 0.01,
    "MODEL.CLIP.FOCAL_SCALED_LOSS": None,
    "MODEL.CLIP.OFFLINE_RPN_NMS_THRESH": None,
    "MODEL.CLIP.OFFLINE_RPN_POST_NMS_TOPK_TEST": None,
    "MODEL.CLIP.PRETRAIN_IMG_TXT_LEVEL": True,
    "MODEL.CLIP.PRETRAIN_ONLY_EOT": False,
    "MODEL.CLIP.PRETRAIN_RPN_REGIONS": None,
    "MODEL.CLIP.PRETRAIN_SAMPLE_REGIONS": None,
    "MODEL.CLIP.GATHER_GPUS": False,
    "MODEL.CLIP.CONCEPT_POOL_EMB": None,
    "MODEL.CLIP.CONCEPT_THRES": None,
    "MODEL.CLIP.OFFLINE_RPN_LSJ_PRETRAINED": False,
    "MODEL.CLIP.TEACHER_RESNETS_DEPTH": 50,
    "MODEL.CLIP.TEACHER_CONCEPT_POOL_EMB": None,
    "MODEL.CLIP.TEACHER_POOLER_RESOLUTION": 14,
    "MODEL.CLIP.TEXT_EMB_DIM": 1024,
    "MODEL.CLIP.GET_CONCEPT_EMB": False,
    "MODEL.CLIP.MULTIPLY_RPN_SCORE_SIGMOID": False,
    "MODEL.CLIP.LOSS_WEIGHT_REGION_DISTILL": 1.0,
    "MODEL.CLIP.LOSS_WEIGHT_CONCEPT_CONTRASTIVE": 1.0,
    "MODEL.CLIP.LOSS_WEIGHT_IMG_TXT": 1.0,
    "MODEL.CLIP.TEACHER_CONCEPT_TEMP": 0.01,
    "MODEL.CLIP.TOKENIZE_TRUNCATE": True,
    "MODEL.CLIP.INFERENCE_REGION_CHUNK": 256,
    "MODEL.CLIP.INFERENCE_DTYPE": "float32",
    "MODEL.CLIP.INFERENCE_FOLD_BN": True,
    "MODEL.CLIP.ARCH": "",
    "MODEL.CLIP.TEACHER_ARCH": "",
    "MODEL.ROI_HEADS.SOFT_NMS_ENABLED": False,
    "MODEL.ROI_HEADS.SOFT_NMS_METHOD": "gaussian",
    "MODEL.ROI_HEADS.SOFT_NMS_SIGMA": 0.5,
    "MODEL.ROI_HEADS.SOFT_NMS_PRUNE": 0.001,
    "INPUT_DIR": "./datasets/custom_images",
    "INPUT.TEXT_TOKENIZER": "openai_bpe",
    "DATASETS.FACTORY_TRAIN": (),
    "DATASETS.PATH_TRAIN": (),
    "AUG.INTERPOLATION": 3,
    "AUG.TRAIN.IMAGE_SIZE": [224, 224],
    "AUG.TRAIN.MAX_SIZE": None,
    "AUG.TEST.IMAGE_SIZE": [224, 224],
    "AUG.TEST.MAX_SIZE": None,
}


def test_defaults_match_spec():
    flat = flatten(fresh_cfg())
    for name, expected in SPEC_DEFAULTS.items():
        assert flat[name] == expected and type(flat[name]) is type(expected), name
    # Every MODEL.CLIP key is listed above: the table is the full spec.
    clip_keys = {k for k in flat if k.startswith("MODEL.CLIP.")}
    assert clip_keys == {k for k in SPEC_DEFAULTS if k.startswith("MODEL.CLIP.")}
    assert len(clip_keys) == 28 + 11  # the original's 32 minus its 4 dead keys; 11 new


def test_add_config_is_idempotent_and_keeps_values():
    cfg = fresh_cfg()
    once = cfg.dump()
    add_regionclip_config(cfg)
    assert cfg.dump() == once
    cfg.MODEL.CLIP.CLSS_TEMP = 0.05
    cfg.AUG.TRAIN.IMAGE_SIZE.append(1)
    add_regionclip_config(cfg)
    assert cfg.MODEL.CLIP.CLSS_TEMP == 0.05
    # Defaults are copied: editing one config leaves a new one untouched.
    assert fresh_cfg().AUG.TRAIN.IMAGE_SIZE == [224, 224]


def test_frozen_cfg_gives_clear_error():
    cfg = get_cfg()
    cfg.freeze()
    with pytest.raises(ValueError, match="frozen"):
        add_regionclip_config(cfg)


def test_non_node_parent_gives_clear_error():
    cfg = get_cfg()
    cfg.AUG = 3
    with pytest.raises(ValueError, match="AUG"):
        add_regionclip_config(cfg)


def test_coco_ovd_values():
    cfg = load(COCO + "CLIP_fast_rcnn_R_50_C4_ovd.yaml")
    assert cfg.MODEL.META_ARCHITECTURE == "CLIPFastRCNN"
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 48
    assert cfg.MODEL.CLIP.BG_CLS_LOSS_WEIGHT == 0.2
    assert cfg.MODEL.CLIP.FOCAL_SCALED_LOSS == 0.5
    assert cfg.MODEL.CLIP.USE_TEXT_EMB_CLASSIFIER is True
    assert cfg.MODEL.CLIP.MULTIPLY_RPN_SCORE is False
    assert list(cfg.MODEL.PIXEL_MEAN) == CLIP_MEAN and list(cfg.MODEL.PIXEL_STD) == CLIP_STD
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.MASK_ON is False
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.001
    assert tuple(cfg.SOLVER.STEPS) == (60000, 80000) and cfg.SOLVER.MAX_ITER == 90000
    zs = load(COCO + "CLIP_fast_rcnn_R_50_C4_ovd_zsinf.yaml")
    assert zs.MODEL.ROI_HEADS.NUM_CLASSES == 65 and zs.MODEL.CLIP.NO_BOX_DELTA is True
    assert zs.MODEL.CLIP.OFFLINE_RPN_NMS_THRESH == 0.9


def test_lvis_values():
    cfg = load(LVIS + "CLIP_fast_rcnn_R_50_C4.yaml")
    assert cfg.MODEL.MASK_ON is True
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 866
    assert cfg.MODEL.CLIP.MULTIPLY_RPN_SCORE is True
    assert cfg.MODEL.CLIP.BG_CLS_LOSS_WEIGHT == 0.8 and cfg.MODEL.CLIP.FOCAL_SCALED_LOSS is None
    assert cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
    assert cfg.DATALOADER.REPEAT_THRESHOLD == 0.001
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 300
    assert tuple(cfg.DATASETS.TRAIN) == ("lvis_v1_train_ovd",)
    custom = load(LVIS + "CLIP_fast_rcnn_R_50_C4_custom_img.yaml")
    assert custom.MODEL.CLIP.VIS is True and custom.MODEL.ROI_HEADS.NMS_THRESH_TEST == 0.3
    assert custom.MODEL.MASK_ON is False and custom.MODEL.ROI_HEADS.NUM_CLASSES == 1203


def test_pretrain_values():
    for rel, depth, pooler in (
        ("pretrain/RegionCLIP_RN50.yaml", 50, 14),
        ("pretrain/RegionCLIP_RN50x4.yaml", 200, 18),
    ):
        cfg = load(rel)
        assert cfg.MODEL.META_ARCHITECTURE == "PretrainFastRCNN"
        assert cfg.MODEL.ROI_HEADS.NAME == "PretrainRes5ROIHeads"
        assert cfg.SOLVER.IMS_PER_BATCH == 96
        assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED is True
        assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "norm"
        assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 5.0
        assert cfg.MODEL.CLIP.TEACHER_RESNETS_DEPTH == depth == cfg.MODEL.RESNETS.DEPTH
        assert cfg.MODEL.CLIP.TEACHER_POOLER_RESOLUTION == pooler
        assert cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION == pooler
        assert cfg.MODEL.CLIP.CONCEPT_THRES == 0.1
        assert tuple(cfg.DATASETS.TRAIN) == (IMG_TXT_TRIGGER,)
        assert tuple(cfg.DATASETS.FACTORY_TRAIN) == ("CLIPImgTxtPairTSVDataset",)
        assert list(cfg.AUG.TRAIN.IMAGE_SIZE) == [800] and cfg.AUG.TRAIN.MAX_SIZE == 1333
        assert cfg.AUG.INTERPOLATION == 3
        assert not os.path.isabs(cfg.DATASETS.PATH_TRAIN[0])


@pytest.mark.parametrize("rel", sorted(set(ORIGINAL_VALUES) - {"_provenance"}))
def test_yaml_reproduces_the_original(rel):
    """Every value the original yaml set is the same here (up to documented renames)."""
    defaults = flatten(fresh_cfg())
    ours = flatten(load(rel))
    ours_set = {k: v for k, v in ours.items() if plain(v) != plain(defaults[k])}
    expected = dict(ORIGINAL_VALUES[rel])
    for key in ("DATASETS.TRAIN", "DATASETS.TEST"):
        if key in expected:
            expected[key] = [RENAMED_DATASETS.get(n, n) for n in expected[key]]
    if os.path.basename(rel).startswith("mask_rcnn_CLIP_"):  # GeneralizedRCNN (the default)
        expected["MODEL.META_ARCHITECTURE"] = RENAMED_META_ARCHS["GeneralizedRCNN"]
    ours_set.pop("DATASETS.PATH_TRAIN", None)  # personal path in the original, relative here
    assert set(ours_set) == set(expected)
    for key, value in expected.items():
        assert plain(ours_set[key]) == value, key


def test_base_configs_equal_detectron2_bases():
    for name in ("Base-RCNN-C4.yaml", "Base-RCNN-FPN.yaml"):
        ours = get_cfg()
        ours.merge_from_file(str(CONFIG_DIR / name))
        theirs = get_cfg()
        theirs.merge_from_file(model_zoo.get_config_file(name))
        assert flatten(ours) == flatten(theirs)
        assert flatten(ours) != flatten(get_cfg())  # the bases do set values


@pytest.mark.parametrize("rel", sorted(RN50X4_VARIANTS))
def test_rn50x4_yaml_equals_rn50_yaml_plus_original_overrides(rel):
    rn50, overrides = rn50_parent(rel), RN50X4_VARIANTS[rel]
    assert f'_BASE_: "./{Path(rn50).name}"' in (CONFIG_DIR / rel).read_text()
    expected = load(rn50)
    expected.merge_from_list(overrides)
    got = flatten(load(rel))
    assert got == flatten(expected)
    assert got != flatten(load(rn50))


def _strings(value):
    if isinstance(value, str):
        yield value
        try:  # detectron2 yamls write tuples as strings, e.g. ("coco_2017_train",)
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return
        if isinstance(parsed, (tuple, list)):
            yield from (v for v in parsed if isinstance(v, str))
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_no_absolute_or_personal_paths(path):
    raw = yaml.safe_load(path.read_text())
    for text in _strings(raw):
        assert not os.path.isabs(text) and not text.startswith("~"), text
        assert "/home/" not in text and "/mnt/" not in text, text
    assert "/home/" not in path.read_text()


def _dataset_names_used():
    used = set()
    for rel in YAML_IDS:
        cfg = load(rel)
        used |= set(cfg.DATASETS.TRAIN) | set(cfg.DATASETS.TEST)
    return used


def test_dataset_names_are_ours_or_detectron2_builtins():
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import builtin

    builtin_names = set()
    for splits in (builtin._PREDEFINED_SPLITS_COCO, builtin._PREDEFINED_SPLITS_LVIS):
        for family in splits.values():
            builtin_names |= set(family)
    assert not OUR_DATASET_NAMES & builtin_names  # never re-register a builtin name
    assert {"lvis_v1_train", "lvis_v1_val", "coco_2017_train"} <= builtin_names

    used = _dataset_names_used()
    assert IMG_TXT_TRIGGER in used
    unknown = used - OUR_DATASET_NAMES - builtin_names - {IMG_TXT_TRIGGER}
    assert not unknown
    assert not used & set(RENAMED_DATASETS)  # the original's meaning changed: renamed
    # `import regionclip` (done by importing regionclip.config) registers our names.
    registered = set(DatasetCatalog.list())
    assert OUR_DATASET_NAMES <= registered
    assert used - {IMG_TXT_TRIGGER} <= registered
    assert {"lvis_v1_train_ovd", "lvis_v1_val_ovd", "coco_2017_ovd_b_train"} <= used


def test_docs_table_matches_config_keys():
    text = (REPO / "docs" / "CONFIGS.md").read_text()
    assert rc_config.config_keys_markdown() in text
    for rel in RN50X4_VARIANTS:
        assert rel in text
    for old, new in RENAMED_DATASETS.items():
        assert f"`{old}`" in text and f"`{new}`" in text


def test_dumps_of_older_versions_load_without_the_removed_keys(tmp_path):
    """A config dumped before the dead keys were removed (OUTPUT_DIR/config.yaml) still loads;
    a removed key set to anything but its former default is an unknown-key error."""
    from regionclip.yaml_config import merge_config_file

    old = fresh_cfg()
    old.MODEL.CLIP.GRID_REGIONS = False  # what an older version wrote, among its other keys
    old.MODEL.CLIP.IMS_PER_BATCH_TEST = 8
    old.DATASETS.FACTORY_TEST = ()
    old.MODEL.CLIP.CLSS_TEMP = 0.02  # a real setting of the dumped run
    dump = tmp_path / "config.yaml"
    dump.write_text(old.dump())
    cfg = fresh_cfg()
    merge_config_file(cfg, str(dump))
    assert cfg.MODEL.CLIP.CLSS_TEMP == 0.02 and "GRID_REGIONS" not in cfg.MODEL.CLIP
    with pytest.raises(KeyError, match="Non-existent config key: MODEL.CLIP.GRID_REGIONS"):
        dump.write_text(dump.read_text().replace("GRID_REGIONS: false", "GRID_REGIONS: true"))
        merge_config_file(fresh_cfg(), str(dump))
