#!/usr/bin/env python
"""Check a GPU machine in one go (``make test-gpu``): the GPU tests, then the GPU benchmark.

    python tools/gpu_check.py [--report output/gpu/report.md] [--json output/gpu/benchmark.json]

1. No CUDA device: says so (with what torch and ``nvidia-smi`` see) and exits with status 2.
2. ``pytest -m gpu``: the ``cuda`` cases of the device-parametrized tests (inference equal to the
   CPU's, bf16/fp16 inference, soft-NMS, the API, transfer and pretraining steps with and without
   AMP) and the multi-GPU test (NCCL, skipped with fewer than 2 GPUs).
3. ``tools/benchmark.py --device cuda``: zero-shot RN50 at 800x1216 with 100/300/1000 regions in
   fp32 and fp16, a transfer and a pretraining step, matmul roofs, peak GPU memory.

The report (GPU, versions, test summary, benchmark table, the time of each stage) goes to
``--report``; the exit status is 0 only if both stages succeeded. It finishes in under 5 minutes:
the tests get at most ``--test-timeout`` seconds, the benchmark the rest of ``--budget``; a stage
that runs out of time fails the check.
"""
import argparse
import datetime
import os
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_GPU_STATUS = 2
BENCHMARK_ARGS = ["--cases", "roof,zeroshot,train,pretrain", "--regions", "100", "300", "1000",
                  "--chunk", "0", "--dtype", "float32", "float16", "--repeats", "2"]


def _nvidia_smi() -> str:
    if not shutil.which("nvidia-smi"):
        return "nvidia-smi not found"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi failed: {e}"
    text = out.stdout.strip() or out.stderr.strip() or "nvidia-smi printed nothing"
    return text.replace("\n", "; ")


def gpu_description():
    """(True, lines describing the GPUs) or (False, why no GPU can be used)."""
    import torch

    build = f"torch {torch.__version__}, built with CUDA {torch.version.cuda}"
    if not torch.cuda.is_available():
        smi = _nvidia_smi()
        hint = ("" if smi.startswith("nvidia-smi not found") else
                " A driver answers, so this torch build may not match it: install the torch "
                "wheel for this driver (TORCH_SPEC=..., docs/INSTALL.md).")
        return False, (f"No GPU is present: torch.cuda.is_available() is False ({build}; "
                       f"{smi}). make test-gpu needs a machine with an NVIDIA GPU.{hint}")
    lines = [build + f", cuDNN {torch.backends.cudnn.version()}"]
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        lines.append(f"cuda:{i}: {props.name}, {props.total_memory / 2 ** 30:.1f} GiB, "
                     f"compute capability {props.major}.{props.minor}")
    lines.append(_nvidia_smi())
    return True, lines


def _run(cmd, timeout):
    """(status, output, seconds) of ``cmd`` in the repository; status None on timeout, when the
    command and every process it started (the benchmark's cases) are killed."""
    start = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout)
            status = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            status = None
            output += f"\n[timed out after {timeout:.0f} s]"
    return status, output, time.perf_counter() - start


def _tail(text, lines):
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _table(benchmark_output):
    """The benchmark's markdown table (and device line) from its stdout."""
    keep = [ln for ln in benchmark_output.splitlines() if ln.startswith(("|", "device:"))]
    return "\n".join(keep) if keep else _tail(benchmark_output, 40)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", default=os.path.join(REPO, "output", "gpu", "report.md"))
    parser.add_argument("--json", default=os.path.join(REPO, "output", "gpu", "benchmark.json"))
    parser.add_argument("--budget", type=float, default=290.0, help="seconds for both stages")
    parser.add_argument("--test-timeout", type=float, default=150.0, help="seconds for the tests")
    args = parser.parse_args(argv)
    ok, description = gpu_description()
    if not ok:
        print(f"[test-gpu] {description}", file=sys.stderr)
        return NO_GPU_STATUS
    print("[test-gpu] " + "\n[test-gpu] ".join(description))
    print("[test-gpu] 1/2 pytest -m gpu ...", flush=True)
    test_status, test_out, test_s = _run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-rs", "-q", "-p", "no:cacheprovider"],
        min(args.test_timeout, args.budget))
    print(_tail(test_out, 15))
    print("[test-gpu] 2/2 tools/benchmark.py --device cuda ...", flush=True)
    bench_status, bench_out, bench_s = _run(
        [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--device", "cuda",
         *BENCHMARK_ARGS, "--json", args.json], max(args.budget - test_s, 1.0))
    table = _table(bench_out) if bench_status == 0 else _tail(bench_out, 40)
    print(table)

    def verdict(status):
        if status is None:
            return "timed out"
        return "passed" if status == 0 else f"FAILED ({status})"

    passed = test_status == 0 and bench_status == 0
    report = [
        f"# GPU check ({datetime.datetime.now():%Y-%m-%d %H:%M})", "",
        *[f"- {line}" for line in description], "",
        f"## Tests: `pytest -m gpu`: {verdict(test_status)} ({test_s:.0f} s)", "",
        "```", _tail(test_out, 60), "```", "",
        f"## Benchmark: `tools/benchmark.py --device cuda {' '.join(BENCHMARK_ARGS)}`: "
        f"{verdict(bench_status)} ({bench_s:.0f} s, results also in {args.json})", "",
        table, "",
        f"Total: {test_s + bench_s:.0f} s. Overall: {'PASSED' if passed else 'FAILED'}.", ""]
    os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
    with open(args.report, "w") as f:
        f.write("\n".join(report))
    print(f"[test-gpu] {'PASSED' if passed else 'FAILED'}; report: {args.report}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
