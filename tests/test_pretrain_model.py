"""PretrainFastRCNN: construction, frozen parts, regions, losses, training steps, bad input.

Most tests build the model from tiny CLIP towers passed directly to the constructor; one test
builds the real RN50 configuration (RPN mode with the LVIS offline RPN) at a tiny image size.
"""
import copy
import json
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils import comm
from multiproc import launch_two
from tiny_clip import calibrate_batchnorm_
from torch.nn.parallel import DistributedDataParallel

import regionclip  # noqa: F401  (registers everything)
from regionclip.clip import TextTransformer, VisualConfig
from regionclip.config import add_regionclip_config
from regionclip.modeling.backbone.clip_resnet import CLIPResNetBackbone
from regionclip.modeling.losses import image_text_contrastive_loss
from regionclip.modeling.meta_arch.offline_rpn import build_offline_modules
from regionclip.modeling.meta_arch.pretrain_fast_rcnn import PretrainFastRCNN, random_grid_boxes
from regionclip.modeling.roi_heads.clip_roi_heads import PretrainRes5ROIHeads, region_embeddings

PRETRAIN_YAML = os.path.join(REPO, "configs/pretrain/RegionCLIP_RN50.yaml")
OFFLINE_YAML = os.path.join(REPO, "configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
DIM, TEACHER_DIM, CONCEPTS = 32, 24, 12


def _cfg(**clip):
    cfg = get_cfg()
    add_regionclip_config(cfg)
    cfg.merge_from_file(PRETRAIN_YAML)
    cfg.MODEL.DEVICE = "cpu"
    for key, value in clip.items():
        setattr(cfg.MODEL.CLIP, key, value)
    return cfg


def _tower(embed_dim, seed, freeze_at=2):
    torch.manual_seed(seed)
    # (1, 1, 1, 1) blocks, width 8; 224 px attention pool = the 7x7 grid of 14x14 RoIs after layer4
    tower = CLIPResNetBackbone(VisualConfig((1, 1, 1, 1), 8, 224, embed_dim, 4), ("res4",),
                               freeze_at=freeze_at)
    with torch.no_grad():  # CLIP's init zeroes each block's last gain: the blocks would be skips
        for name, buf in tower.named_buffers():
            if ".bn3." in name and name.endswith("weight"):
                buf.uniform_(0.2, 0.6)
    return calibrate_batchnorm_(tower, 224, seed)  # regions and images embed differently


def _parts(**overrides):
    cfg = _cfg(CROP_REGION_TYPE="RANDOM", PRETRAIN_SAMPLE_REGIONS=3)
    student, teacher = _tower(DIM, 0), _tower(TEACHER_DIM, 1)
    torch.manual_seed(2)
    kwargs = dict(
        backbone=student,
        roi_heads=PretrainRes5ROIHeads(cfg, student.output_shape()),
        teacher_backbone=teacher,
        teacher_roi_heads=PretrainRes5ROIHeads(cfg, teacher.output_shape()),
        language_encoder=TextTransformer(width=32, heads=2, layers=1, embed_dim=DIM),
        concept_emb=torch.randn(CONCEPTS, DIM),
        teacher_concept_emb=torch.randn(CONCEPTS, TEACHER_DIM),
        concept_thres=0.1,
        pixel_mean=CLIP_MEAN,
        pixel_std=CLIP_STD,
        crop_region_type="RANDOM",
        num_regions_per_img=3,
        matching_temp=0.01,
    )
    kwargs.update(overrides)
    return kwargs


def _tiny(**overrides):
    return PretrainFastRCNN(**_parts(**overrides)).train()


def _batch(seed=0, sizes=((64, 96), (80, 64)), captions=(2, 1)):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.rand(3, h, w, generator=g),
             "captions": torch.randint(1, 49407, (n, 77), generator=g),
             "key": f"k{i}", "dataset": "synthetic", "orig_size": (h, w)}
            for i, ((h, w), n) in enumerate(zip(sizes, captions))]


def _diverse_teacher_pool(model, batch, seed=0):
    """Teacher pool rows = teacher embeddings of sampled regions: varied pseudo labels.

    (A random teacher embeds all regions almost alike, so a random pool gives one label.)
    """
    torch.manual_seed(seed)
    images = model.preprocess_image(batch)
    props = model.sample_regions(model.get_region_proposals(batch, images))
    with torch.no_grad():
        feats = model.teacher_backbone(images.tensor)
        u = _embed(model.teacher_roi_heads, feats, props, model.teacher_backbone)
    model.teacher_concept_emb[: len(u)] = u[: CONCEPTS]


def _embed(heads, features, proposals, backbone):
    """Region embeddings through the given backbone's own layer4 and attnpool."""
    return region_embeddings(heads.pooler, [features[f] for f in heads.in_features],
                             [p.proposal_boxes for p in proposals], backbone.layer4,
                             backbone.attnpool)[0]


def _state(model):
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["<concept_emb>"] = model.concept_emb.clone()
    state["<teacher_concept_emb>"] = model.teacher_concept_emb.clone()
    return state


# ----------------------------------------------------------------- structure


def test_rn50_from_config_rpn_mode_builds_frozen_parts_and_trains(tmp_path):
    torch.save(torch.randn(10, 1024), tmp_path / "pool.pth")
    cfg = _cfg(CONCEPT_POOL_EMB=str(tmp_path / "pool.pth"), OFFLINE_RPN_CONFIG=OFFLINE_YAML,
               PRETRAIN_RPN_REGIONS=6, PRETRAIN_SAMPLE_REGIONS=3)
    model = build_model(cfg)
    assert isinstance(model, PretrainFastRCNN)
    names = {n for n, _ in model.named_children()}
    assert {"backbone", "roi_heads", "teacher_backbone", "teacher_roi_heads", "lang_encoder",
            "offline_backbone", "offline_proposal_generator"} <= names
    assert model.offline_proposal_generator.post_nms_topk[False] == 6
    assert model.offline_proposal_generator.nms_thresh == 0.5
    assert model.teacher_roi_heads.pooler.output_size == (14, 14)
    frozen = ("teacher_backbone.", "lang_encoder.", "offline_backbone.",
              "offline_proposal_generator.")
    for name, param in model.named_parameters():
        assert param.requires_grad == (name.startswith("backbone.layer")
                                       and not name.startswith("backbone.layer1.")
                                       or name.startswith("backbone.attnpool.")), name
        assert not (name.startswith(frozen) and param.requires_grad)
    assert not any("concept_emb" in k for k in model.state_dict())  # non-persistent buffers
    model.train()
    assert not model.teacher_backbone.training and not model.lang_encoder.training
    assert not model.offline_backbone.training and model.backbone.training
    batch = _batch(sizes=((64, 96), (64, 64)))
    losses = model(batch)
    assert set(losses) == {"loss_region_distill", "loss_concept_contrastive", "loss_img_txt_level"}
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model(batch)
        rpn = model.offline_proposals([x["image"] * 255.0 for x in batch], "RGB")
    for o, p in zip(out, rpn):
        assert 0 < len(o["proposals"]) <= 6
        assert o["region_feats"].shape == (len(o["proposals"]), 1024)
        torch.testing.assert_close(o["proposals"].proposal_boxes.tensor, p.proposal_boxes.tensor)
        # (a random RPN proposes whole-image boxes for any input; its logits do see the input)
        torch.testing.assert_close(o["proposals"].objectness_logits, p.objectness_logits)


def _arch_json(path, embed_dim):
    arch = {"visual": {"layers": [1, 1, 1, 1], "width": 8, "image_size": 224,
                       "embed_dim": embed_dim, "heads": 4},
            "text": {"width": 32, "heads": 2, "layers": 1, "embed_dim": embed_dim,
                     "context_length": 77, "vocab_size": 49408}}
    with open(path, "w") as f:
        json.dump(arch, f)
    return str(path)


def test_from_config_with_tiny_student_and_teacher_architectures(tmp_path):
    if "TEACHER_ARCH" not in _cfg().MODEL.CLIP:
        pytest.skip("MODEL.CLIP.ARCH / TEACHER_ARCH are not in this config version")
    torch.save(torch.randn(CONCEPTS, DIM), tmp_path / "pool.pth")
    torch.save(torch.randn(CONCEPTS, TEACHER_DIM), tmp_path / "teacher_pool.pth")
    cfg = _cfg(CROP_REGION_TYPE="RANDOM", PRETRAIN_SAMPLE_REGIONS=2,
               ARCH=_arch_json(tmp_path / "student.json", DIM),
               TEACHER_ARCH=_arch_json(tmp_path / "teacher.json", TEACHER_DIM),
               CONCEPT_POOL_EMB=str(tmp_path / "pool.pth"),
               TEACHER_CONCEPT_POOL_EMB=str(tmp_path / "teacher_pool.pth"))
    assert build_model(cfg).teacher_temp == 0.01  # the original's hard-coded value by default
    cfg.MODEL.CLIP.TEACHER_CONCEPT_TEMP = 0.07
    model = build_model(cfg)
    assert model.teacher_temp == 0.07
    assert model.backbone.attnpool.c_proj.out_features == DIM
    assert model.teacher_backbone.attnpool.c_proj.out_features == TEACHER_DIM
    assert model.lang_encoder.text_embed_dim == DIM
    assert model.teacher_concept_emb.shape == (CONCEPTS, TEACHER_DIM)
    losses = model(_batch())
    assert set(losses) == {"loss_region_distill", "loss_concept_contrastive", "loss_img_txt_level"}
    cfg.MODEL.CLIP.TEACHER_CONCEPT_POOL_EMB = str(tmp_path / "pool.pth")
    with pytest.raises(ValueError, match="TEACHER_CONCEPT_POOL_EMB .*pool.pth'\\) has 32-d "
                                         "embeddings but the teacher"):
        build_model(cfg)


def test_loss_names_and_switches():
    batch = _batch()
    assert set(_tiny()(batch)) == {"loss_region_distill", "loss_concept_contrastive",
                                   "loss_img_txt_level"}
    assert set(_tiny(concept_emb=None, teacher_concept_emb=None)(batch)) == {"loss_img_txt_level"}
    model = _tiny(img_txt_level=False, language_encoder=None)
    assert model.lang_encoder is None
    assert set(model(batch)) == {"loss_region_distill", "loss_concept_contrastive"}


@pytest.mark.parametrize("teacher_temp", [None, 0.05])
def test_losses_equal_independent_computation_and_weights_scale_them(monkeypatch, teacher_temp):
    extra = {} if teacher_temp is None else {"teacher_temp": teacher_temp}
    model = _tiny(teacher_backbone=_tower(DIM, 1), teacher_concept_emb=torch.randn(CONCEPTS, DIM),
                  **extra)
    batch = _batch(captions=(1, 1))
    _diverse_teacher_pool(model, batch)
    captured = []
    real = model.roi_heads.forward

    def spy(images, features, proposals, **kw):
        emb = real(images, features, proposals, **kw)
        captured.append((proposals, emb))
        return emb

    monkeypatch.setattr(model.roi_heads, "forward", spy)
    torch.manual_seed(5)
    losses = model(batch)
    (global_props, g), (props, v) = captured
    images = model.preprocess_image(batch)
    h_pad, w_pad = images.tensor.shape[-2:]
    for p in global_props:  # the whole padded batch, wrapped in Instances
        assert p.proposal_boxes.tensor.tolist() == [[0.0, 0.0, float(w_pad), float(h_pad)]]
    assert [len(p) for p in props] == [3, 3]
    with torch.no_grad():
        # image-text: symmetric cross-entropy of cosine / 0.01 (each image has one caption)
        text = model.lang_encoder.encode_text(torch.cat([x["captions"] for x in batch]))
        logits = F.normalize(g, dim=-1) @ F.normalize(text, dim=-1).t() / 0.01
        target = torch.arange(2)
        expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        torch.testing.assert_close(losses["loss_img_txt_level"], expected)
        # pseudo labels: teacher on the same boxes and normalised images, its own pool
        feats = model.teacher_backbone(images.tensor)
        u = _embed(model.teacher_roi_heads, feats, props, model.teacher_backbone)
        # the teacher's softmax temperature: 0.01 as the original unless TEACHER_CONCEPT_TEMP
        q = torch.softmax(F.normalize(u, dim=-1) @ F.normalize(model.teacher_concept_emb,
                                                               dim=-1).t()
                          / (teacher_temp or 0.01), dim=1)
        keep = q.max(dim=1).values > 0.1
        if not keep.any():
            keep[:] = True
        labels = q[keep].argmax(dim=1)
        assert len(set(labels.tolist())) > 1  # a non-trivial contrastive loss
        concepts = F.normalize(model.concept_emb, dim=-1)  # the student's pool
        vk = F.normalize(v[keep], dim=-1)
        log_p = torch.log_softmax(vk @ concepts.t() / 0.01, dim=1)
        kl = (q[keep] * (q[keep].clamp_min(1e-45).log() - log_p)).sum() / keep.sum()
        torch.testing.assert_close(losses["loss_region_distill"], kl, rtol=1e-4, atol=1e-5)
        s = vk @ concepts[labels].t() / 0.01
        pos = (labels[:, None] == labels[None, :]).float()
        mil = -(torch.softmax(s, dim=1) * pos).sum(dim=1).log().mean()
        torch.testing.assert_close(losses["loss_concept_contrastive"], mil, rtol=1e-4, atol=1e-5)
    weights = {"loss_region_distill": 0.5, "loss_concept_contrastive": 2.0,
               "loss_img_txt_level": 3.0}
    monkeypatch.undo()
    model.loss_weights = weights
    torch.manual_seed(5)
    weighted = model(batch)
    for name, factor in weights.items():
        torch.testing.assert_close(weighted[name], factor * losses[name])


def test_preprocess_normalises_unit_images_without_255():
    model = _tiny()
    image = torch.rand(3, 16, 24)
    out = model.preprocess_image([{"image": image}]).tensor[0]
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    expected = (image - mean) / std
    torch.testing.assert_close(out, expected)
    d2 = _tiny(pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    out = d2.preprocess_image([{"image": image}]).tensor[0]
    torch.testing.assert_close(out, (image * 255 - d2.pixel_mean) / d2.pixel_std)


# ----------------------------------------------------------------- regions and captions


def test_random_grid_boxes_are_grid_aligned_and_inside():
    torch.manual_seed(0)
    boxes = random_grid_boxes(70, 100, 500)
    assert boxes.shape == (500, 4)
    assert torch.all(boxes % 8 == 0)
    assert torch.all(boxes[:, 2] > boxes[:, 0]) and torch.all(boxes[:, 3] > boxes[:, 1])
    assert boxes[:, 2].max() <= 96 and boxes[:, 3].max() <= 64 and boxes.min() >= 0
    # every left edge and every right edge of the 12 columns occurs
    assert set(boxes[:, 0].tolist()) == {8.0 * i for i in range(12)}
    assert set(boxes[:, 2].tolist()) == {8.0 * i for i in range(1, 13)}
    with pytest.raises(ValueError, match="no 8x8 cell"):
        random_grid_boxes(4, 100, 3)


def test_random_mode_same_boxes_per_image_as_instances_and_sampling():
    model = _tiny(num_regions_per_img=5)
    batch = _batch()
    images = model.preprocess_image(batch)
    props = model.get_region_proposals(batch, images)
    assert [p.image_size for p in props] == [(64, 96), (80, 64)]
    assert all(len(p) == 5 for p in props)
    torch.testing.assert_close(props[0].proposal_boxes.tensor, props[1].proposal_boxes.tensor)
    many = [props[0][torch.arange(5).repeat(4)]]  # 20 regions
    sampled = model.sample_regions(many)
    assert len(sampled[0]) == 5
    assert all(any(torch.equal(b, c) for c in props[0].proposal_boxes.tensor)
               for b in sampled[0].proposal_boxes.tensor)
    model.num_regions_per_img = None
    assert len(model.sample_regions(many)[0]) == 20


def test_caption_drawn_per_image_from_its_own_count(monkeypatch):
    model = _tiny()
    batch = _batch(sizes=((32, 32),) * 3, captions=(1, 5, 3))
    seen = []
    monkeypatch.setattr(model.lang_encoder, "encode_text",
                        lambda tokens, only_eot=True: seen.append(tokens) or torch.zeros(3, DIM))
    torch.manual_seed(0)
    picks = [set() for _ in batch]
    for _ in range(40):
        model.encode_captions(batch)
        for i, x in enumerate(batch):
            row = seen[-1][i]
            picks[i].add(next(j for j, c in enumerate(x["captions"]) if torch.equal(c, row)))
    assert picks == [{0}, set(range(5)), set(range(3))]


def test_inference_returns_region_embeddings_per_image():
    model = _tiny(num_regions_per_img=4).eval()
    batch = _batch()
    out = model(batch)
    assert len(out) == 2
    for o, x in zip(out, batch):
        assert o["region_feats"].shape == (4, DIM)
        assert o["proposals"].image_size == tuple(x["image"].shape[-2:])
    # the embeddings are those of the student ROI path on the returned boxes
    images = model.preprocess_image(batch)
    with torch.no_grad():
        emb = _embed(model.roi_heads, model.backbone(images.tensor),
                     [o["proposals"] for o in out], model.backbone)
    torch.testing.assert_close(torch.cat([o["region_feats"] for o in out]), emb)


# ----------------------------------------------------------------- training


def test_step_changes_only_student_parameters():
    model = _tiny()
    before = _state(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = model(_batch())
    sum(losses.values()).backward()
    opt.step()
    after = _state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "the student did not change"
    assert all(k.startswith(("backbone.layer", "backbone.attnpool.")) for k in changed), changed
    assert not any(k.startswith(("backbone.layer1.", "backbone.conv")) for k in changed)
    assert any(k.startswith("backbone.attnpool.") for k in changed)
    assert any(k.startswith("backbone.layer4.") for k in changed)


def test_offline_branch_untouched_by_training_step():
    offline_cfg = _cfg(OFFLINE_RPN_CONFIG=OFFLINE_YAML)
    offline_backbone, rpn, ocfg = build_offline_modules(offline_cfg, 5)
    model = _tiny(crop_region_type="RPN", offline_backbone=offline_backbone,
                  offline_proposal_generator=rpn, offline_cfg=ocfg, num_regions_per_img=2)
    model.train()
    assert not model.offline_backbone.training and not model.offline_proposal_generator.training
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("offline")}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(model(_batch(sizes=((64, 64), (64, 96)))).values()).backward()
    opt.step()
    after = model.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())


def test_few_iterations_lower_the_loss():
    model = _tiny()
    batch = _batch(seed=3, captions=(1, 1))
    _diverse_teacher_pool(model, batch)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.002, momentum=0.9)  # the pretraining solver, grad clip 5
    totals = []
    for _ in range(8):
        torch.manual_seed(0)  # same boxes and captions every step: a fixed batch
        losses = model(batch)
        assert all(v.item() > 0 for v in losses.values())
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        totals.append(total.item())
    assert totals[-1] < 0.7 * totals[0], totals


def _square_batch(rank):
    return _batch(seed=10 + rank, sizes=((64, 64), (64, 64)), captions=(1, 1))


def _ddp_worker(out_dir):
    rank = comm.get_rank()
    model = _tiny(gather_gpus=True)
    _diverse_teacher_pool(model, _square_batch(0))
    ddp = DistributedDataParallel(model, device_ids=None, broadcast_buffers=False)
    torch.manual_seed(100 + rank)
    losses = ddp(_square_batch(rank))
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(({k: v.item() for k, v in losses.items()}, grads), f)


@pytest.mark.dist
def test_two_processes_ddp_gradient_equals_joined_batch_objective(tmp_path):
    """2 processes (gloo, CPU): the DDP-averaged gradient is that of the image-text loss over
    the joined batch plus the mean of the per-process region losses."""
    launch_two(_ddp_worker, str(tmp_path), args=(str(tmp_path),))
    res = [pickle.load(open(tmp_path / f"rank{r}.pkl", "rb")) for r in range(2)]
    model = _tiny()
    _diverse_teacher_pool(model, _square_batch(0))
    objective = 0.0
    for rank in range(2):
        torch.manual_seed(100 + rank)  # same caption picks, boxes and sampling as that rank
        local = model(_square_batch(rank))
        for name in ("loss_region_distill", "loss_concept_contrastive"):
            assert res[rank][0][name] == pytest.approx(local[name].item(), rel=1e-4, abs=1e-6)
            objective = objective + local[name] / 2
    joined = _square_batch(0) + _square_batch(1)
    images = model.preprocess_image(joined)
    g = model.roi_heads(images, model.backbone(images.tensor), model.global_proposals(images))
    img_txt = image_text_contrastive_loss(g, model.encode_captions(joined), 0.01, gather=False)
    for rank in range(2):
        assert res[rank][0]["loss_img_txt_level"] == pytest.approx(img_txt.item(), rel=1e-4)
    (objective + img_txt).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == set(res[0][1]) == set(res[1][1])
    scale = max(g.abs().max().item() for g in grads.values())
    for name, grad in grads.items():  # absolute floor: e.g. the key bias has zero true gradient
        for rank in range(2):
            torch.testing.assert_close(res[rank][1][name], grad, rtol=1e-3, atol=1e-5 * scale)


# ----------------------------------------------------------------- bad input


def test_bad_concept_pool_files(tmp_path):
    torch.save(torch.zeros(0, 1024), tmp_path / "empty.pth")
    torch.save(torch.randn(5, 640), tmp_path / "narrow.pth")
    cases = [
        (dict(CONCEPT_POOL_EMB=str(tmp_path / "missing.pth")), FileNotFoundError,
         "CONCEPT_POOL_EMB: concept-pool file .*missing.pth' does not exist"),
        (dict(CONCEPT_POOL_EMB=str(tmp_path / "empty.pth")), ValueError, "empty \\(0 concepts\\)"),
        (dict(CONCEPT_POOL_EMB=str(tmp_path / "narrow.pth")), ValueError,
         "CONCEPT_POOL_EMB .*narrow.pth'\\) has 640-d embeddings but the student .* in 1024"),
    ]
    for clip, error, message in cases:
        cfg = _cfg(CROP_REGION_TYPE="RANDOM", PRETRAIN_SAMPLE_REGIONS=2,
                   PRETRAIN_IMG_TXT_LEVEL=False, **clip)
        with pytest.raises(error, match=message):
            build_model(cfg)


def test_bad_teacher_pool_and_direct_tensors():
    with pytest.raises(ValueError, match="teacher_concept_emb has 32-d embeddings but the teacher "
                                         "embeds regions in 24"):
        _tiny(teacher_concept_emb=torch.randn(CONCEPTS, DIM))
    with pytest.raises(ValueError, match="teacher concept pool has 5 concepts, the student "
                                         "pool 12"):
        _tiny(teacher_concept_emb=torch.randn(5, TEACHER_DIM))
    with pytest.raises(ValueError, match="language encoder outputs 16-d"):
        _tiny(language_encoder=TextTransformer(width=32, heads=2, layers=1, embed_dim=16))


def test_bad_options_fail_clearly():
    with pytest.raises(NotImplementedError, match="'GRID' is not implemented"):
        build_model(_cfg(CROP_REGION_TYPE="GRID"))
    with pytest.raises(ValueError, match="PRETRAIN_ONLY_EOT False"):
        _tiny(only_eot=False)
    with pytest.raises(ValueError, match="CONCEPT_THRES is None"):
        _tiny(concept_thres=None)
    with pytest.raises(ValueError, match="has no loss"):
        _tiny(img_txt_level=False, concept_emb=None)
    with pytest.raises(ValueError, match="TEACHER_CONCEPT_TEMP must be > 0, got 0"):
        _tiny(teacher_temp=0)
    with pytest.raises(ValueError, match="'RANDOM' needs MODEL.CLIP.PRETRAIN_SAMPLE_REGIONS"):
        _tiny(num_regions_per_img=None)


def test_bad_batches_fail_clearly():
    model = _tiny()
    batch = _batch()
    uint8 = copy.copy(batch)
    uint8[1] = dict(batch[1], image=(batch[1]["image"] * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="input 1: 'image' must be float RGB in \\[0, 1\\]"):
        model(uint8)
    no_caps = [dict(batch[0], captions=torch.zeros(0, 77, dtype=torch.long)), batch[1]]
    with pytest.raises(ValueError, match="input 0: 'captions' must be"):
        model(no_caps)


# ----------------------------------------------------------------- Trainer


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_trainer_trains_two_iterations_and_resume_continues(tmp_path):
    from _image_text_data import captions_field, make_samples, write_tsv_pair

    from regionclip.engine.trainer import Trainer

    rows = [(k, img, captions_field(caps)) for k, img, caps in make_samples(6)]
    write_tsv_pair(str(tmp_path / "data"), "train.image.tsv", "train.text.tsv", rows)
    cfg = _cfg(CROP_REGION_TYPE="RANDOM", PRETRAIN_SAMPLE_REGIONS=3)
    cfg.DATASETS.PATH_TRAIN = (str(tmp_path / "data"),)
    cfg.AUG.TRAIN.IMAGE_SIZE, cfg.AUG.TRAIN.MAX_SIZE = [64], 96
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.CHECKPOINT_PERIOD = 2, 2, 100
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.SEED = 3

    class TinyTrainer(Trainer):
        @classmethod
        def build_model(cls, cfg):
            return _tiny()  # the tiny towers; same meta-architecture, data, solver and hooks

    first = TinyTrainer(cfg)
    first.resume_or_load(resume=False)
    start = {k: v.clone() for k, v in first.model.state_dict().items()}
    first.train()
    assert first.iter == 2  # iterations 0 and 1 ran (detectron2 ends one past the last)
    trained = first.model.state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start if k.startswith("backbone."))
    assert all(torch.equal(start[k], trained[k]) for k in start
               if k.startswith(("teacher_backbone.", "lang_encoder.")))
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    metrics = _metrics(cfg.OUTPUT_DIR)
    assert metrics[-1]["iteration"] == 1
    assert {"loss_region_distill", "loss_concept_contrastive", "loss_img_txt_level",
            "total_loss"} <= set(metrics[-1])

    cfg.SOLVER.MAX_ITER = 4
    second = TinyTrainer(cfg)
    second.resume_or_load(resume=True)
    assert second.start_iter == 2
    resumed = second.model.state_dict()
    assert all(torch.equal(trained[k], resumed[k]) for k in trained)
    second.train()
    assert second.iter == 4
    assert [m["iteration"] for m in _metrics(cfg.OUTPUT_DIR)][-1] == 3
