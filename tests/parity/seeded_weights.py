"""Deterministic, checkpoint-free weights for parity tests against the original RegionCLIP.

A checkpoint is a mapping ``key -> tensor``. Instead of committing one, both implementations
build their model, list its persistent state dict as ``(key, shape, dtype)`` sorted by key
(:func:`state_dict_specs`) and fill every entry with :func:`seeded_state_dict`: each tensor
depends only on its key, shape, dtype and a global seed (a NumPy generator seeded by a SHA-256 of
``"<seed>:<key>"``), so identical key lists give bit-identical checkpoints in any process.

Values are chosen so that activations stay finite and region embeddings stay diverse through a
CLIP RN50 and a detectron2 R50. (With a naive fill, e.g. N(0, 1/fan_in) weights, BN gains in
[0.2, 0.6] and running means ~N(0, 0.1^2), the signal shrinks at every conv-BN-ReLU while the
constant per-channel offsets do not: all region embeddings had cosine 1.000 and every box got the
same class, which would hide box-dependent differences.)

* integer entries (``num_batches_tracked``) and ``cls_bg_score.weight`` (the original's frozen zero
  background embedding, zero in every released checkpoint): zeros;
* ``running_mean`` ~ N(0, 0.01^2), ``running_var`` ~ U(0.5, 1.5), ``*.bias`` / ``in_proj_bias``
  ~ N(0, 0.01^2): small constant offsets;
* other 1-d ``*.weight`` (BatchNorm / FrozenBN / LayerNorm gains) ~ U(0.5, 1.0);
* ``positional_embedding`` ~ N(0, 1/dim); ``text_projection`` (used as ``x @ P``) ~ N(0, 1/rows);
* other weights (>= 2-d: conv, linear, embeddings, text classifiers) ~ N(0, 1/fan_in) with
  fan_in = prod(shape[1:]), then made zero-mean per output unit (so that the positive mean of
  ReLU outputs does not become a shared offset); convolutions (4-d) are scaled by sqrt(2) (He
  gain for ReLU), the RPN's ``anchor_deltas`` by a further 0.1 so that proposals stay box-like.

This module imports only NumPy and PyTorch: it must not import either implementation.
"""
import hashlib
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["Spec", "state_dict_specs", "seeded_tensor", "seeded_state_dict", "load_seeded"]

Spec = Tuple[str, Tuple[int, ...], str]  # (key, shape, dtype name such as "torch.float32")


def state_dict_specs(state_dict: Dict[str, torch.Tensor]) -> List[Spec]:
    """``(key, shape, dtype)`` of every entry of a state dict, sorted by key.

    Args:
        state_dict (dict): e.g. ``model.state_dict()`` (persistent parameters and buffers).

    Returns:
        list[tuple]: ``(key, tuple(shape), str(dtype))`` sorted by key.
    """
    return sorted((k, tuple(int(s) for s in v.shape), str(v.dtype)) for k, v in state_dict.items())


def _rng(key: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _values(key: str, shape: Tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    name = key.rsplit(".", 1)[-1]

    def normal(std):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def uniform(low, high):
        return np.float32(low) + rng.random(shape, dtype=np.float32) * np.float32(high - low)

    if key.endswith("cls_bg_score.weight"):
        return np.zeros(shape, dtype=np.float32)
    if name == "running_mean":
        return normal(0.01)
    if name == "running_var":
        return uniform(0.5, 1.5)
    if name in ("bias", "in_proj_bias"):
        return normal(0.01)
    if name == "positional_embedding":
        return normal(1.0 / np.sqrt(shape[-1]))
    if name == "text_projection":
        return normal(1.0 / np.sqrt(shape[0]))
    if len(shape) == 1 and name == "weight":
        return uniform(0.5, 1.0)
    if len(shape) >= 2:
        rows = rng.standard_normal(shape, dtype=np.float32).reshape(shape[0], -1)
        rows -= rows.mean(axis=1, keepdims=True)
        gain = 1.0
        if len(shape) == 4:
            gain = np.sqrt(2.0) * (0.1 if "anchor_deltas" in key else 1.0)
        rows *= np.float32(gain / np.sqrt(rows.shape[1]))
        return rows.reshape(shape)
    return normal(1.0)


def seeded_tensor(key: str, shape: Sequence[int], dtype: str = "torch.float32",
                  seed: int = 0) -> torch.Tensor:
    """The deterministic value of one state-dict entry (see the module doc for the rules).

    Args:
        key (str): state-dict key (decides the distribution and the random stream).
        shape (Sequence[int]): tensor shape.
        dtype (str): ``str(tensor.dtype)``, e.g. ``"torch.float32"`` or ``"torch.int64"``.
        seed (int): global seed.

    Returns:
        Tensor: the value, on the CPU.
    """
    torch_dtype = getattr(torch, dtype.replace("torch.", ""))
    shape = tuple(int(s) for s in shape)
    if not torch_dtype.is_floating_point:
        return torch.zeros(shape, dtype=torch_dtype)
    values = _values(key, shape, _rng(key, seed))
    return torch.from_numpy(np.ascontiguousarray(values)).to(torch_dtype)


def seeded_state_dict(specs: Iterable[Spec], seed: int = 0) -> Dict[str, torch.Tensor]:
    """Fill every ``(key, shape, dtype)`` with :func:`seeded_tensor`.

    Args:
        specs (Iterable[tuple]): from :func:`state_dict_specs`.
        seed (int): global seed.

    Returns:
        dict: ``key -> tensor``, a complete state dict.
    """
    return {key: seeded_tensor(key, shape, dtype, seed) for key, shape, dtype in specs}


def load_seeded(model: torch.nn.Module, seed: int = 0,
                offsets: Optional[Dict[str, float]] = None) -> List[Spec]:
    """Load seeded values into every persistent entry of ``model`` (strict) and list them.

    Args:
        model (nn.Module): any module.
        seed (int): global seed.
        offsets (dict or None): ``key -> constant`` added to those entries after seeding.

    Returns:
        list[tuple]: the model's :func:`state_dict_specs`.
    """
    specs = state_dict_specs(model.state_dict())
    state = seeded_state_dict(specs, seed)
    for key, offset in (offsets or {}).items():
        if key not in state:
            raise KeyError(f"offset for {key!r}, which is not in the model's state dict")
        state[key] = state[key] + offset
    model.load_state_dict(state, strict=True)
    return specs
