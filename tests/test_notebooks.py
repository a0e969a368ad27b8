"""notebooks/*.ipynb run top to bottom (code cells executed in one namespace, as a kernel would)."""
import contextlib
import io
import json
import os

import pytest
import torch.nn.functional as F
from conftest import REPO
from PIL import Image

NOTEBOOKS = os.path.join(REPO, "notebooks")


def _run(path, cwd):
    with open(path) as f:
        nb = json.load(f)
    assert nb["nbformat"] == 4
    shown, printed = [], io.StringIO()
    namespace = {"display": shown.append, "__name__": "__main__"}
    old = os.getcwd()
    os.chdir(cwd)  # a notebook must not depend on the folder it is started from
    try:
        with contextlib.redirect_stdout(printed):
            for index, cell in enumerate(nb["cells"]):
                if cell["cell_type"] != "code":
                    continue
                # stored outputs (if any) must not hold an error
                assert not any(o.get("output_type") == "error" for o in cell.get("outputs",
                                                                                 [])), index
                exec(compile("".join(cell["source"]), f"{os.path.basename(path)}[{index}]", "exec"),
                     namespace)
    finally:
        os.chdir(old)
    return nb, namespace, shown, printed.getvalue()


@pytest.mark.slow
def test_quickstart_runs_and_shows_detections(tmp_path):
    _, ns, shown, printed = _run(os.path.join(NOTEBOOKS, "quickstart.ipynb"), tmp_path)
    (grid,) = shown
    assert isinstance(grid, Image.Image)
    # 8 scenes of 96 px drawn 3x enlarged, tiled 4 per row (with thin gaps)
    assert [p.size for p in ns["pictures"]] == [(288, 288)] * 8
    assert 4 * 288 <= grid.size[0] < 4 * 300 and 2 * 288 <= grid.size[1] < 2 * 300
    # the detector found objects, and labelled the given boxes with names of the vocabulary
    assert any(ns["one_label_per_object"](ns["rc"].detect(s.image, ns["vocabulary"],
                                                          score_threshold=0.15))
               for s in ns["scenes"])
    assert printed.count("true: ") == len(ns["scenes"][0].objects)
    total = sum(len(s.objects) for s in ns["scenes"])
    assert f"{total} objects, top-1 among 12 names: roi " in printed
    hits = ns["hits"]
    assert printed.count(f"roi {100 * hits['roi'] / total:.0f}%, "
                         f"crop {100 * hits['crop'] / total:.0f}%") == 1
    # the shipped toy detector names the objects' shapes better than chance (1 in 12) from its
    # region features; recounted here from the API
    text = F.normalize(ns["rc"].encode_text(ns["vocabulary"]), dim=1)
    recount = 0
    for scene in ns["scenes"]:
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in scene.objects)]
        best = (F.normalize(ns["rc"].encode_regions(scene.image, boxes), dim=1) @ text.T).argmax(1)
        recount += sum(ns["vocabulary"][b] == o["shape"]
                       for o, b in zip(scene.objects, best.tolist()))
    assert recount == hits["roi"] > total / 12
    assert "released checkpoint not found" in printed  # none on a test machine


def test_every_notebook_is_tested():
    names = sorted(f for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb"))
    assert names == ["quickstart.ipynb"]
