"""Random access to tab-separated files through a ``.lineidx`` byte-offset index.

A TSV file holds one sample per row (``field \\t field ...``, usually ``key \\t value``). Its
companion ``<name>.lineidx`` (``<name>`` is the path without the ``.tsv`` extension) lists the
byte offset of every row, one decimal number per line. An optional ``<name>.linelist`` lists the
row numbers to use (a subset; sorted on load, as in the Microsoft TSV tools).

The index is generated when it is missing. A stale index is detected and regenerated with a
warning that names the file: the TSV is newer than its index, the index is malformed, its
offsets are not increasing, do not start at 0, do not point at row starts (checked on up to 64
evenly spaced rows) or the file holds more rows than the index (checked on the last row);
``verify="full"`` compares every offset with a fresh scan instead. When the index cannot be
written (read-only folder), it is kept in memory and a warning says so.

Files are opened lazily in the process that reads them (a forked DataLoader worker never shares
a parent's file position); :class:`TSVFileList` keeps at most ``max_open`` files open (least
recently used first out, 4 by default as in the original RegionCLIP).
"""
import array
import bisect
import collections
import logging
import os
from typing import List, Optional, Sequence, Tuple

__all__ = ["TSVFile", "TSVFileList", "TSVFormatError", "compute_line_offsets", "lineidx_path",
           "linelist_path", "lineidx_problem", "write_lineidx"]

logger = logging.getLogger(__name__)

_SAMPLED_ROWS = 64
_READ_CHUNK = 1 << 20
VERIFY_MODES = ("none", "sample", "full")


class TSVFormatError(ValueError):
    """A malformed TSV row or companion file (the message names the file and row)."""


def lineidx_path(tsv_path: str) -> str:
    """str: the ``.lineidx`` companion of a TSV file (extension replaced)."""
    return os.path.splitext(tsv_path)[0] + ".lineidx"


def linelist_path(tsv_path: str) -> str:
    """str: the optional ``.linelist`` companion of a TSV file (extension replaced)."""
    return os.path.splitext(tsv_path)[0] + ".linelist"


def compute_line_offsets(tsv_path: str) -> "array.array":
    """Scan a file and return the byte offset of every row.

    Args:
        tsv_path (str): the TSV file.

    Returns:
        array.array: signed 64-bit offsets, one per row (a final row without newline counts).
    """
    offsets = array.array("q")
    position = 0
    with open(tsv_path, "rb") as f:
        for line in f:
            offsets.append(position)
            position += len(line)
    return offsets


def write_lineidx(offsets: Sequence[int], path: str) -> None:
    """Write an index atomically (temporary file, then rename; safe with concurrent writers).

    Args:
        offsets (Sequence[int]): byte offsets.
        path (str): the ``.lineidx`` file.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="ascii") as f:
            f.writelines(f"{offset}\n" for offset in offsets)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_lineidx(path: str) -> Tuple[Optional["array.array"], Optional[str]]:
    offsets = array.array("q")
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text.isdigit():
                return None, f"line {number} is {line[:40]!r}, not a byte offset"
            offsets.append(int(text))
    return offsets, None


def _sample_positions(count: int) -> List[int]:
    if count <= _SAMPLED_ROWS:
        return list(range(count))
    step = (count - 1) / (_SAMPLED_ROWS - 1)
    return sorted({round(i * step) for i in range(_SAMPLED_ROWS)})


def _has_newline_before_end(f, start: int, size: int) -> bool:
    """Whether a newline occurs in ``[start, size - 1)``, i.e. the last row is not the last one."""
    f.seek(start)
    position = start
    while position < size - 1:
        chunk = f.read(min(_READ_CHUNK, size - 1 - position))
        if not chunk:
            return False
        if b"\n" in chunk:
            return True
        position += len(chunk)
    return False


def lineidx_problem(tsv_path: str, offsets: Sequence[int], full: bool = False) -> Optional[str]:
    """Check an index against its TSV file.

    Args:
        tsv_path (str): the TSV file.
        offsets (Sequence[int]): the index's offsets.
        full (bool): compare with a complete scan instead of the cheap checks.

    Returns:
        str or None: why the index does not fit the file, or None if it does.
    """
    if full:
        actual = compute_line_offsets(tsv_path)
        if len(actual) != len(offsets):
            return f"it lists {len(offsets)} rows, the file has {len(actual)}"
        for row, (a, b) in enumerate(zip(actual, offsets)):
            if a != b:
                return f"row {row} starts at byte {a}, the index says {b}"
        return None
    size = os.path.getsize(tsv_path)
    if len(offsets) == 0:
        return None if size == 0 else "it lists no rows but the file is not empty"
    if offsets[0] != 0:
        return f"the first offset is {offsets[0]}, not 0"
    if any(b <= a for a, b in zip(offsets, offsets[1:])):
        return "its offsets are not strictly increasing"
    if offsets[-1] >= size:
        return f"the last offset {offsets[-1]} is beyond the end of the file ({size} bytes)"
    with open(tsv_path, "rb") as f:
        for row in _sample_positions(len(offsets)):
            if row == 0:
                continue
            f.seek(offsets[row] - 1)
            if f.read(1) != b"\n":
                return f"the offset {offsets[row]} of row {row} is not at the start of a row"
        if _has_newline_before_end(f, offsets[-1], size):
            return f"the file has more rows than the {len(offsets)} it lists"
    return None


def _load_offsets(tsv_path: str, generate: bool, verify: str) -> "array.array":
    index = lineidx_path(tsv_path)
    reason = None
    if not os.path.isfile(index):
        if not generate:
            raise FileNotFoundError(f"{tsv_path}: index {index} is missing (one byte offset per "
                                    "row; let the reader generate it with generate_lineidx=True)")
        logger.info("Generating %s", index)
    else:
        offsets, reason = _read_lineidx(index)
        if reason is None and os.path.getmtime(tsv_path) > os.path.getmtime(index):
            reason = "the TSV file is newer than its index"
        if reason is None and verify != "none":
            reason = lineidx_problem(tsv_path, offsets, full=verify == "full")
        if reason is None:
            return offsets
        if not generate:
            raise TSVFormatError(f"{tsv_path}: stale index {index}: {reason}")
        logger.warning("Stale index %s of %s (%s); regenerating it", index, tsv_path, reason)
    offsets = compute_line_offsets(tsv_path)
    try:
        write_lineidx(offsets, index)
    except OSError as e:
        logger.warning("Cannot write %s (%s); keeping the index of %s in memory only", index, e,
                       tsv_path)
    return offsets


def _load_linelist(tsv_path: str, num_rows: int) -> Optional["array.array"]:
    path = linelist_path(tsv_path)
    if not os.path.isfile(path):
        return None
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text:
                continue
            if not text.isdigit() or int(text) >= num_rows:
                raise TSVFormatError(f"{path}, line {number}: {text!r} is not a row number of "
                                     f"{tsv_path} (0..{num_rows - 1})")
            rows.append(int(text))
    return array.array("q", sorted(rows))


class TSVFile:
    """One TSV file with random access to its rows.

    Args:
        path (str): the ``.tsv`` file.
        generate_lineidx (bool): create a missing or stale ``.lineidx`` (True) or raise.
        verify (str): index check: ``"sample"`` (cheap checks, default), ``"full"`` (complete
            scan) or ``"none"`` (only the modification times).
        min_fields (int): rows with fewer tab-separated fields raise :class:`TSVFormatError`.
    """

    def __init__(self, path: str, generate_lineidx: bool = True, verify: str = "sample",
                 min_fields: int = 1):
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"TSV file not found: {path}")
        self.path = path
        self.min_fields = min_fields
        self._offsets = _load_offsets(path, generate_lineidx, verify)
        self._rows = _load_linelist(path, len(self._offsets))
        self._fp = None
        self._pid = None

    def __len__(self) -> int:
        return len(self._rows) if self._rows is not None else len(self._offsets)

    def __repr__(self) -> str:
        return f"TSVFile({self.path!r}, rows={len(self)})"

    def row_number(self, index: int) -> int:
        """int: the file row (0-based line) behind ``index`` (differs with a ``.linelist``)."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: index {index} out of range (0..{len(self) - 1})")
        return self._rows[index] if self._rows is not None else index

    def _file(self):
        if self._fp is None or self._pid != os.getpid():
            self._fp = open(self.path, "rb")
            self._pid = os.getpid()
        return self._fp

    def read_line(self, index: int) -> bytes:
        """bytes: the raw row behind ``index`` without its line ending."""
        row = self.row_number(index)
        f = self._file()
        f.seek(self._offsets[row])
        line = f.readline()
        if not line:
            raise TSVFormatError(f"{self.path}, row {row}: nothing at byte {self._offsets[row]}; "
                                 "the file changed after its index was read")
        return line.rstrip(b"\r\n")

    def __getitem__(self, index: int) -> List[str]:
        """The fields of a row (each stripped of surrounding white space).

        Args:
            index (int): row position (within the ``.linelist`` subset if there is one).

        Returns:
            list[str]: the tab-separated fields.
        """
        line = self.read_line(index)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TSVFormatError(f"{self.path}, row {self.row_number(index)}: not UTF-8 ({e})")
        fields = [field.strip() for field in text.split("\t")]
        if len(fields) < self.min_fields:
            raise TSVFormatError(
                f"{self.path}, row {self.row_number(index)}: expected at least {self.min_fields} "
                f"tab-separated fields, got {len(fields)} (row starts {text[:60]!r})")
        return fields

    def get_key(self, index: int) -> str:
        """str: the first field of a row."""
        return self[index][0]

    def close(self) -> None:
        """Close the file if this process opened it (it is reopened on the next read)."""
        if self._fp is not None and self._pid == os.getpid():
            self._fp.close()
        self._fp = None
        self._pid = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fp"] = None
        state["_pid"] = None
        return state


class TSVFileList:
    """Several TSV files read as one sequence of rows, with a bounded number of open files.

    Args:
        paths (Sequence[str]): the TSV files, in order.
        max_open (int): files kept open at once (least recently used closed first).
        **kwargs: passed to :class:`TSVFile`.
    """

    def __init__(self, paths: Sequence[str], max_open: int = 4, **kwargs):
        if isinstance(paths, str):
            paths = [paths]
        if not paths:
            raise ValueError("TSVFileList needs at least one TSV file")
        if max_open < 1:
            raise ValueError(f"max_open must be positive, got {max_open}")
        self.files = [TSVFile(p, **kwargs) for p in paths]
        self.max_open = max_open
        self._ends = []
        total = 0
        for f in self.files:
            total += len(f)
            self._ends.append(total)
        self._open = collections.OrderedDict()

    @property
    def paths(self) -> List[str]:
        """list[str]: the files in order."""
        return [f.path for f in self.files]

    @property
    def sizes(self) -> List[int]:
        """list[int]: rows per file."""
        return [len(f) for f in self.files]

    def __len__(self) -> int:
        return self._ends[-1]

    def locate(self, index: int) -> Tuple[int, int]:
        """Map a global index to ``(file position, index within that file)``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range (0..{len(self) - 1}) of the "
                             f"{len(self.files)} TSV files starting with {self.files[0].path}")
        which = bisect.bisect_right(self._ends, index)
        start = self._ends[which - 1] if which else 0
        return which, index - start

    def _touch(self, which: int) -> None:
        self._open[which] = os.getpid()
        self._open.move_to_end(which)
        while len(self._open) > self.max_open:
            oldest, _ = self._open.popitem(last=False)
            self.files[oldest].close()

    def __getitem__(self, index: int) -> List[str]:
        which, local = self.locate(index)
        self._touch(which)
        return self.files[which][local]

    def close(self) -> None:
        """Close every file this process opened."""
        for f in self.files:
            f.close()
        self._open.clear()
