"""Generate the parity fixtures by running the ORIGINAL RegionCLIP (microsoft/RegionCLIP @ 4b8513b).

Usage (never in CI; it needs a checkout of the original, e.g. from its git mirror)::

    git --git-dir=<mirror>/microsoft+RegionCLIP/repo --work-tree=/tmp/regionclip_orig \\
        checkout HEAD -- .
    .venv/bin/python tests/parity/generate_fixtures.py --original /tmp/regionclip_orig

The original's checkout is put first on ``sys.path`` so that ``import detectron2`` is its
detectron2 fork; this process never imports this project (nor the installed detectron2). The
original needs a few runtime shims on today's stack, each installed by :func:`install_shims`
before the first ``import detectron2`` (see tests/parity/README.md). Every model is built from
the original's yaml files with the overrides of :mod:`inputs`, filled with
:mod:`seeded_weights`, and run on the inputs of :mod:`inputs`. Results go to
``tests/parity/fixtures/{keys,outputs}.npz``; tests/test_parity_original.py repeats every run
with this project and compares.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from inputs import (  # noqa: E402
    CAPTIONS,
    CHECKPOINT_OFFSETS,
    CONCEPTS,
    GT_CLASSES_48,
    detection_inputs,
    make_image,
    scenario,
    write_embedding_files,
)
from seeded_weights import load_seeded, seeded_tensor  # noqa: E402

KEY_SCENARIOS = ("keys_coco", "keys_coco_rn50x4", "keys_lvis", "keys_pretrain", "concepts")
GRAD_PARAMS = ("backbone.layer2.0.conv1.weight", "backbone.layer3.5.conv3.weight",
               "backbone.layer4.2.conv3.weight", "backbone.attnpool.positional_embedding",
               "backbone.attnpool.c_proj.weight", "roi_heads.box_predictor.bbox_pred.weight")


def install_shims(original: str):
    """Make the original importable on this stack (PyTorch 2.x, NumPy 1.26, Pillow >= 10).

    1. ``np.bool`` (removed in NumPy 1.24) -> ``bool``: used by the fork's data/structures code.
    2. ``PIL.Image.LINEAR`` (removed in Pillow 10) -> ``BILINEAR``: read at import time by the
       fork's vendored transforms.
    3. ``diffdist``: imported at the top of ``detectron2/utils/comm.py``, only called for
       multi-process gathers (one process here) -> an empty stub module.
    4. ``detectron2._C`` (the compiled extension, not built): a stub whose functions raise if
       ever called; only deformable/rotated ops use it, none of the models here.
    5. ``torch.ops.detectron2.nms_rotated``: looked up at import time by ``layers/nms.py``
       (PyTorch >= 1.7 path) -> the raising stub of 4.
    """
    sys.path.insert(0, original)
    np.bool = bool
    import PIL.Image

    if not hasattr(PIL.Image, "LINEAR"):
        PIL.Image.LINEAR = PIL.Image.BILINEAR
    sys.modules.setdefault("diffdist", types.ModuleType("diffdist"))

    class _NotCompiled(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)

            def missing(*args, **kwargs):
                raise NotImplementedError(f"detectron2._C.{name} is not compiled")
            return missing

    sys.modules["detectron2._C"] = _NotCompiled("detectron2._C")
    try:
        torch.ops.detectron2.nms_rotated
    except (AttributeError, RuntimeError):
        setattr(torch.ops.detectron2, "nms_rotated", sys.modules["detectron2._C"].nms_rotated)
    import detectron2

    detectron2._C = sys.modules["detectron2._C"]
    where = os.path.realpath(detectron2.__file__)
    if not where.startswith(os.path.realpath(original)):
        raise RuntimeError(f"detectron2 was imported from {where}, not from {original}")
    return detectron2


def build(name, original, files):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    config, opts = scenario(name, original, files, original=True)
    cfg = get_cfg()
    cfg.merge_from_file(config)
    cfg.merge_from_list(opts)
    cfg.freeze()
    model = build_model(cfg)
    specs = load_seeded(model, offsets=CHECKPOINT_OFFSETS.get(name))
    model.eval()
    return model, specs


def record_instances(out, prefix, inst):
    out[prefix + "boxes"] = inst.pred_boxes.tensor.numpy()
    out[prefix + "scores"] = inst.scores.numpy()
    out[prefix + "classes"] = inst.pred_classes.numpy()
    if inst.has("pred_masks"):
        out[prefix + "masks"] = inst.pred_masks.numpy().astype(np.float16)


def hook_outputs(module, store):
    return module.register_forward_hook(lambda m, i, o: store.append(o))


def run_zero_shot_gt(model, out):
    embs = []
    handle = hook_outputs(model.backbone.attnpool, embs)
    with torch.no_grad():
        result = model(detection_inputs(True))[0]["instances"]
    handle.remove()
    out["zs_gt/region_emb"] = embs[0].numpy()
    record_instances(out, "zs_gt/", result)


def run_rpn_inference(name, model, out):
    proposals, embs = [], []
    handles = [hook_outputs(model.offline_proposal_generator, proposals),
               hook_outputs(model.backbone.attnpool, embs)]
    with torch.no_grad():
        results = model.inference(detection_inputs(False), do_postprocess=False)
    for h in handles:
        h.remove()
    props = proposals[0][0][0]
    out[f"{name}/proposal_boxes"] = props.proposal_boxes.tensor.numpy()
    out[f"{name}/objectness_logits"] = props.objectness_logits.numpy()
    proj = seeded_tensor("region_emb_projection", (embs[0].shape[1], 16))
    out[f"{name}/region_emb_proj"] = (embs[0] @ proj).numpy()
    record_instances(out, f"{name}/", results[0])


def run_training(name, model, out):
    from detectron2.utils.events import EventStorage

    model.train()
    with EventStorage(0):
        losses = model(detection_inputs(True, GT_CLASSES_48))
    sum(losses.values()).backward()
    for k, v in losses.items():
        out[f"{name}/{k}"] = np.array(v.item())
    params = dict(model.named_parameters())
    out[f"{name}/grad_norms"] = np.array([params[p].grad.norm().item() for p in GRAD_PARAMS])
    out[f"{name}/bbox_pred_grad"] = params["roi_heads.box_predictor.bbox_pred.weight"].grad.numpy()


def run_concepts(model, out):
    from detectron2.data.datasets.clip_prompt_utils import pre_tokenize

    feats = []
    for i, concept in enumerate(CONCEPTS):  # the loop of tools/extract_concept_features.py
        with torch.no_grad():
            tokens = pre_tokenize([concept]).to(model.device)[0]
            feats.append(model.lang_encoder.encode_text(tokens).mean(0, keepdim=True))
        out[f"concepts/tokens_{i}"] = tokens.numpy().astype(np.int32)
    out["concepts/embeddings"] = torch.squeeze(torch.stack(feats, 0)).numpy()


def pretrain_inputs():
    from detectron2.data.datasets.clip_prompt_utils import (
        SimpleTokenizer,
        convert_example_to_features_bpe,
    )

    tok = SimpleTokenizer()
    sot, eot = tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]
    batch = []
    for i, caption in enumerate(CAPTIONS):  # the tuples of CLIPImgTxtPairTSVDataset
        image = make_image(i)
        tokens = torch.tensor(convert_example_to_features_bpe(caption, tok, sot, eot),
                              dtype=torch.long)
        img = torch.as_tensor(image.transpose(2, 0, 1).astype(np.float32) / 255.0)
        batch.append((img, tokens, None, None, torch.LongTensor([100000]),
                      ("parity", str(i), image.shape[:2], None)))
    return batch


def run_pretraining(model, out):
    """Full training forward; the only change: global boxes wrapped in Instances (crash fix)."""
    from detectron2.structures import Instances

    create_global = model.create_global_proposals

    def global_instances(batched_inputs):
        wrapped = []
        for boxes, x in zip(create_global(batched_inputs), batched_inputs):
            inst = Instances(tuple(x[0].shape[-2:]))
            inst.proposal_boxes = boxes
            wrapped.append(inst)
        return wrapped

    model.create_global_proposals = global_instances
    labels = []
    pseudo = model.get_psuedo_concept_labels

    def record(*args, **kwargs):
        result = pseudo(*args, **kwargs)
        labels.append(result)
        return result

    model.get_psuedo_concept_labels = record
    batch = pretrain_inputs()
    for i, x in enumerate(batch):
        out[f"pretrain/tokens_{i}"] = x[1].numpy().astype(np.int32)
    model.eval()
    with torch.no_grad():  # all offline proposals, unsampled, in RPN order
        props = model.get_region_proposals(batch)
    for i, p in enumerate(props):
        out[f"pretrain/proposal_boxes_{i}"] = p.proposal_boxes.tensor.numpy()
    model.train()
    torch.manual_seed(0)
    losses = model(batch)
    for k, v in losses.items():
        out[f"pretrain/{k}"] = np.array(v.item())
    concept_scores, target_inds, keep, _, _ = labels[0]
    out["pretrain/num_regions"] = np.array(keep.numel())
    out["pretrain/pseudo_labels_sorted"] = np.sort(target_inds.numpy())
    out["pretrain/pseudo_max_prob_sorted"] = np.sort(concept_scores.max(dim=1).values.numpy())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", required=True, help="checkout of microsoft/RegionCLIP")
    parser.add_argument("--output", default=os.path.join(HERE, "fixtures"))
    parser.add_argument("--commit", default="", help="commit of the checkout (default: git "
                        "rev-parse HEAD in it)")
    parser.add_argument("--only", default="", help="comma-separated scenarios to (re)run; the "
                        "others are kept from the existing fixture files")
    args = parser.parse_args()
    original = os.path.abspath(args.original)
    detectron2 = install_shims(original)
    commit = args.commit or subprocess.run(["git", "-C", original, "rev-parse", "HEAD"],
                                           capture_output=True, text=True).stdout.strip()
    if not commit:
        parser.error(f"{original} is not a git work tree: give the commit with --commit")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    keys, out, timings = {}, {}, {}
    only = [n for n in args.only.split(",") if n]
    if only:
        for store, fname in ((keys, "keys.npz"), (out, "outputs.npz")):
            with np.load(os.path.join(args.output, fname)) as old:
                store.update({k: old[k] for k in old.files if k.split("/")[0] not in only})
    with tempfile.TemporaryDirectory() as tmp:
        files = write_embedding_files(tmp)
        steps = [
            ("keys_coco", None), ("keys_coco_rn50x4", None), ("keys_lvis", None),
            ("keys_pretrain", None), ("concepts", run_concepts), ("zs_gt", run_zero_shot_gt),
            ("lvis_rpn", lambda m, o: run_rpn_inference("lvis_rpn", m, o)),
            ("coco_rpn", lambda m, o: run_rpn_inference("coco_rpn", m, o)),
            ("train_gt", lambda m, o: run_training("train_gt", m, o)),
            ("train_rpn", lambda m, o: run_training("train_rpn", m, o)),
            ("pretrain", run_pretraining),
        ]
        for name, run in steps:
            if only and name not in only:
                continue
            start = time.time()
            model, specs = build(name, original, files)
            if name in KEY_SCENARIOS:
                keys[f"{name}/names"] = np.array([k for k, _, _ in specs])
                keys[f"{name}/shapes"] = np.array(["x".join(map(str, s)) for _, s, _ in specs])
                keys[f"{name}/dtypes"] = np.array([d for _, _, d in specs])
            if run is not None:
                torch.manual_seed(0)
                run(model, out)
            timings[name] = time.time() - start
            print(f"{name}: {timings[name]:.1f} s", flush=True)
    out["meta/original_commit"] = np.array(commit)
    out["meta/detectron2_version"] = np.array(detectron2.__version__)
    out["meta/torch_version"] = np.array(torch.__version__)
    out["meta/image_sum"] = np.array([int(make_image(i).sum()) for i in range(2)])
    os.makedirs(args.output, exist_ok=True)
    np.savez_compressed(os.path.join(args.output, "keys.npz"), **keys)
    np.savez_compressed(os.path.join(args.output, "outputs.npz"), **out)
    for f in ("keys.npz", "outputs.npz"):
        print(f, os.path.getsize(os.path.join(args.output, f)), "bytes")


if __name__ == "__main__":
    main()
