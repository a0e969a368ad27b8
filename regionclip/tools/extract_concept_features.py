"""Concept (class-name) embeddings with the CLIP text tower: the logic of
``tools/extract_concept_features.py``.

Two command lines are accepted:

* the original's: ``--config-file CFG MODEL.WEIGHTS CKPT INPUT_DIR DIR OUTPUT_DIR OUT [KEY VALUE
  ...]`` reads ``INPUT_DIR/concepts.txt`` and writes ``OUTPUT_DIR/concept_embeds.pth``. Only the
  language encoder is built and loaded (no RPN config or other model part is needed);
  ``MODEL.CLIP.GET_CONCEPT_EMB`` and ``MODEL.CLIP.OFFLINE_RPN_CONFIG`` are accepted and unused.
* a direct one: ``--concepts FILE_OR_WORDS... --weights CKPT --output FILE [--depth 50|101|200]
  [--no-prompt-ensemble] [--batch-size N]``, where a concept argument is a ``.txt`` file (one
  concept per line), a named vocabulary (``coco_65``, ``lvis_1203``, ...; expanded in class order),
  ``dataset:NAME`` (the classes of a registered dataset in its class order, e.g. one registered
  with ``--register-coco NAME JSON IMAGE_ROOT [SPLIT]``) or a concept itself.

The weights can be an OpenAI CLIP file (TorchScript archive or state dict), a converted checkpoint
or a RegionCLIP checkpoint (``lang_encoder.*``); the text tower's architecture is read from them.
The output is a float tensor (num_concepts, D) of **un-normalised** embeddings, each the mean of
the 81 prompt embeddings (the original's recipe); a single concept gives shape (D,).
"""
import argparse
import dataclasses
import functools
import logging
import os
import types
from typing import List, Optional, Sequence

import torch
from torch import nn

from regionclip.checkpoint import group_clip_keys, load_clip_state_dict, map_clip_to_model
from regionclip.clip import (
    PROMPT_TEMPLATES,
    TextTransformer,
    ensemble_text_embeddings,
    infer_text_config,
    text_config_for_depth,
    tokenize,
)
from regionclip.data.datasets.custom_ovd import add_register_arguments, register_from_args
from regionclip.data.vocabularies import VOCABULARY_NAMES, get_vocabulary
from regionclip.tools import run_command

__all__ = ["read_concepts_file", "dataset_classes", "expand_concepts", "load_text_encoder",
           "compute_concept_embeddings", "save_concept_embeddings", "build_parser", "run", "main"]

logger = logging.getLogger(__name__)

OUTPUT_NAME = "concept_embeds.pth"
DATASET_PREFIX = "dataset:"
_SHAPE_FIELDS = ("width", "layers", "embed_dim", "context_length", "vocab_size")


def read_concepts_file(path: str) -> List[str]:
    """Read one concept per line (stripped).

    Args:
        path (str): text file.

    Returns:
        list[str]: the concepts in file order.

    Raises:
        ValueError: on a blank line (the message names the file and line) or an empty file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Concept file not found: {path}")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    concepts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ValueError(f"{path}, line {number}: blank line; expected one concept per line")
        concepts.append(line.strip())
    if not concepts:
        raise ValueError(f"{path}: no concepts (the file is empty)")
    return concepts


def dataset_classes(name: str) -> List[str]:
    """``thing_classes`` of a registered dataset (the order of its text-embedding file)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list():
        raise KeyError(f"'{DATASET_PREFIX}{name}': no registered dataset '{name}' (register your "
                       "own with --register-coco NAME JSON IMAGE_ROOT [SPLIT])")
    classes = MetadataCatalog.get(name).get("thing_classes", None)
    if classes is None:  # metadata set when the json is read (e.g. detectron2's builtins)
        DatasetCatalog.get(name)
        classes = MetadataCatalog.get(name).get("thing_classes", None)
    if not classes:
        raise ValueError(f"dataset '{name}' has no thing_classes")
    return list(classes)


def expand_concepts(items: Sequence[str]) -> List[str]:
    """Expand concept arguments: vocabulary names, ``dataset:NAME`` (a registered dataset's
    classes in contiguous-id order), ``.txt``/existing files, or concepts.

    Args:
        items (Sequence[str]): e.g. ``["coco_65"]``, ``["dataset:mydata_train"]``,
            ``["my_concepts.txt"]``, ``["cat", "dog"]``.

    Returns:
        list[str]: concepts in argument order (vocabularies in class order).
    """
    concepts = []
    for item in items:
        if item.startswith(DATASET_PREFIX):
            concepts += dataset_classes(item[len(DATASET_PREFIX):])
        elif item in VOCABULARY_NAMES:
            concepts += get_vocabulary(item)
        elif os.path.isfile(item) or item.endswith(".txt"):
            concepts += read_concepts_file(item)
        elif item.strip():
            concepts.append(item.strip())
        else:
            raise ValueError("Empty concept argument")
    if not concepts:
        raise ValueError("No concepts given")
    return concepts


def load_text_encoder(weights: str, depth: Optional[int] = None,
                      strict_depth: bool = True) -> TextTransformer:
    """Build the CLIP text tower from a checkpoint's weights.

    Args:
        weights (str): OpenAI CLIP file, converted or RegionCLIP checkpoint.
        depth (int): ``MODEL.RESNETS.DEPTH`` the tower should match (50, 101, 200); None infers
            the architecture from the weights alone.
        strict_depth (bool): if the weights disagree with ``depth``: raise (True) or warn and use
            the weights' architecture (False).

    Returns:
        TextTransformer: the loaded encoder in eval mode.
    """
    state_dict = load_clip_state_dict(weights)
    groups, _ = group_clip_keys(state_dict)
    if "text" not in groups:
        raise ValueError(f"{weights}: no text-tower weights (neither OpenAI text keys such as "
                         f"token_embedding.weight nor lang_encoder.*)")
    _, names = groups["text"]
    config = infer_text_config({name: state_dict[key] for name, key in names.items()})
    if depth is not None:
        expected = text_config_for_depth(depth)
        differs = [f"{f} {getattr(config, f)} (depth {depth}: {getattr(expected, f)})"
                   for f in _SHAPE_FIELDS if getattr(config, f) != getattr(expected, f)]
        if not differs:
            config = expected  # same shapes; takes the preset's head count
        elif strict_depth:
            raise ValueError(f"{weights}: the text tower does not match depth {depth}: "
                             f"{', '.join(differs)}")
        else:
            logger.warning("%s: text tower differs from MODEL.RESNETS.DEPTH=%s (%s); using the "
                           "architecture of the weights", weights, depth, ", ".join(differs))
    holder = nn.Module()
    holder.lang_encoder = TextTransformer(**dataclasses.asdict(config))
    mapped, report = map_clip_to_model(state_dict, holder, raise_on_mismatch=True)
    if report.missing:
        raise ValueError(f"{weights}: text-tower weights incomplete, missing {report.missing[:10]}")
    holder.load_state_dict(mapped, strict=True)
    logger.info("Text encoder from %s: width %d, %d layers, embed %d", weights, config.width,
                config.layers, config.embed_dim)
    return holder.lang_encoder.eval()


def compute_concept_embeddings(encoder: TextTransformer, concepts: Sequence[str],
                               prompt_ensemble: bool = True, batch_size: int = 256,
                               truncate: bool = True, progress: bool = True) -> torch.Tensor:
    """Embed concepts with the original's 81-template ensemble (mean of un-normalised vectors).

    Args:
        encoder (TextTransformer): text tower (on any device).
        concepts (Sequence[str]): concept names.
        prompt_ensemble (bool): 81 templates per concept (True) or the bare name.
        batch_size (int): prompts per forward pass.
        truncate (bool): cut over-long prompts at 77 tokens like the original, or raise.
        progress (bool): tqdm progress bar over concepts.

    Returns:
        Tensor: (len(concepts), D) float32 on the CPU.
    """
    from tqdm import tqdm

    concepts = list(concepts)
    if not concepts:
        raise ValueError("No concepts to embed")
    per_concept = len(PROMPT_TEMPLATES) if prompt_ensemble else 1
    device = next(encoder.parameters()).device
    tokenizer = types.SimpleNamespace(tokenize=functools.partial(tokenize, truncate=truncate))
    with tqdm(total=len(concepts), unit="concept", disable=not progress) as bar:
        def encode(tokens):
            out = encoder.encode_text(tokens)
            bar.update(tokens.shape[0] // per_concept)
            return out

        embeddings = ensemble_text_embeddings(encode, concepts, tokenizer, batch_size,
                                              prompt_ensemble=prompt_ensemble, device=device)
    return embeddings.float().cpu()


def save_concept_embeddings(embeddings: torch.Tensor, path: str) -> torch.Tensor:
    """Save as the original does: a (K, D) tensor, squeezed to (D,) for a single concept.

    Args:
        embeddings (Tensor): (K, D).
        path (str): output file (folders are created).

    Returns:
        Tensor: what was saved.
    """
    out = embeddings[0] if embeddings.shape[0] == 1 else embeddings
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(out.contiguous(), path)
    return out


def build_parser() -> argparse.ArgumentParser:
    """detectron2's default parser (original command line) plus the direct form's options."""
    from detectron2.engine import default_argument_parser

    parser = default_argument_parser(epilog=__doc__.split("\n\n")[1])
    direct = parser.add_argument_group("direct form (without --config-file)")
    direct.add_argument("--concepts", nargs="+", help="concepts, .txt files, vocabulary names "
                        f"({', '.join(VOCABULARY_NAMES)}) or dataset:NAME (the classes of a "
                        "registered dataset, in its class order)")
    direct.add_argument("--weights", help="OpenAI CLIP file, converted or RegionCLIP checkpoint")
    direct.add_argument("--output", help="output .pth file")
    direct.add_argument("--depth", type=int, choices=(50, 101, 200), default=None,
                        help="check the text tower against this MODEL.RESNETS.DEPTH")
    direct.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--no-prompt-ensemble", action="store_true",
                        help="embed the bare concept instead of the 81-template mean")
    parser.add_argument("--batch-size", type=int, default=256, help="prompts per forward pass")
    add_register_arguments(parser)
    return parser


def _from_config(args):
    from regionclip.config import load_config

    cfg = load_config(args.config_file, args.opts, cpu_fallback=False)
    if not cfg.MODEL.WEIGHTS:
        raise ValueError("MODEL.WEIGHTS is empty: give the checkpoint holding the text tower")
    concepts = read_concepts_file(os.path.join(cfg.INPUT_DIR, "concepts.txt"))
    encoder = load_text_encoder(cfg.MODEL.WEIGHTS, cfg.MODEL.RESNETS.DEPTH, strict_depth=False)
    if encoder.text_embed_dim != cfg.MODEL.CLIP.TEXT_EMB_DIM:
        logger.warning("MODEL.CLIP.TEXT_EMB_DIM=%d but the text tower gives %d-d embeddings",
                       cfg.MODEL.CLIP.TEXT_EMB_DIM, encoder.text_embed_dim)
    device = cfg.MODEL.DEVICE
    output = os.path.join(cfg.OUTPUT_DIR, OUTPUT_NAME)
    return concepts, encoder, device, output, bool(cfg.MODEL.CLIP.TOKENIZE_TRUNCATE)


def run(argv: Optional[Sequence[str]] = None) -> torch.Tensor:
    """Run the tool.

    Args:
        argv (Sequence[str]): command line without the program name (default ``sys.argv``).

    Returns:
        Tensor: the saved embeddings.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    direct = (args.concepts, args.weights, args.output)
    if args.config_file:
        if args.register_coco or args.novel_classes:
            parser.error("--register-coco/--novel-classes belong to the direct form (with "
                         "--concepts dataset:NAME); the config form reads INPUT_DIR/concepts.txt")
        if any(v is not None for v in direct):
            parser.error("--concepts/--weights/--output belong to the direct form; with "
                         "--config-file use INPUT_DIR, MODEL.WEIGHTS and OUTPUT_DIR")
        concepts, encoder, device, output, truncate = _from_config(args)
    else:
        if any(v is None for v in direct) or args.opts:
            parser.error("without --config-file, give --concepts, --weights and --output")
        register_from_args(args)
        concepts = expand_concepts(args.concepts)
        encoder = load_text_encoder(args.weights, args.depth, strict_depth=True)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        output, truncate = args.output, True
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("No CUDA device: running on the CPU")
        device = "cpu"
    embeddings = compute_concept_embeddings(encoder.to(device), concepts,
                                            not args.no_prompt_ensemble, args.batch_size, truncate)
    saved = save_concept_embeddings(embeddings, output)
    logger.info("Saved %s embeddings of %d concepts to %s", tuple(saved.shape), len(concepts),
                output)
    return saved


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: :func:`run`, then the exit status (see ``run_command``)."""
    return run_command(run, argv)
