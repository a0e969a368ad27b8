"""Concept pools from caption corpora: the logic of ``tools/build_concept_pool.py``.

The paper's pools (e.g. the 4764 COCO nouns of ``coco_nouns_4764_emb.pth``) are the nouns parsed
from a caption corpus, kept when they occur at least 100 times; the original repository does not
contain that step (spec §1.5). This tool does it:

1. read captions: text TSVs (``key \\t {"captions": [...]}`` / ``{"tags": ...}`` / raw text) or a
   folder of image/text TSV pairs, a JSON mapping or COCO captions file, a CSV with a
   ``caption`` column, or a plain text file with one caption per line;
2. parse nouns with a pluggable parser (a function: list of captions -> list of noun lists); the
   default is spaCy's English pipeline (``en_core_web_sm``): tokens tagged ``NOUN``, lemmatised
   and lower-cased (lemmas without any letter are dropped). There is no fallback tagger: without
   spaCy and an English pipeline the tool stops and says how to install them;
3. keep nouns with at least ``--min-count`` occurrences (100), most frequent first (ties in
   alphabetical order), and write them one per line (``concepts.txt``);
4. optionally embed them (``--weights CKPT --output-emb FILE``) with the 81-prompt ensemble of
   :mod:`regionclip.tools.extract_concept_features` (the file ``MODEL.CLIP.CONCEPT_POOL_EMB``
   expects).
"""
import argparse
import collections
import csv
import json
import logging
import os
from typing import Callable, Iterable, Iterator, List, Optional, Sequence

from detectron2_ext.data import TSVFile, discover_tsv_pairs
from regionclip.tools import run_command

__all__ = ["NounParser", "read_captions", "spacy_noun_parser", "count_nouns", "select_concepts",
           "write_concepts", "build_concept_pool", "build_parser", "run", "main"]

logger = logging.getLogger(__name__)

NounParser = Callable[[Sequence[str]], List[List[str]]]
DEFAULT_SPACY_MODEL = "en_core_web_sm"
SPACY_INSTALL_HINT = (
    "Install spaCy (pip install spacy) and an English pipeline: python -m spacy download "
    "en_core_web_sm, or pip install the en_core_web_sm wheel from the spaCy models release page "
    "(github.com/explosion/spacy-models/releases) on a machine that can reach it; then pass its "
    "name or folder with --spacy-model")


def _captions_of_text_field(text: str) -> List[str]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        return [text] if text.strip() else []
    captions = value.get("captions", [])
    captions = [captions] if isinstance(captions, str) else list(captions)
    tags = value.get("tags")
    if isinstance(tags, str) and tags.strip():
        captions.append(tags)
    return [c for c in captions if isinstance(c, str) and c.strip()]


def _text_tsv_captions(path: str) -> Iterator[str]:
    tsv = TSVFile(path, min_fields=2)
    for i in range(len(tsv)):
        yield from _captions_of_text_field(tsv[i][1])


def read_captions(path: str) -> Iterator[str]:
    """Captions of a corpus file or folder (see the module docstring).

    Args:
        path (str): text ``.tsv``, folder of image/text TSV pairs, ``.json``, ``.csv`` or text file.

    Yields:
        str: captions (all of a sample's captions, and its tags string if it has one).
    """
    if os.path.isdir(path):
        for _, text_tsv in discover_tsv_pairs(path):
            yield from _text_tsv_captions(text_tsv)
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"caption corpus not found: {path}")
    elif path.endswith(".tsv"):
        yield from _text_tsv_captions(path)
    elif path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, list):
            values = data
        elif isinstance(data, dict) and "annotations" in data:
            values = [ann["caption"] for ann in data["annotations"]]
        elif isinstance(data, dict):
            values = list(data.values())
        else:
            raise ValueError(f"{path}: expected a list of captions, a mapping or COCO captions")
        for value in values:
            for caption in [value] if isinstance(value, str) else value:
                if not isinstance(caption, str):
                    raise ValueError(f"{path}: captions must be strings, got {caption!r:.60}")
                if caption.strip():
                    yield caption
    elif path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "caption" not in (reader.fieldnames or []):
                raise ValueError(f"{path}: no 'caption' column (found {reader.fieldnames})")
            for row in reader:
                if (row["caption"] or "").strip():
                    yield row["caption"]
    else:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield line.strip()


def spacy_noun_parser(model: str = DEFAULT_SPACY_MODEL, nlp=None,
                      batch_size: int = 256) -> NounParser:
    """A noun parser backed by a spaCy pipeline.

    Args:
        model (str): installed pipeline name or folder (used when ``nlp`` is None).
        nlp: an already built ``spacy.Language`` (e.g. in tests); it must set ``pos_`` and
            ``lemma_``.
        batch_size (int): texts per ``nlp.pipe`` batch.

    Returns:
        NounParser: captions -> lemmatised lower-case nouns per caption.

    Raises:
        ImportError / OSError: spaCy or the pipeline is not installed (with install advice).
    """
    if nlp is None:
        try:
            import spacy
        except ImportError as e:
            raise ImportError(f"build_concept_pool needs spaCy, which is not installed. "
                              f"{SPACY_INSTALL_HINT}") from e
        try:
            nlp = spacy.load(model, exclude=["ner", "parser"])
        except OSError as e:
            raise OSError(f"spaCy pipeline {model!r} is not installed ({e}). "
                          f"{SPACY_INSTALL_HINT}") from e

    def parse(captions: Sequence[str]) -> List[List[str]]:
        nouns = []
        for doc in nlp.pipe(captions, batch_size=batch_size):
            lemmas = [t.lemma_.lower().strip() for t in doc if t.pos_ == "NOUN"]
            nouns.append([lemma for lemma in lemmas if any(c.isalpha() for c in lemma)])
        return nouns

    return parse


def count_nouns(captions: Iterable[str], parser: NounParser, chunk_size: int = 2000,
                progress: bool = False) -> "collections.Counter[str]":
    """Occurrences of every noun over a caption stream.

    Args:
        captions (Iterable[str]): the corpus.
        parser (NounParser): captions -> noun lists (one list per caption).
        chunk_size (int): captions per parser call.
        progress (bool): tqdm progress bar (captions).

    Returns:
        Counter[str]: noun -> occurrences (a noun twice in a caption counts twice).
    """
    from tqdm import tqdm

    counts = collections.Counter()
    chunk = []
    with tqdm(unit="caption", disable=not progress) as bar:
        def flush():
            parsed = parser(chunk)
            if len(parsed) != len(chunk):
                raise ValueError(f"the noun parser returned {len(parsed)} lists for "
                                 f"{len(chunk)} captions")
            for nouns in parsed:
                counts.update(nouns)
            bar.update(len(chunk))
            chunk.clear()

        for caption in captions:
            chunk.append(caption)
            if len(chunk) >= chunk_size:
                flush()
        if chunk:
            flush()
    return counts


def select_concepts(counts: "collections.Counter[str]", min_count: int = 100,
                    max_concepts: Optional[int] = None) -> List[str]:
    """Nouns with at least ``min_count`` occurrences, most frequent first (ties alphabetical).

    Args:
        counts (Counter[str]): noun occurrences.
        min_count (int): frequency threshold (the paper: 100).
        max_concepts (int): keep at most this many (None: all).

    Returns:
        list[str]: the concepts.
    """
    kept = sorted((n for n, c in counts.items() if c >= min_count), key=lambda n: (-counts[n], n))
    return kept[:max_concepts] if max_concepts is not None else kept


def write_concepts(concepts: Sequence[str], path: str) -> None:
    """Write one concept per line (folders are created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{c}\n" for c in concepts)


def build_concept_pool(corpus: Sequence[str], output: str, parser: NounParser,
                       min_count: int = 100, max_concepts: Optional[int] = None,
                       progress: bool = False) -> List[str]:
    """Read captions, count nouns, select and write the concepts.

    Args:
        corpus (Sequence[str]): paths accepted by :func:`read_captions`.
        output (str): ``concepts.txt`` to write.
        parser (NounParser): noun parser.
        min_count, max_concepts: see :func:`select_concepts`.
        progress (bool): progress bar.

    Returns:
        list[str]: the written concepts.
    """
    def captions():
        for path in corpus:
            yield from read_captions(path)

    counts = count_nouns(captions(), parser, progress=progress)
    concepts = select_concepts(counts, min_count, max_concepts)
    if not concepts:
        raise ValueError(f"no noun occurs at least {min_count} times in {list(corpus)} "
                         f"({len(counts)} distinct nouns); lower --min-count")
    write_concepts(concepts, output)
    logger.info("%d of %d nouns occur at least %d times; wrote %s", len(concepts), len(counts),
                min_count, output)
    return concepts


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``tools/build_concept_pool.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--captions", nargs="+", required=True, help="caption corpus paths")
    parser.add_argument("--output", default="concepts.txt", help="concept list to write")
    parser.add_argument("--min-count", type=int, default=100, help="minimum noun occurrences")
    parser.add_argument("--max-concepts", type=int, default=None, help="keep at most N concepts")
    parser.add_argument("--spacy-model", default=DEFAULT_SPACY_MODEL,
                        help="installed spaCy English pipeline (name or folder)")
    parser.add_argument("--weights", help="checkpoint with a CLIP text tower, to embed the pool")
    parser.add_argument("--output-emb", help="embedding file to write (needs --weights)")
    parser.add_argument("--depth", type=int, choices=(50, 101, 200), default=None,
                        help="check the text tower against this MODEL.RESNETS.DEPTH")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run(argv: Optional[Sequence[str]] = None, noun_parser: Optional[NounParser] = None):
    """Run the tool.

    Args:
        argv (Sequence[str]): command line without the program name.
        noun_parser (NounParser): replaces the spaCy parser (tests, other languages).

    Returns:
        list[str]: the concepts.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.weights) != bool(args.output_emb):
        parser.error("--weights and --output-emb go together")
    if args.min_count < 1:
        parser.error("--min-count must be positive")
    noun_parser = noun_parser or spacy_noun_parser(args.spacy_model)
    concepts = build_concept_pool(args.captions, args.output, noun_parser, args.min_count,
                                  args.max_concepts, not args.no_progress)
    print(f"Wrote {len(concepts)} concepts to {args.output}")
    if args.weights:
        from regionclip.tools.extract_concept_features import (
            compute_concept_embeddings,
            load_text_encoder,
            save_concept_embeddings,
        )

        encoder = load_text_encoder(args.weights, args.depth)
        embeddings = compute_concept_embeddings(encoder, concepts, progress=not args.no_progress)
        saved = save_concept_embeddings(embeddings, args.output_emb)
        print(f"Wrote embeddings {tuple(saved.shape)} to {args.output_emb}")
    return concepts


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: :func:`run`, then the exit status (see ``run_command``)."""
    return run_command(run, argv)
