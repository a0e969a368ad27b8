"""Files of the model zoo in the original's formats, for tests.

* :func:`write_shape_files`: every released file of :mod:`regionclip.model_zoo` with the keys and
  shapes of the real one (RN50 / RN50x4 / R50 RPNs), as *meta* tensors: a few KB each, keys and
  shapes only, no values. The zoo's checks read nothing else, so these files pass or fail them as
  the released files would; they cannot be loaded into a model.
* :func:`write_tiny_files`: a tiny pretrained checkpoint, detector, RPN and embedding file with
  random values (tiny CLIP of ``tiny_clip``, R18-FPN RPN of ``tiny_detector``), and
  :func:`tiny_zoo` registers models named after them, which detect.

Formats (pretrained_ckpt/README.md): pretrained ``{"model": backbone.*, teacher_backbone.*,
lang_encoder.*, offline_backbone.*, offline_proposal_generator.*}``; detector ``{"model": the
CLIPFastRCNN's state dict}`` (no text tower); RPN ``{"model": a detectron2 Mask R-CNN}``;
embeddings one float tensor (rows, D); CLIP OpenAI key names.
"""
import os

import torch
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from tiny_clip import TINY, TINY_OPTS, write_tiny_clip
from tiny_detector import write_tiny_rpn_config

from regionclip import model_zoo
from regionclip.clip import build_clip, build_text
from regionclip.config import load_config
from regionclip.modeling.clip_arch import resolve_clip_arch

# a detectron2 Mask R-CNN config of each RPN architecture of the zoo
RPN_CONFIGS = {"R50-C4": "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x_ovd_FSD.yaml",
               "R50-FPN": "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
               "CLIP-RN50-FPN": "LVISv1-InstanceSegmentation/mask_rcnn_CLIP_R_50_FPN_1x.yaml"}
NO_EMB = ["MODEL.CLIP.TEXT_EMB_PATH", "", "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", "",
          "MODEL.DEVICE", "cpu"]


def _meta_model(config, opts=()):
    """The state dict of the model of ``config`` as meta tensors (shapes, no values); built on
    the meta device, or on the CPU for models whose constructor reads a tensor's value."""
    cfg = load_config(config, list(opts) + NO_EMB)
    build = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    try:
        with torch.device("meta"):
            return build(cfg).state_dict()
    except RuntimeError:  # e.g. a CLIP backbone checks its pixel mean
        return {k: torch.empty(v.shape, dtype=v.dtype, device="meta")
                for k, v in build(cfg).state_dict().items()}


def detector_state(model):
    """State dict of the CLIPFastRCNN of zoo model ``model`` (with its offline RPN)."""
    return _meta_model(model.config, ["MODEL.CLIP.OFFLINE_RPN_CONFIG", model.rpn_config]
                       + list(model.opts))


def pretrained_state(model):
    """A RegionCLIP pretrained checkpoint's tensors for zoo model ``model``: student, teacher,
    text tower and the offline RPN of pretraining."""
    sd = detector_state(model)
    out = {k: v for k, v in sd.items() if k.startswith(("backbone.", "offline_"))}
    out.update({"teacher_" + k: v for k, v in out.items() if k.startswith("backbone.")})
    config = resolve_clip_arch(model_zoo.get_file(model.weights).arch, 0)
    with torch.device("meta"):
        out.update({"lang_encoder." + k: v for k, v in build_text(config).state_dict().items()})
    return out


def write_shape_files(folder, only=None):
    """Write the zoo's files (or those named in ``only``) into ``folder/<sub-folder>/`` with the
    keys and shapes of the released files (meta tensors). Returns {file name: path}."""
    models = {model_zoo.get_model(n).weights: model_zoo.get_model(n)
              for n in model_zoo.list_models()}
    paths = {}
    for filename in only or model_zoo.list_files():
        file = model_zoo.get_file(filename)
        path = os.path.join(folder, file.folder, filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if file.kind == "rpn":
            obj = {"model": _meta_model(RPN_CONFIGS[file.arch])}
        elif file.kind == "embeddings":
            dim = resolve_clip_arch(file.arch, 0).embed_dim
            obj = torch.empty(file.rows, dim, device="meta")
        elif file.kind == "clip":
            with torch.device("meta"):
                obj = build_clip(resolve_clip_arch(file.arch, 0)).state_dict()
        elif file.kind == "pretrained":
            obj = {"model": pretrained_state(models[filename]),
                   "__author__": "RegionCLIP pretraining"}
        else:
            sd = detector_state(models[filename])
            obj = {"model": {k: v for k, v in sd.items() if not k.startswith("lang_encoder.")}}
        torch.save(obj, path)
        paths[filename] = path
    return paths


# ------------------------------------------------------------------------------ tiny, real values
TINY_CONFIG = "LVISv1-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_custom_img.yaml"
TINY_DETECTOR_CONFIG = "COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd.yaml"


def write_tiny_files(folder, seed=0):
    """Tiny files with random values in ``folder/<sub-folder>/``: ``tiny_pretrained.pth`` (with
    the offline RPN), ``tiny_finetuned.pth`` (no offline RPN: it needs ``tiny_rpn.pth``),
    ``tiny_rpn.pth`` and ``tiny_emb_5.pth``.

    Returns:
        dict: ``arch`` (the CLIP JSON), ``rpn_config``, ``opts`` (tiny model overrides) and the
        path of each file by its name.
    """
    folder = str(folder)
    arch, oai = write_tiny_clip(folder, seed)
    rpn_config = write_tiny_rpn_config(folder)
    opts = TINY_OPTS + ["MODEL.CLIP.ARCH", arch, "MODEL.CLIP.OFFLINE_RPN_POST_NMS_TOPK_TEST", "20",
                        "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160", "SEED", "0"]
    torch.manual_seed(seed)
    cfg = load_config(TINY_DETECTOR_CONFIG, opts + NO_EMB + [
        "MODEL.CLIP.OFFLINE_RPN_CONFIG", rpn_config, "MODEL.CLIP.GET_CONCEPT_EMB", "True"])
    sd = build_model(cfg).state_dict()
    with torch.no_grad():
        for v in sd.values():
            if v.is_floating_point():
                v.add_(0.01 * torch.randn_like(v))  # not a fresh model's values
    clip = torch.load(oai)  # a calibrated tiny CLIP: the pretrained model's towers
    pre = {"backbone." + k[len("visual."):]: v for k, v in clip.items() if k.startswith("visual.")}
    pre.update({"teacher_" + k: v.clone() for k, v in pre.items()})
    pre.update({"lang_encoder." + k: v for k, v in clip.items() if not k.startswith("visual.")
                and k != "logit_scale"})
    pre.update({k: v for k, v in sd.items() if k.startswith("offline_")})
    files = {"tiny_pretrained.pth": ("regionclip", {"model": pre}),
             "tiny_finetuned.pth": ("regionclip", {"model": {
                 k: v for k, v in sd.items() if not k.startswith(("lang_encoder.", "offline_"))}}),
             "tiny_rpn.pth": ("rpn", {"model": {
                 k[len("offline_"):]: v for k, v in sd.items() if k.startswith("offline_")}}),
             "tiny_emb_5.pth": ("concept_emb", torch.randn(5, TINY.embed_dim))}
    out = {"arch": arch, "rpn_config": rpn_config, "opts": opts}
    for name, (sub, obj) in files.items():
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        out[name] = os.path.join(folder, sub, name)
        torch.save(obj, out[name])
    return out


def tiny_zoo(monkeypatch, tiny):
    """Register ``tiny_pretrained`` and ``tiny_finetuned`` (their files: :func:`write_tiny_files`)
    for one test; the zoo's tables are restored afterwards."""
    for table in ("_MODELS", "_FILES", "_HASHES"):
        monkeypatch.setattr(model_zoo, table, dict(getattr(model_zoo, table)))
    arch = tiny["arch"]
    files = [model_zoo.ZooFile("tiny_pretrained.pth", "regionclip", "pretrained", arch),
             model_zoo.ZooFile("tiny_finetuned.pth", "regionclip", "detector", arch),
             model_zoo.ZooFile("tiny_rpn.pth", "rpn", "rpn", "R18-FPN"),
             model_zoo.ZooFile("tiny_emb_5.pth", "concept_emb", "embeddings", arch, rows=5)]
    model_zoo.register_model(model_zoo.ZooModel(
        "tiny_pretrained", TINY_CONFIG, "tiny_pretrained.pth", tiny["rpn_config"], "tiny_rpn.pth",
        embeddings=(("MODEL.CLIP.TEXT_EMB_PATH", "tiny_emb_5.pth"),), opts=tuple(tiny["opts"])),
        files)
    model_zoo.register_model(model_zoo.ZooModel(
        "tiny_finetuned", TINY_DETECTOR_CONFIG, "tiny_finetuned.pth", tiny["rpn_config"],
        "tiny_rpn.pth", text_encoder="tiny_pretrained.pth", opts=tuple(tiny["opts"])))
