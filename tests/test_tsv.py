"""TSV reader: index generation, stale-index detection, linelist subsets, errors, worker safety."""
import logging
import os
import pickle

import pytest
import torch

from detectron2_ext.data.tsv import (
    TSVFile,
    TSVFileList,
    TSVFormatError,
    lineidx_path,
    linelist_path,
)

ROWS = [["k0", "alpha"], ["k1", "béta with spaces"], ["k2", "gamma"], ["k3", "δ"], ["k4", "e"]]


def write_tsv(path, rows, final_newline=True):
    text = "\n".join("\t".join(r) for r in rows) + ("\n" if final_newline else "")
    with open(path, "wb") as f:
        f.write(text.encode("utf-8"))


def expected_offsets(path):
    """Row start offsets computed independently: positions after each newline."""
    data = open(path, "rb").read()
    starts = [0] + [i + 1 for i, b in enumerate(data) if b == 0x0A and i + 1 < len(data)]
    return starts if data else []


def make_older(index, tsv):
    t = os.path.getmtime(tsv)
    os.utime(index, (t + 10, t + 10))


@pytest.mark.parametrize("final_newline", [True, False])
def test_lineidx_generated_when_missing(tmp_path, final_newline):
    path = str(tmp_path / "a.tsv")
    write_tsv(path, ROWS, final_newline)
    tsv = TSVFile(path)
    assert os.path.isfile(lineidx_path(path))
    assert lineidx_path(path) == str(tmp_path / "a.lineidx")
    offsets = [int(x) for x in open(lineidx_path(path)).read().split()]
    assert offsets == expected_offsets(path)
    assert len(tsv) == len(ROWS)
    for i, row in enumerate(ROWS):
        assert tsv[i] == row
    assert tsv.get_key(3) == "k3"


def test_missing_lineidx_without_generation_is_an_error(tmp_path):
    path = str(tmp_path / "a.tsv")
    write_tsv(path, ROWS)
    with pytest.raises(FileNotFoundError, match="a.lineidx"):
        TSVFile(path, generate_lineidx=False)


def test_stale_lineidx_newer_tsv_regenerated(tmp_path, caplog):
    path = str(tmp_path / "a.tsv")
    write_tsv(path, ROWS[:2])
    TSVFile(path)
    write_tsv(path, ROWS)  # rewritten after its index
    t = os.path.getmtime(lineidx_path(path))
    os.utime(path, (t + 10, t + 10))
    with caplog.at_level(logging.WARNING):
        tsv = TSVFile(path)
    assert any("newer" in r.getMessage() and path in r.getMessage() for r in caplog.records)
    assert len(tsv) == len(ROWS) and tsv[4] == ROWS[4]


@pytest.mark.parametrize("offsets, reason", [
    # the true offsets are [0, 9, 30, 39, 45] (50 bytes)
    ([0, 9, 30], "more rows"),                # too few entries
    ([0, 9, 30, 39, 45, 50], "beyond"),       # too many entries
    ([0, 9, 30, 36, 45], "not at the start"),  # one offset in the middle of a row
    ([1, 9, 30, 39, 45], "first offset"),
    ([0, 30, 9, 39, 45], "increasing"),
])
def test_stale_lineidx_bad_offsets_regenerated(tmp_path, caplog, offsets, reason):
    path = str(tmp_path / "a.tsv")
    write_tsv(path, ROWS)
    assert expected_offsets(path) == [0, 9, 30, 39, 45]
    index = lineidx_path(path)
    with open(index, "w") as f:
        f.write("".join(f"{o}\n" for o in offsets))
    make_older(index, path)
    with caplog.at_level(logging.WARNING):
        tsv = TSVFile(path)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(reason in m and path in m for m in messages), messages
    assert [tsv[i] for i in range(len(tsv))] == ROWS
    assert [int(x) for x in open(index).read().split()] == expected_offsets(path)


def test_stale_lineidx_without_generation_raises(tmp_path):
    path = str(tmp_path / "a.tsv")
    write_tsv(path, ROWS)
    index = lineidx_path(path)
    open(index, "w").write("0\n")
    make_older(index, path)
    with pytest.raises(TSVFormatError, match="stale index"):
        TSVFile(path, generate_lineidx=False)


def test_full_verification_catches_what_sampling_may_not(tmp_path):
    path = str(tmp_path / "a.tsv")
    rows = [[f"k{i}", "x" * (i % 7)] for i in range(200)]
    write_tsv(path, rows)
    good = expected_offsets(path)
    bad = list(good)
    bad[101] = good[100] + 1  # inside row 100; row 101 is not among the 64 sampled rows
    index = lineidx_path(path)
    open(index, "w").write("".join(f"{o}\n" for o in bad))
    make_older(index, path)
    tsv = TSVFile(path, verify="full")
    assert [tsv[i] for i in range(len(tsv))] == rows


def test_linelist_subset(tmp_path):
    path = str(tmp_path / "a.tsv")
    write_tsv(path, ROWS)
    open(linelist_path(path), "w").write("3\n1\n")
    tsv = TSVFile(path)
    assert len(tsv) == 2
    assert tsv[0] == ROWS[1] and tsv[1] == ROWS[3]
    assert tsv.row_number(1) == 3


def test_linelist_out_of_range(tmp_path):
    path = str(tmp_path / "a.tsv")
    write_tsv(path, ROWS)
    open(linelist_path(path), "w").write("1\n9\n")
    with pytest.raises(TSVFormatError, match=r"a.linelist, line 2"):
        TSVFile(path)


def test_malformed_row_error_names_file_and_row(tmp_path):
    path = str(tmp_path / "a.tsv")
    write_tsv(path, [["k0", "v"], ["only-one-field"], ["k2", "v"]])
    tsv = TSVFile(path, min_fields=2)
    assert tsv[0] == ["k0", "v"]
    with pytest.raises(TSVFormatError, match=r"a\.tsv, row 1: expected at least 2"):
        tsv[1]
    with pytest.raises(IndexError, match="a.tsv"):
        tsv[3]


def test_invalid_utf8_row(tmp_path):
    path = str(tmp_path / "a.tsv")
    open(path, "wb").write(b"k0\tok\nk1\t\xff\xfe\n")
    with pytest.raises(TSVFormatError, match=r"row 1: not UTF-8"):
        TSVFile(path)[1]


def test_file_list_lru_and_global_indexing(tmp_path):
    paths = []
    for f in range(6):
        path = str(tmp_path / f"part{f}.tsv")
        write_tsv(path, [[f"f{f}r{r}", str(r)] for r in range(f + 1)])
        paths.append(path)
    files = TSVFileList(paths, max_open=2)
    assert len(files) == sum(range(1, 7))
    seen = [files[i][0] for i in range(len(files))]
    assert seen == [f"f{f}r{r}" for f in range(6) for r in range(f + 1)]
    assert files.locate(3) == (2, 0)
    open_now = [f for f in files.files if f._fp is not None]
    assert len(open_now) <= 2


class _RowsDataset(torch.utils.data.Dataset):
    def __init__(self, tsv):
        self.tsv = tsv

    def __len__(self):
        return len(self.tsv)

    def __getitem__(self, i):
        return (os.getpid(), self.tsv[i][0])


def test_safe_across_worker_processes(tmp_path):
    path = str(tmp_path / "a.tsv")
    write_tsv(path, [[f"k{i}", "v" * i] for i in range(40)])
    tsv = TSVFile(path)
    tsv[5]  # opened in the parent: workers must reopen instead of sharing the file position
    clone = pickle.loads(pickle.dumps(tsv))
    assert clone._fp is None and clone[7] == ["k7", "v" * 7]
    loader = torch.utils.data.DataLoader(_RowsDataset(tsv), batch_size=None, num_workers=2)
    results = list(loader)
    assert [k for _, k in results] == [f"k{i}" for i in range(40)]
    assert os.getpid() not in {pid for pid, _ in results}
