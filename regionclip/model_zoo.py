"""The released RegionCLIP checkpoints by name: their files, configs, RPNs and embedding files.

    import regionclip
    regionclip.list_models()        # ['regionclip_finetuned-coco_rn50', ...]
    rc = regionclip.RegionCLIP.from_pretrained("regionclip_pretrained-cc_rn50")

Nothing is downloaded: the files are looked up in a local folder (default ``./pretrained_ckpt``)
with the original's layout, ``<folder>/<sub-folder>/<file>`` (``clip/``, ``regionclip/``,
``rpn/``, ``concept_emb/``), or directly in ``<folder>``. Before any weight is loaded, every file
a model needs is found (a missing one is reported with the exact place to put it), its SHA256 is
checked when one is registered, and its keys and shapes are checked against what the model's
name promises (:mod:`regionclip.checkpoint.file_checks`): an RN50x4 file under an RN50 name, a
detector under a pretrained name, a truncated file are errors naming the file.

SHA256 digests: :func:`register_hash`, a ``hashes.json`` in the folder mapping file names to
hex digests (``{"regionclip_pretrained-cc_rn50.pth": "9f86d0..."}``), or the ``sha256=`` argument
of :func:`resolve_model` / ``from_pretrained``. The original authors publish no digests, so none
are built in. The table of released files and models is :mod:`regionclip.model_zoo_entries`;
:func:`register_model` adds one's own. docs/MODEL_ZOO.md documents all of it.
"""
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .checkpoint.file_checks import check_file, check_state_dict
from .modeling.clip_arch import resolve_clip_arch

__all__ = ["ZooFile", "ZooModel", "ResolvedModel", "list_models", "list_files", "get_model",
           "get_file", "register_model", "register_file", "register_hash", "find_file",
           "check_zoo_file", "resolve_model", "models_markdown", "DEFAULT_FOLDER", "HASHES_FILE"]

logger = logging.getLogger(__name__)

DEFAULT_FOLDER = "pretrained_ckpt"
HASHES_FILE = "hashes.json"
SOURCE = ("the original authors' release (links in microsoft/RegionCLIP's docs/MODEL_ZOO.md; see "
          "pretrained_ckpt/README.md)")


@dataclass(frozen=True)
class ZooFile:
    """A released file.

    Attributes:
        filename (str): its name, e.g. ``regionclip_pretrained-cc_rn50.pth``.
        folder (str): its sub-folder of ``pretrained_ckpt/`` (``clip``, ``regionclip``, ``rpn``,
            ``concept_emb``).
        kind (str): what it holds (:data:`regionclip.checkpoint.file_checks.KINDS`).
        arch (str): a CLIP preset (``RN50``, ``RN50x4``) or ``MODEL.CLIP.ARCH`` JSON file; for
            ``rpn`` files the RPN's architecture (``R50-C4``, ``R50-FPN``, ``CLIP-RN50-FPN``).
        rows (int or None): embedding files: the number of rows (classes).
        about (str): one line for users.
    """

    filename: str
    folder: str
    kind: str
    arch: str
    rows: Optional[int] = None
    about: str = ""


@dataclass(frozen=True)
class ZooModel:
    """A named model: a ``CLIPFastRCNN`` config and the files it needs.

    Attributes:
        name (str): the name for :meth:`RegionCLIP.from_pretrained`.
        config (str): a packaged config name (or a yaml path).
        weights (str): file name of ``MODEL.WEIGHTS``.
        rpn_config (str): ``MODEL.CLIP.OFFLINE_RPN_CONFIG`` (packaged name or path).
        rpn (str): file name of ``MODEL.CLIP.BB_RPN_WEIGHTS``; may be absent when the weights
            file holds the RPN (``offline_*`` tensors), as the original's released checkpoints do.
        text_encoder (str or None): a file whose text tower is loaded after the weights (for
            detectors, whose checkpoints have none); None: the weights file's own.
        embeddings (tuple[(str, str)]): ``(config key, file name)`` of the embedding files the
            original's evaluation of this model uses (the API makes vocabularies on the fly and
            needs none of them).
        opts (tuple[str]): further ``KEY VALUE`` overrides.
        about (str): one line for users.
    """

    name: str
    config: str
    weights: str
    rpn_config: str
    rpn: str
    text_encoder: Optional[str] = None
    embeddings: Tuple[Tuple[str, str], ...] = ()
    opts: Tuple[str, ...] = ()
    about: str = ""


@dataclass
class ResolvedModel:
    """A model's files found and checked: what :meth:`RegionCLIP.from_pretrained` builds from."""

    model: ZooModel
    weights: str
    rpn: Optional[str]
    text_encoder: Optional[str]
    opts: List[str] = field(default_factory=list)
    embeddings: Dict[str, str] = field(default_factory=dict)


_FILES: Dict[str, ZooFile] = {}
_MODELS: Dict[str, ZooModel] = {}
_HASHES: Dict[str, str] = {}


def register_file(file: ZooFile) -> None:
    """Add (or replace) a file of the zoo."""
    _FILES[file.filename] = file


def register_model(model: ZooModel, files: Sequence[ZooFile] = ()) -> None:
    """Add (or replace) a named model and the files it names (e.g. your own detector)."""
    for file in files:
        register_file(file)
    named = [model.weights, model.rpn] + ([model.text_encoder] if model.text_encoder else []) \
        + [filename for _, filename in model.embeddings]
    unknown = [f for f in named if f not in _FILES]
    if unknown:
        raise ValueError(f"model {model.name!r} names files the zoo does not know: {unknown}; "
                         f"register them (files=[ZooFile(...)])")
    _MODELS[model.name] = model


def _digest(filename: str, sha256: str, where: str) -> str:
    digest = str(sha256).strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{where}: the SHA256 of {filename!r} must be 64 hex digits, got "
                         f"{sha256!r}")
    return digest


def register_hash(filename: str, sha256: Optional[str]) -> None:
    """Check the file ``filename`` (its name in the zoo, e.g. ``rpn_lvis_866.pth``) against this
    SHA256 hex digest whenever a model uses it; None removes the registered digest."""
    filename = os.path.basename(filename)
    if sha256 is None:
        _HASHES.pop(filename, None)
    else:
        _HASHES[filename] = _digest(filename, sha256, "register_hash")


def list_models() -> List[str]:
    """Names accepted by :meth:`regionclip.RegionCLIP.from_pretrained`."""
    return sorted(_MODELS)


def list_files() -> List[str]:
    """File names the zoo knows (checkpoints, RPNs, embedding files, CLIP weights)."""
    return sorted(_FILES)


def get_model(name: str) -> ZooModel:
    """The zoo entry of ``name``."""
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; regionclip.list_models() gives "
                       f"{list_models()}")
    return _MODELS[name]


def get_file(filename: str) -> ZooFile:
    """The zoo entry of the file ``filename``."""
    if filename not in _FILES:
        raise KeyError(f"unknown file {filename!r}; regionclip.model_zoo.list_files() gives "
                       f"{list_files()}")
    return _FILES[filename]


def _folder(folder: Optional[str]) -> str:
    return os.path.abspath(os.fspath(folder) if folder is not None else DEFAULT_FOLDER)


def find_file(filename: str, folder: Optional[str] = None) -> Tuple[Optional[str], str]:
    """``(path or None, where it belongs)``: ``<folder>/<sub-folder>/<filename>`` or
    ``<folder>/<filename>``."""
    root = _folder(folder)
    place = os.path.join(root, get_file(filename).folder, filename)
    for path in (place, os.path.join(root, filename)):
        if os.path.isfile(path):
            return path, place
    return None, place


def _digests(folder: str, sha256: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Registered digests, then ``<folder>/hashes.json``, then ``sha256`` (later ones win)."""
    digests = dict(_HASHES)
    path = os.path.join(folder, HASHES_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid json: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of file names to SHA256 digests, got "
                             f"{type(data).__name__}")
        digests.update({os.path.basename(k): _digest(k, v, path) for k, v in data.items()})
    for k, v in (sha256 or {}).items():
        digests[os.path.basename(k)] = _digest(k, v, "sha256")
    return digests


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_zoo_file(path: str, filename: Optional[str] = None, folder: Optional[str] = None,
                   name: Optional[str] = None,
                   sha256: Optional[Mapping[str, str]] = None) -> Dict:
    """Check ``path`` against the zoo file ``filename`` (default: its own name): its SHA256 when
    one is registered (:func:`register_hash`, ``hashes.json`` of ``folder`` or ``sha256``), then
    its keys and shapes (:func:`regionclip.checkpoint.file_checks.check_file`).

    Returns:
        dict: the file's tensors by key (memory mapped).

    Raises:
        ValueError (WrongFileError, CheckpointFileError): naming the file.
    """
    filename = filename or os.path.basename(path)
    file = get_file(filename)
    expected = _digests(_folder(folder), sha256).get(filename)
    if expected:
        found = _sha256(path)
        if found != expected:
            raise ValueError(f"{path}: SHA256 {found} differs from the registered {expected} "
                             f"(a damaged or different file); replace it with the released "
                             f"{filename}")
        logger.info("%s: SHA256 as registered", path)
    arch = file.arch if file.kind == "rpn" else resolve_clip_arch(file.arch, 0)
    return check_file(path, file.kind, arch, rows=file.rows, name=name or filename)


def _missing_message(name: str, missing: List[Tuple[str, str, str]], folder: str) -> str:
    lines = [f"  {filename} ({why}): put it at {place}" for filename, why, place in missing]
    return (f"{name} needs {len(missing)} file(s) not found in {folder}:\n" + "\n".join(lines)
            + f"\nDownload them from {SOURCE}; or pass folder=... where they are.")


def resolve_model(name: str, folder: Optional[str] = None,
                  sha256: Optional[Mapping[str, str]] = None,
                  embeddings: bool = False) -> ResolvedModel:
    """Find and check every file model ``name`` needs in ``folder`` (default
    ``./pretrained_ckpt``); nothing is loaded into a model.

    Args:
        name (str): one of :func:`list_models`.
        folder (str or None): where the files are (``<folder>/<sub-folder>/<file>`` or
            ``<folder>/<file>``).
        sha256 (mapping or None): file name -> SHA256 hex digest, checked (with those of
            :func:`register_hash` and ``<folder>/hashes.json``).
        embeddings (bool): also find and check the embedding files of the original's evaluation
            of this model, and add their config keys to ``opts`` (for ``tools/train_net.py``);
            :class:`~regionclip.RegionCLIP` needs none.

    Raises:
        KeyError: unknown name.
        FileNotFoundError: a missing file, naming each and where to put it.
        ValueError: a file that is not the one the name promises (names the file).
    """
    model = get_model(name)
    root = _folder(folder)
    weights, weights_place = find_file(model.weights, root)
    rpn, rpn_place = find_file(model.rpn, root)
    text = find_file(model.text_encoder, root) if model.text_encoder else (None, None)
    emb = {key: find_file(filename, root) + (filename,) for key, filename in model.embeddings} \
        if embeddings else {}
    missing = []
    if weights is None:
        missing.append((model.weights, "MODEL.WEIGHTS", weights_place))
    if model.text_encoder and text[0] is None:
        missing.append((model.text_encoder, "its text encoder", text[1]))
    missing += [(filename, key, place) for key, (path, place, filename) in emb.items()
                if path is None]
    if missing:  # the RPN is reported with them (it may be needed)
        if rpn is None:
            missing.append((model.rpn, "MODEL.CLIP.BB_RPN_WEIGHTS, unless the weights file holds "
                            "the RPN", rpn_place))
        raise FileNotFoundError(_missing_message(name, missing, root))
    shapes = check_zoo_file(weights, model.weights, root, name, sha256)
    if rpn is not None:
        check_zoo_file(rpn, model.rpn, root, name, sha256)
    elif any(k.startswith("offline_proposal_generator.") for k in shapes):
        # the released checkpoints hold the offline RPN: it must be the one the model names
        file = get_file(model.weights)
        check_state_dict(shapes, weights, file.kind, resolve_clip_arch(file.arch, 0), name=name,
                         rpn_arch=get_file(model.rpn).arch)
        logger.info("%s: no %s; the offline RPN of %s is used", name, rpn_place, weights)
    else:
        raise FileNotFoundError(_missing_message(name, [(
            model.rpn, f"MODEL.CLIP.BB_RPN_WEIGHTS: {os.path.basename(weights)} holds no RPN",
            rpn_place)], root))
    if text[0] is not None:
        check_zoo_file(text[0], model.text_encoder, root, name, sha256)
    for key, (path, _, filename) in emb.items():
        check_zoo_file(path, filename, root, name, sha256)
    opts = ["MODEL.WEIGHTS", weights, "MODEL.CLIP.OFFLINE_RPN_CONFIG", model.rpn_config,
            "MODEL.CLIP.BB_RPN_WEIGHTS", rpn or ""]
    for key in ("MODEL.CLIP.TEXT_EMB_PATH", "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH"):
        opts += [key, emb[key][0] if key in emb else ""]
    opts += list(model.opts)
    return ResolvedModel(model, weights, rpn, text[0], opts,
                         {key: path for key, (path, _, _) in emb.items()})


def models_markdown() -> str:
    """The table of the zoo's models (docs/MODEL_ZOO.md holds it)."""
    rows = ["| name | config | weights | offline RPN | text encoder | embedding files (original's "
            "evaluation) |", "|---|---|---|---|---|---|"]
    for name in list_models():
        m = _MODELS[name]
        files = ", ".join(f"`{f}`" for _, f in m.embeddings) or "-"
        rows.append(f"| `{name}` | `{m.config}` | `{_FILES[m.weights].folder}/{m.weights}` | "
                    f"`{_FILES[m.rpn].folder}/{m.rpn}` with `{m.rpn_config}` | "
                    + (f"`{_FILES[m.text_encoder].folder}/{m.text_encoder}`" if m.text_encoder
                       else "its own") + f" | {files} |")
    return "\n".join(rows) + "\n"


from . import model_zoo_entries  # noqa: E402,F401  (registers the released files and models)
