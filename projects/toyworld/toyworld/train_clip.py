"""Stage 1: a small CLIP trained from scratch on the world's image-caption pairs (the teacher).

Both towers are trained with CLIP's symmetric image-caption contrastive loss (learnable
temperature), AdamW with warm-up and cosine decay, one randomly chosen caption per image and
epoch, and random translations of a few pixels as the only augmentation (flips would contradict
captions that say "on the left"; colour jitter would contradict colour words). The image tower
uses BatchNorm in training mode; its running statistics become the frozen statistics of the
detection backbones. Output: the weights in OpenAI's key format (``visual.*`` + text keys), so
every later stage loads them like a released CLIP.
"""
import logging
import math
import os
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F

from regionclip.clip import build_clip, tokenize
from regionclip.modeling.clip_arch import save_clip_arch

from .common import write_json
from .settings import clip_config

__all__ = ["CLIP_MEAN", "CLIP_STD", "normalize", "tokenize_captions", "train_clip",
           "retrieval_accuracy"]

logger = logging.getLogger(__name__)

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def normalize(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) CLIP-normalised float tensor."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - CLIP_MEAN) / CLIP_STD


def tokenize_captions(captions, trim: bool = False) -> torch.Tensor:
    """(N, n_caps, L) token ids of per-image caption lists (all images have n_caps captions).

    Args:
        captions (list[list[str]]): captions per image.
        trim (bool): drop the padding columns after the last end-of-text token of the batch
            (L < 77). The text tower's attention is causal, so the end-of-text embedding of a
            trimmed row equals that of the full 77-token row; training on trimmed rows is faster.
    """
    n_caps = {len(c) for c in captions}
    if len(n_caps) != 1:
        raise ValueError(f"every image needs the same number of captions, got {sorted(n_caps)}")
    flat = tokenize([c for caps in captions for c in caps])
    if trim:
        flat = flat[:, :int(flat.argmax(dim=1).max()) + 1]
    return flat.view(len(captions), n_caps.pop(), -1)


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


@torch.no_grad()
def retrieval_accuracy(model, images: torch.Tensor, tokens: torch.Tensor,
                       batch: int = 256) -> Dict[str, float]:
    """Image->caption and caption->image top-1 accuracy among ``len(images)`` pairs
    (first caption of each image)."""
    model.eval()
    img = torch.cat([F.normalize(model.encode_image(images[i:i + batch]), dim=-1)
                     for i in range(0, len(images), batch)])
    txt = torch.cat([F.normalize(model.encode_text(tokens[i:i + batch, 0]), dim=-1)
                     for i in range(0, len(tokens), batch)])
    sim = img @ txt.t()
    target = torch.arange(len(images))
    return {"image_to_text_top1": float((sim.argmax(1) == target).float().mean()),
            "text_to_image_top1": float((sim.argmax(0) == target).float().mean()),
            "pairs": len(images)}


def train_clip(settings, world, out_dir: str, progress: bool = True,
               on_epoch_end=None) -> Dict[str, str]:
    """Train the teacher CLIP and write ``arch.json``, ``clip.pth`` and ``metrics.json``.

    Args:
        settings (CfgNode): toy-world settings (``CLIP``, ``SEED``).
        world (World): the generated world.
        out_dir (str): stage folder.
        progress (bool): show a progress bar.
        on_epoch_end (callable): ``on_epoch_end(epoch, model)`` after every epoch (analysis).

    Returns:
        dict: paths of ``arch``, ``weights``, ``metrics``.
    """
    from tqdm import tqdm

    c = settings.CLIP
    os.makedirs(out_dir, exist_ok=True)
    config = clip_config(settings)
    arch = save_clip_arch(config, os.path.join(out_dir, "arch.json"))
    torch.manual_seed(settings.SEED)
    model = build_clip(config)
    if c.BN3_GAMMA_ONE:  # residual branches start active (CLIP zero-inits them): learns faster
        for name, param in model.visual.named_parameters():
            if name.endswith("bn3.weight"):
                torch.nn.init.ones_(param)
    fmt = torch.channels_last if c.CHANNELS_LAST else torch.contiguous_format
    model.visual.to(memory_format=fmt)
    images = world.images("captions")
    tokens = tokenize_captions(world.captions("captions"), trim=True)
    n = len(images)
    batch = min(c.BATCH_SIZE, n)
    steps_per_epoch = n // batch
    total = steps_per_epoch * c.EPOCHS
    if total == 0:
        raise ValueError(f"CLIP.EPOCHS={c.EPOCHS} with {n} images gives no training step")
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": c.WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=c.LR)
    warmup = max(1, min(c.WARMUP_STEPS, total // 2))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (
        (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup)
                                                                / max(1, total - warmup)))))
    gen = torch.Generator().manual_seed(settings.SEED)
    history = []
    bar = tqdm(total=total, desc="stage 1: CLIP", disable=not progress, leave=False)
    for epoch in range(c.EPOCHS):
        if epoch and on_epoch_end is not None:
            on_epoch_end(epoch, model)
        model.train()
        order = torch.randperm(n, generator=gen)
        pick = torch.randint(0, tokens.shape[1], (n,), generator=gen)
        for s in range(steps_per_epoch):
            idx = order[s * batch:(s + 1) * batch]
            x = _shift(normalize(images[idx.numpy()]), c.SHIFT, gen).contiguous(memory_format=fmt)
            t = tokens[idx, pick[idx]]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=c.BF16):
                img = F.normalize(model.encode_image(x).float(), dim=-1)
                txt = F.normalize(model.encode_text(t).float(), dim=-1)
            logits = model.logit_scale.exp().clamp(max=100) * img @ txt.t()
            target = torch.arange(len(idx))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            history.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]:.3f}")
    bar.close()
    model.visual.to(memory_format=torch.contiguous_format)
    weights = os.path.join(out_dir, "clip.pth")
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    held_out = world.images("test")[:512]
    test_tokens = tokenize_captions(world.captions("test")[:512])
    metrics = {"loss": history, "steps": total, "batch_size": batch,
               "logit_scale": float(model.logit_scale.exp()),
               "test_retrieval": retrieval_accuracy(model, normalize(held_out), test_tokens)}
    write_json(os.path.join(out_dir, "metrics.json"), metrics)
    logger.info("CLIP: %d steps, final loss %.3f, test retrieval %s", total, history[-1],
                metrics["test_retrieval"])
    return {"arch": arch, "weights": weights, "metrics": os.path.join(out_dir, "metrics.json")}
