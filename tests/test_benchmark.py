"""The benchmark's logic (regionclip.benchmark) without running a benchmark: the jobs a command
line plans, the commands that run them, the table, and the original's case kept apart from this
package's imports."""
import json
import os
import re
import subprocess
import sys

import pytest

from regionclip.benchmark import CaseArgs, Job, markdown_table, plan_jobs
from regionclip.benchmark import child as child_module
from regionclip.benchmark.runner import job_command
from regionclip.tools import benchmark as tool

BENCHMARK = os.path.dirname(os.path.abspath(child_module.__file__))


def test_jobs_of_a_command_line():
    jobs = plan_jobs(["roof", "zeroshot", "train"], regions=[100, 300], chunks=[0, 128],
                     dtypes=["float32", "bfloat16"], train_regions=64, original=True)
    assert jobs[0] == Job("roof")
    zeroshot = [j for j in jobs if j.case == "zeroshot"]
    assert len(zeroshot) == 2 * 2 * 2
    assert {(j.num_regions, j.chunk, j.dtype) for j in zeroshot} == {
        (n, c, d) for n in (100, 300) for c in (0, 128) for d in ("float32", "bfloat16")}
    assert [j for j in jobs if j.case == "original"] == [Job("original", 100),
                                                         Job("original", 300)]
    assert jobs[-1] == Job("train", 64)
    assert not [j for j in plan_jobs(["zeroshot"], regions=[100]) if j.case == "original"]
    with pytest.raises(ValueError, match="unknown case 'zeroshoot'"):
        plan_jobs(["zeroshoot"])


def test_commands_run_the_child_module_or_the_original_script_by_path():
    cmd = job_command(Job("zeroshot", 300, 128, "bfloat16"), (64, 96), 3, "cpu")
    assert cmd[1:4] == ["-m", "regionclip.benchmark.child", "zeroshot"]
    fields = json.loads(cmd[4])
    assert CaseArgs(**fields) == CaseArgs(num_regions=300, chunk=128, dtype="bfloat16",
                                          size=[64, 96], repeats=3, device="cpu")
    cmd = job_command(Job("original", 100), (64, 96), 1, "cuda", original="/src/RegionCLIP")
    assert cmd[1] == os.path.join(BENCHMARK, "original.py")
    assert json.loads(cmd[2])["original"] == "/src/RegionCLIP"
    assert json.loads(cmd[2])["device"] == "cpu"  # the original runs on the CPU only
    with pytest.raises(ValueError, match="--original CHECKOUT"):
        job_command(Job("original", 100), (64, 96), 1, "cpu")


def test_the_original_case_loads_no_detectron2_before_the_originals():
    """original.py loads timing.py and models.py by path: neither imports a detectron2 (nor
    regionclip), so the original's fork can be imported first. ``import regionclip`` would
    (negative control)."""
    load = (f"import importlib.util, sys\n"
            f"for name in ('timing', 'models'):\n"
            f"    spec = importlib.util.spec_from_file_location(name, r'{BENCHMARK}/' + name + "
            f"'.py')\n"
            f"    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n")
    report = ("import json; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] "
              "in ('detectron2', 'regionclip'))))\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(BENCHMARK)))

    def imported(script):
        return json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True,
                                         text=True, env=env, check=True).stdout)

    assert imported(load + report) == []
    assert "detectron2" in imported("import regionclip.benchmark.models\n" + load + report)
    with open(os.path.join(BENCHMARK, "original.py")) as f:
        source = f.read()
    assert not re.search(r"^\s*(import|from)\s+(regionclip|detectron2|\.)", source.split(
        "def case_zeroshot_original")[0], re.M)  # module level: standard library only


def test_the_child_runs_a_case_with_the_given_fields(monkeypatch, capsys):
    seen = {}

    def fake(args):
        seen.update(vars(args))
        assert os.path.isdir(args.tmp)
        return {"case": "fake", "seconds": 1.0}

    monkeypatch.setitem(child_module.CASES, "fake", fake)
    fields = {"num_regions": 7, "chunk": 2, "dtype": "float32", "size": [32, 48], "repeats": 1,
              "device": "cpu"}
    assert child_module.main(["fake", json.dumps(fields)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("RESULT ")
    result = json.loads(line[len("RESULT "):])
    assert result["case"] == "fake" and result["peak_rss_mb"] > 0
    assert {k: seen[k] for k in fields} == fields
    assert not os.path.exists(seen["tmp"])  # the scratch folder is removed


def test_table_efficiency_is_flops_over_time_over_the_roof_of_the_dtype():
    results = [{"case": "roof", "gflops_fp32": 100.0, "gflops_bf16": 400.0, "threads": 2,
                "peak_rss_mb": 10.0},
               {"case": "zeroshot_100", "regions": 100, "chunk": 0, "dtype": "float32",
                "seconds": 2.0, "gflop": 50.0, "peak_rss_mb": 500.0},
               {"case": "zeroshot_100_bf16", "regions": 100, "chunk": 0, "dtype": "bfloat16",
                "seconds": 0.5, "gflop": 50.0, "peak_rss_mb": 500.0}]
    table = markdown_table(results).splitlines()
    assert table[0] == "device: cpu"
    assert "| zeroshot_100 | 100 | 0 | 2.00 | 50 | 25% | 500 |" in table  # 50 / 2 / 100
    assert "| zeroshot_100_bf16 | 100 | 0 | 0.50 | 50 | 25% | 500 |" in table  # 50 / 0.5 / 400
    assert "n/a" in markdown_table(results[1:])  # no roof measured


def test_command_reports_an_unknown_case(capsys, tmp_path):
    assert tool.main(["--cases", "nope", "--json", str(tmp_path / "b.json")]) == 1
    assert "error: unknown case 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_deployment_cases_are_planned_and_reported_in_their_own_table():
    jobs = plan_jobs(["batched", "onnx"], deploy_regions=50, images=4, batch_size=2)
    assert jobs == [Job("batched", 50, images=4, batch_size=2), Job("onnx", 50)]
    fields = json.loads(job_command(jobs[0], (800, 1066), 2, "cpu")[4])
    assert CaseArgs(**fields).images == 4 and CaseArgs(**fields).batch_size == 2
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        plan_jobs(["batched"], batch_size=0)
    results = [{"case": "batched", "regions": 50, "images": 4, "image_size": "800x1066",
                "batch_size": 2, "one_by_one_img_per_s": 0.1, "batched_img_per_s": 0.125,
                "speedup": 1.25, "max_score_diff": 1e-6, "max_box_diff_px": 2e-4,
                "peak_rss_mb": 900.0},
               {"case": "onnx", "regions": 50, "input_size": "800x1066", "detections": 30,
                "pytorch_ms": 3000.0, "onnxruntime_ms": 2000.0, "max_score_diff": 1e-6,
                "max_box_diff_px": 1e-3, "peak_rss_mb": 1200.0}]
    table = markdown_table(results).splitlines()
    assert ("| batched | 50 | 4 x 800x1066 | one by one 0.100 img/s | batched (2) 0.125 img/s | "
            "1.25x | 1.0e-06 / 2.0e-04 px | 900 |") in table
    assert ("| onnx | 50 | 800x1066 | PyTorch 3000 ms | onnxruntime 2000 ms | 1.50x | "
            "1.0e-06 / 1.0e-03 px | 1200 |") in table
    assert not [ln for ln in table if ln.startswith("| batched | 50 | | |")]  # not in the main one
    assert "deployment case" not in markdown_table(results[:0] + [
        {"case": "roof", "gflops_fp32": 1.0, "gflops_bf16": 1.0, "threads": 1,
         "peak_rss_mb": 1.0}])  # no deployment results: no second table
