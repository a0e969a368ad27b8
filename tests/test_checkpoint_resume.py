"""Which checkpoint --resume reads: a torn newest checkpoint or an empty last_checkpoint falls back
to the newest intact file (and the log says so); saving is atomic."""
import logging
import os
import time

import pytest
import torch
from torch import nn

from regionclip.checkpoint import RegionCLIPCheckpointer
from regionclip.checkpoint.resume_files import checkpoint_problem


def _model(value=0.0):
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.fill_(value)
    return model


def _save_series(folder, values=(1.0, 2.0, 3.0)):
    """Checkpoints model_000000{i}.pth whose weights are all ``values[i]``, oldest first."""
    for i, value in enumerate(values):
        RegionCLIPCheckpointer(_model(value), str(folder)).save(f"model_{i:07d}", iteration=i)
        stamp = time.time() - 100 + i  # distinct modification times, in order
        os.utime(folder / f"model_{i:07d}.pth", (stamp, stamp))
    return [folder / f"model_{i:07d}.pth" for i in range(len(values))]


def _resume(folder):
    model = _model()
    extra = RegionCLIPCheckpointer(model, str(folder)).resume_or_load("", resume=True)
    return float(model.weight[0, 0]), extra.get("iteration")


def _truncate(path, keep=0.6):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def test_intact_files_resume_from_the_tagged_one(tmp_path):
    files = _save_series(tmp_path)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    assert all(checkpoint_problem(str(f)) is None for f in files)
    assert _resume(tmp_path) == (3.0, 2)


def test_torn_newest_checkpoint_falls_back_and_says_so(tmp_path, caplog):
    files = _save_series(tmp_path)
    _truncate(files[2])
    assert "truncated" in checkpoint_problem(str(files[2]))
    with caplog.at_level(logging.WARNING):
        assert _resume(tmp_path) == (2.0, 1)
    message = caplog.text
    assert "model_0000002.pth, named in" in message and "truncated" in message
    assert "resuming from the newest intact checkpoint" in message
    assert "model_0000001.pth" in message


def test_damaged_bytes_are_found_by_their_crc(tmp_path, caplog):
    files = _save_series(tmp_path)
    data = bytearray(files[2].read_bytes())
    start = data.index(b"data/0") + 64  # inside the stored tensor data
    data[start:start + 8] = b"\xff" * 8
    files[2].write_bytes(bytes(data))
    assert "CRC" in checkpoint_problem(str(files[2]))
    with caplog.at_level(logging.WARNING):
        assert _resume(tmp_path)[1] == 1


def test_several_torn_files_are_skipped_in_order(tmp_path, caplog):
    files = _save_series(tmp_path)
    _truncate(files[2])
    files[1].write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert _resume(tmp_path) == (1.0, 0)
    assert "also skipped" in caplog.text and "is empty" in caplog.text


def test_empty_last_checkpoint_falls_back_with_a_clear_message(tmp_path, caplog):
    _save_series(tmp_path)
    (tmp_path / "last_checkpoint").write_text("")
    with caplog.at_level(logging.WARNING):
        assert _resume(tmp_path) == (3.0, 2)
    assert "last_checkpoint is empty" in caplog.text


def test_nothing_intact_is_an_error_that_says_what_to_do(tmp_path):
    files = _save_series(tmp_path, values=(1.0,))
    _truncate(files[0])
    (tmp_path / "last_checkpoint").write_text("")
    with pytest.raises(RuntimeError) as error:
        _resume(tmp_path)
    text = str(error.value)
    assert "last_checkpoint is empty" in text and "model_0000000.pth is truncated" in text
    assert "Delete" in text and "MODEL.WEIGHTS" in text


def test_a_save_that_fails_midway_leaves_the_previous_file(tmp_path, monkeypatch):
    _save_series(tmp_path, values=(1.0,))
    before = (tmp_path / "model_0000000.pth").read_bytes()

    def half_written(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(OSError, match="No space"):
        RegionCLIPCheckpointer(_model(5.0), str(tmp_path)).save("model_0000000")
    assert (tmp_path / "model_0000000.pth").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]  # no temp
