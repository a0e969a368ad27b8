"""Build pretraining data (TSV pairs or WebDataset shards) from images and captions: the logic of
``tools/make_image_text_dataset.py``.

Inputs (``--images DIR`` plus optionally ``--captions FILE``):

* ``--captions map.json``: ``{"file name relative to DIR": "caption" or ["caption", ...]}``, or a
  COCO captions file (``images`` with ``id``/``file_name``, ``annotations`` with
  ``image_id``/``caption``).
* ``--captions captions.csv``: columns ``file`` and ``caption``; several rows per file give
  several captions.
* no ``--captions``: an img2dataset output folder: its ``*.tar`` shards, or (``files`` output
  format) every image with a ``.txt`` caption or a ``.json`` holding ``caption``/``captions``
  beside it.

Outputs in ``--output`` (``--name NAME``, default ``train``):

* ``--format tsv``: ``NAME.image.tsv`` (``key \\t base64 image``) and ``NAME.text.tsv``
  (``key \\t {"captions": [...]}``) with their ``.lineidx`` files; with ``--shard-size N``,
  ``NAME-00000.image.tsv`` ... of N samples each. The folder is then a valid
  ``DATASETS.PATH_TRAIN`` for ``CLIPImgTxtPairTSVDataset``.
* ``--format wds``: ``NAME-00000.tar`` ... (``--shard-size``, default 10000) with ``KEY.jpg`` or
  ``KEY.png``, ``KEY.txt`` (first caption) and ``KEY.json`` (``{"captions": [...]}``), for
  ``WebDatasetImageText``.

JPEG and PNG bytes are copied unchanged; other formats are re-encoded as PNG. Keys are the file
paths relative to ``--images`` without extension (``.``, white space -> ``_``). Captions that
refer to missing files, images without caption and images that do not decode are reported with
a count; the tool fails (leaving no output) unless ``--skip-missing`` is given.
"""
import argparse
import base64
import csv
import io
import json
import logging
import os
import re
from collections import OrderedDict
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from PIL import Image

from detectron2_ext.data import is_image_tsv_name, text_tsv_name
from detectron2_ext.data.image_text_wds import IMAGE_EXTENSIONS, iterate_shard_records, sample_text
from detectron2_ext.data.tsv import lineidx_path, write_lineidx
from regionclip.tools import run_command

__all__ = ["Record", "records_from_mapping", "records_from_folder", "records_from_shards",
           "read_caption_file", "convert", "build_parser", "run", "main"]

logger = logging.getLogger(__name__)

FILE_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_WDS_SHARD_SIZE = 10000
SHOWN_PROBLEMS = 10
SKIP_HINT = "\n(use --skip-missing to leave them out)"


class Record(NamedTuple):
    """One sample to write: key, a loader of the image bytes, captions, where it came from."""

    key: str
    load: object  # callable () -> bytes
    captions: List[str]
    source: str


def make_key(relative_path: str) -> str:
    """str: sample key of an image path relative to the images folder."""
    stem = os.path.splitext(relative_path)[0].replace(os.sep, "/")
    return re.sub(r"[.\s]", "_", stem)


def _file_loader(path):
    def load():
        with open(path, "rb") as f:
            return f.read()
    return load


def _as_captions(value, where: str) -> List[str]:
    if value is None:  # JSON null: no caption
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(c is None or isinstance(c, str) for c in values):
        raise ValueError(f"{where}: captions must be a string or a list of strings, got "
                         f"{value!r:.80}")
    return [c.strip() for c in values if c is not None and c.strip()]


def read_caption_file(path: str) -> "OrderedDict[str, List[str]]":
    """File name -> captions from a JSON mapping, a COCO captions JSON or a ``file,caption`` CSV.

    Args:
        path (str): the ``.json`` or ``.csv`` file.

    Returns:
        OrderedDict[str, list[str]]: in file order.
    """
    captions = OrderedDict()
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file", "caption"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: expected columns 'file' and 'caption', found "
                                 f"{reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                if not row["file"]:
                    raise ValueError(f"{path}, line {line}: empty 'file'")
                captions.setdefault(row["file"], []).extend(
                    _as_captions(row["caption"] or "", f"{path}, line {line}"))
        return captions
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        names = {image["id"]: image["file_name"] for image in data["images"]}
        for name in names.values():
            captions.setdefault(name, [])
        for ann in data["annotations"]:
            if ann["image_id"] not in names:
                raise ValueError(f"{path}: annotation {ann.get('id')} refers to unknown image id "
                                 f"{ann['image_id']}")
            captions[names[ann["image_id"]]] += _as_captions(ann["caption"], path)
        return captions
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping file names to captions, or a "
                         "COCO captions file")
    for name, value in data.items():
        captions[name] = _as_captions(value, f"{path}, {name!r}")
    return captions


def _image_files(images_dir: str) -> List[str]:
    """Image files under ``images_dir`` (recursive), as paths relative to it."""
    found = []
    for root, dirs, files in os.walk(images_dir):
        dirs.sort()
        found += [os.path.relpath(os.path.join(root, f), images_dir) for f in sorted(files)
                  if os.path.splitext(f)[1].lower() in FILE_IMAGE_EXTENSIONS]
    return found


def records_from_mapping(images_dir: str, captions: Dict[str, List[str]],
                         problems: List[str]) -> List[Record]:
    """Records of a caption mapping; missing files, caption-less entries and image files that
    the mapping does not mention go to ``problems``."""
    records = []
    for name, caps in captions.items():
        path = os.path.join(images_dir, name)
        if not os.path.isfile(path):
            problems.append(f"caption for a missing image file {path}")
        elif not caps:
            problems.append(f"no caption for {path}")
        else:
            records.append(Record(make_key(name), _file_loader(path), caps, path))
    named = {os.path.normpath(name) for name in captions}
    problems += [f"no caption for {os.path.join(images_dir, f)} (not in the captions file)"
                 for f in _image_files(images_dir) if os.path.normpath(f) not in named]
    return records


def _sidecar_captions(stem: str) -> Tuple[Optional[List[str]], bool]:
    """Captions from ``stem.txt`` or ``stem.json``; the flag says whether such a file exists."""
    if os.path.isfile(stem + ".txt"):
        with open(stem + ".txt", encoding="utf-8") as f:
            return _as_captions(f.read(), stem + ".txt"), True
    if os.path.isfile(stem + ".json"):
        with open(stem + ".json", encoding="utf-8") as f:
            meta = json.load(f)
        value = meta.get("captions", meta.get("caption")) if isinstance(meta, dict) else None
        return (_as_captions(value, stem + ".json") if value is not None else []), True
    return None, False


def records_from_folder(images_dir: str, problems: List[str]) -> List[Record]:
    """Records of images with sidecar ``.txt``/``.json`` captions (img2dataset ``files``)."""
    records, image_stems = [], set()
    for root, dirs, files in os.walk(images_dir):
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(os.path.join(root, name))
            if ext.lower() not in FILE_IMAGE_EXTENSIONS:
                continue
            image_stems.add(stem)
            caps, found = _sidecar_captions(stem)
            if not caps:
                problems.append(f"no caption for {os.path.join(root, name)}"
                                + ("" if found else " (no .txt or .json beside it)"))
                continue
            relative = os.path.relpath(os.path.join(root, name), images_dir)
            records.append(Record(make_key(relative), _file_loader(os.path.join(root, name)),
                                  caps, os.path.join(root, name)))
    for root, _, files in os.walk(images_dir):
        for name in sorted(files):
            stem, ext = os.path.splitext(os.path.join(root, name))
            if ext in (".txt", ".json") and stem not in image_stems and \
                    not name.endswith(("_stats.json", ".parquet")):
                problems.append(f"caption file {os.path.join(root, name)} has no image")
    return records


def _captions_of_text(text: str, where: str) -> List[str]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict) and "captions" in value:
        return _as_captions(value["captions"], where)
    return _as_captions(text, where)


def records_from_shards(shards: Sequence[str], problems: List[str]) -> Iterator[Record]:
    """Records streamed from WebDataset/img2dataset shards (samples without image or caption,
    and read errors of damaged shards, go to ``problems``)."""
    def read_error(exn):
        problems.append(f"read error, rest of the shard skipped: {exn}")

    for sample in iterate_shard_records(shards, on_error=read_error):
        where = f"{sample['__url__']} (key {sample['__key__']!r})"
        data = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
        text = sample_text(sample)
        if data is None:
            problems.append(f"no image in {where}")
            continue
        caps = _captions_of_text(text, where) if text is not None else []
        if not caps:
            problems.append(f"no caption for {where}")
            continue
        yield Record(sample["__key__"], (lambda d=data: d), caps, where)


def _image_payload(data: bytes) -> Tuple[bytes, str]:
    """(bytes to store, extension): JPEG/PNG unchanged, others re-encoded as PNG."""
    with Image.open(io.BytesIO(data)) as image:
        kind = image.format
        image.load()
        if kind in ("JPEG", "PNG"):
            return data, "jpg" if kind == "JPEG" else "png"
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue(), "png"


class _Writer:
    """Writes samples under temporary names; ``commit`` renames them, ``abort`` removes them."""

    def __init__(self, folder: str, name: str, shard_size: Optional[int]):
        self.folder, self.name, self.shard_size = folder, name, shard_size
        self.count = 0
        self.shard = -1
        self.partial: List[Tuple[str, str]] = []  # (temporary path, final path)

    def _stem(self) -> str:
        return self.name if not self.shard_size else f"{self.name}-{self.shard:05d}"

    def _track(self, final: str) -> str:
        self.partial.append((final + ".partial", final))
        return final + ".partial"

    def write(self, key: str, payload: bytes, ext: str, captions: List[str]) -> None:
        if self.shard < 0 or (self.shard_size and self.count % self.shard_size == 0):
            self._close_shard()
            self.shard += 1
            self._open_shard()
        self._write(key, payload, ext, captions)
        self.count += 1

    def abort(self) -> None:
        self._close_shard()
        for tmp, _ in self.partial:
            if os.path.exists(tmp):
                os.remove(tmp)

    def commit(self) -> List[str]:
        self._close_shard()
        for tmp, final in self.partial:
            os.replace(tmp, final)
        return [final for _, final in self.partial]


class _TSVWriter(_Writer):
    def _open_shard(self):
        image_name = f"{self._stem()}.image.tsv"
        text_name = text_tsv_name(image_name)
        if not is_image_tsv_name(image_name) or is_image_tsv_name(text_name):
            raise ValueError(f"--name {self.name!r}: the text TSV {text_name} would be taken for "
                             "an image TSV; choose a name without 'image', 'images' or 'img'")
        self.paths = [os.path.join(self.folder, n) for n in (image_name, text_name)]
        self.files = [open(self._track(p), "wb") for p in self.paths]
        self.offsets = [[], []]

    def _write(self, key, payload, ext, captions):
        fields = (base64.b64encode(payload).decode("ascii"), json.dumps({"captions": captions}))
        for f, offsets, field in zip(self.files, self.offsets, fields):
            offsets.append(f.tell())
            f.write(f"{key}\t{field}\n".encode("utf-8"))

    def _close_shard(self):
        if self.shard < 0 or not getattr(self, "files", None):
            return
        for f, path, offsets in zip(self.files, self.paths, self.offsets):
            f.close()
            write_lineidx(offsets, self._track(lineidx_path(path)))
        self.files = None


class _WDSWriter(_Writer):
    def _open_shard(self):
        import webdataset

        path = os.path.join(self.folder, f"{self.name}-{self.shard:05d}.tar")
        self.stream = open(self._track(path), "wb")
        self.tar = webdataset.TarWriter(self.stream)

    def _write(self, key, payload, ext, captions):
        self.tar.write({"__key__": key, ext: payload, "txt": captions[0],
                        "json": json.dumps({"captions": captions})})

    def _close_shard(self):
        if self.shard < 0 or getattr(self, "tar", None) is None:
            return
        self.tar.close()
        self.stream.close()
        self.tar = None


def _problem_summary(problems: List[str]) -> str:
    shown = "\n  ".join(problems[:SHOWN_PROBLEMS])
    hidden = len(problems) - SHOWN_PROBLEMS
    more = f"\n  ... and {hidden} more" if hidden > 0 else ""
    return f"{len(problems)} sample(s) cannot be used:\n  {shown}{more}"


def convert(images: str, output: str, captions: Optional[str] = None, name: str = "train",
            fmt: str = "tsv", shard_size: Optional[int] = None, skip_missing: bool = False,
            progress: bool = True) -> dict:
    """Convert images and captions to TSV pairs or WebDataset shards.

    Args:
        images (str): images folder (or img2dataset output folder).
        output (str): output folder (created).
        captions (str): ``.json`` or ``.csv`` caption file; None reads captions from ``images``.
        name (str): output file name stem.
        fmt (str): ``"tsv"`` or ``"wds"``.
        shard_size (int): samples per output file (TSV default: one pair; wds: 10000).
        skip_missing (bool): leave out unusable samples (reported) instead of failing.
        progress (bool): tqdm progress bar.

    Returns:
        dict: ``written`` (samples), ``problems`` (list of messages), ``files`` (written paths).

    Raises:
        ValueError: unusable samples without ``skip_missing`` (nothing is written), duplicate
            keys, or no sample at all.
    """
    from tqdm import tqdm

    if fmt not in ("tsv", "wds"):
        raise ValueError(f"format must be 'tsv' or 'wds', got {fmt!r}")
    if not os.path.isdir(images):
        raise FileNotFoundError(f"images folder not found: {images}")
    if shard_size is not None and shard_size < 1:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    problems: List[str] = []
    shards = sorted(os.path.join(images, f) for f in os.listdir(images) if f.endswith(".tar"))
    if captions:
        records = records_from_mapping(images, read_caption_file(captions), problems)
    elif shards:
        records = records_from_shards(shards, problems)
    else:
        records = records_from_folder(images, problems)
    if problems and not skip_missing:
        raise ValueError(_problem_summary(problems) + SKIP_HINT)
    os.makedirs(output, exist_ok=True)
    if fmt == "wds":
        writer = _WDSWriter(output, name, shard_size or DEFAULT_WDS_SHARD_SIZE)
    else:
        writer = _TSVWriter(output, name, shard_size)
    keys = {}
    try:
        total = len(records) if isinstance(records, list) else None
        for record in tqdm(records, total=total, unit="image", disable=not progress):
            if record.key in keys:
                raise ValueError(f"{record.source} and {keys[record.key]} give the same key "
                                 f"{record.key!r}; rename one of them")
            keys[record.key] = record.source
            try:
                payload, ext = _image_payload(record.load())
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                problems.append(f"image {record.source} does not decode ({e})")
                continue
            writer.write(record.key, payload, ext, record.captions)
        if problems and not skip_missing:
            raise ValueError(_problem_summary(problems) + SKIP_HINT)
        if writer.count == 0:
            raise ValueError(f"no usable sample in {images}")
    except BaseException:
        writer.abort()
        raise
    files = writer.commit()
    if problems:
        logger.warning("Left out %s", _problem_summary(problems))
    return {"written": writer.count, "problems": problems, "files": files}


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``tools/make_image_text_dataset.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--images", required=True, help="images folder or img2dataset output")
    parser.add_argument("--captions",
                        help="captions .json (mapping or COCO) or .csv (file,caption)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--name", default="train", help="output file name stem")
    parser.add_argument("--format", choices=("tsv", "wds"), default="tsv")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="samples per output file (tsv: one pair if unset; wds: 10000)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="leave out unusable samples (reported with a count) instead of "
                        "failing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the tool; prints a summary."""
    args = build_parser().parse_args(argv)
    summary = convert(args.images, args.output, args.captions, args.name, args.format,
                      args.shard_size, args.skip_missing, not args.no_progress)
    left_out = len(summary["problems"])
    print(f"Wrote {summary['written']} samples to {len(summary['files'])} files in {args.output}"
          + (f"; left out {left_out} unusable samples" if left_out else ""))
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: :func:`run`, then the exit status (see ``run_command``)."""
    return run_command(run, argv)
