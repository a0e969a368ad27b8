"""Checkpoint files of a training run: atomic writes, and which file ``--resume`` reads.

* Checkpoints and the ``last_checkpoint`` tag are written to a temporary file in the same folder,
  flushed to disk and renamed over the target: a run killed while saving leaves the previous
  files as they were, never a truncated one.
* On resume, the file named in ``last_checkpoint`` is checked first (a checkpoint written by
  ``torch.save`` is a zip archive: it must be complete and every member must match its CRC).
  If it is torn (truncated, e.g. written by another program or on a full disk), missing, or if
  ``last_checkpoint`` itself is empty, the newest intact ``model_*.pth`` of the folder is used
  instead and the log says which file was skipped and why. If there is none, the error says what
  to do.
"""
import glob
import logging
import os
import tempfile
import zipfile
from typing import BinaryIO, Callable, List, Optional

__all__ = ["checkpoint_problem", "choose_resume_checkpoint", "write_atomically",
           "LAST_CHECKPOINT"]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
_ZIP_MAGIC = b"PK\x03\x04"


def checkpoint_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be a complete checkpoint, or None if nothing is wrong with it.

    Zip-format files (what ``torch.save`` writes) must be complete archives whose members match
    their CRCs; an empty file is always a problem; other formats (legacy torch files, detectron2
    ``.pkl``) are not checked here.

    Args:
        path (str): a file.

    Returns:
        str or None: the problem, in words.
    """
    if not os.path.isfile(path):
        return "does not exist"
    if os.path.getsize(path) == 0:
        return "is empty"
    with open(path, "rb") as f:
        if f.read(4) != _ZIP_MAGIC:
            return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"is truncated or damaged ({e})"
    if bad is not None:
        return f"is damaged (member {bad} fails its CRC check)"
    return None


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``write(f)`` so that ``path`` is either the old or the new file.

    Args:
        path (str): destination.
        write (callable): writes the content to the binary file object it is given.
    """
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=folder)
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _candidates(save_dir: str, exclude: str) -> List[str]:
    files = [f for f in glob.glob(os.path.join(save_dir, "model_*.pth"))
             if os.path.abspath(f) != os.path.abspath(exclude) and os.path.isfile(f)]
    return sorted(files, key=lambda f: (os.stat(f).st_mtime_ns, os.path.basename(f)),
                  reverse=True)


def choose_resume_checkpoint(save_dir: str, log: Optional[logging.Logger] = None) -> str:
    """The checkpoint to resume from in ``save_dir`` (see the module docstring).

    Args:
        save_dir (str): the run's output folder (with ``last_checkpoint``).
        log (logging.Logger): where the fallback is reported.

    Returns:
        str: the path of an intact checkpoint, or "" if ``last_checkpoint`` does not exist.

    Raises:
        RuntimeError: ``last_checkpoint`` exists but no intact checkpoint does.
    """
    log = log or logger
    tag = os.path.join(save_dir, LAST_CHECKPOINT)
    try:
        with open(tag, encoding="utf-8", errors="replace") as f:
            named = f.read().strip()
    except FileNotFoundError:
        return ""
    if named:
        path = os.path.join(save_dir, named)
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        why = f"{path}, named in {tag}, {problem}"
    else:
        path = ""
        why = f"{tag} is empty (was the run killed while writing it?)"
    skipped = []
    for candidate in _candidates(save_dir, path):
        problem = checkpoint_problem(candidate)
        if problem is None:
            log.warning("%s; resuming from the newest intact checkpoint, %s%s", why, candidate,
                        "".join(f" (also skipped: {s})" for s in skipped))
            return candidate
        skipped.append(f"{candidate} {problem}")
    raise RuntimeError(f"Cannot resume from {save_dir}: {why}, and the folder has no other "
                       f"intact checkpoint (model_*.pth){''.join('; ' + s for s in skipped)}. "
                       f"Delete {tag} to start from MODEL.WEIGHTS instead, or put back a "
                       "checkpoint and name it in that file.")
