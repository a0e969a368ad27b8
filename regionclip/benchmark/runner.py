"""The jobs of a benchmark run, each run in its own process (peak memory = that process's max
RSS): :mod:`.child` for this package's cases, :mod:`.original` (by path) for the original's."""
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

from .cases import CASES

__all__ = ["Job", "CASE_NAMES", "plan_jobs", "job_command", "run_job", "run_jobs"]

CASE_NAMES = sorted(CASES) + ["original"]


@dataclass(frozen=True)
class Job:
    """One case to run: its name and the :class:`~.cases.CaseArgs` fields that vary."""

    case: str
    num_regions: int = 0
    chunk: int = 0
    dtype: str = "float32"
    images: int = 16
    batch_size: int = 8


def plan_jobs(cases: Sequence[str], regions: Sequence[int] = (100, 300, 1000),
              train_regions: int = 128, chunks: Sequence[int] = (0, 128),
              dtypes: Sequence[str] = ("float32",), original: bool = False,
              deploy_regions: int = 100, images: int = 16, batch_size: int = 8) -> List[Job]:
    """The jobs of ``cases``: ``zeroshot`` for every number of regions x chunk x dtype (and, with
    ``original``, the original's zero-shot for every number of regions), ``train`` with
    ``train_regions``, ``pretrain`` with 100 regions, ``batched`` (``images`` generated images,
    ``batch_size`` per call) and ``onnx`` with ``deploy_regions`` RPN regions, ``roof`` once."""
    jobs = []
    for case in cases:
        if case not in CASE_NAMES:
            raise ValueError(f"unknown case {case!r}; choose from {CASE_NAMES}")
        if case == "zeroshot":
            jobs += [Job(case, n, c, d) for n in regions for c in chunks for d in dtypes]
            if original:
                jobs += [Job("original", n) for n in regions]
        elif case == "original":
            jobs += [Job("original", n) for n in regions]
        elif case == "train":
            jobs.append(Job(case, train_regions))
        elif case == "pretrain":
            jobs.append(Job(case, 100))
        elif case == "batched":
            if images < 1 or batch_size < 1:
                raise ValueError(f"--images and --batch-size must be >= 1, got {images} and "
                                 f"{batch_size}")
            jobs.append(Job(case, deploy_regions, images=images, batch_size=batch_size))
        elif case == "onnx":
            jobs.append(Job(case, deploy_regions))
        else:
            jobs.append(Job(case))
    return jobs


def _pythonpath() -> str:
    """PYTHONPATH for a child: this package's parent folder first, so that it imports the same
    ``regionclip`` as this process."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    rest = os.environ.get("PYTHONPATH")
    return here + (os.pathsep + rest if rest else "")


def job_command(job: Job, size: Sequence[int], repeats: int, device: str,
                original: Optional[str] = None) -> List[str]:
    """The command line running ``job`` in a new process."""
    fields = {k: v for k, v in asdict(job).items() if k != "case"}
    fields.update(size=list(size), repeats=repeats, device=device)
    if job.case == "original":
        if not original:
            raise ValueError("the 'original' case needs a checkout of microsoft/RegionCLIP "
                             "(--original CHECKOUT)")
        fields.update(original=original, device="cpu")
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "original.py")
        return [sys.executable, script, json.dumps(fields)]
    return [sys.executable, "-m", "regionclip.benchmark.child", job.case, json.dumps(fields)]


def run_job(job: Job, size: Sequence[int], repeats: int, device: str,
            original: Optional[str] = None) -> Dict:
    """Run ``job`` in a new process and return its result.

    Raises:
        RuntimeError: the case failed (with the end of its stderr).
    """
    cmd = job_command(job, size, repeats, device, original)
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"benchmark case {job.case} ({job.num_regions} regions) failed:\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def run_jobs(jobs: Sequence[Job], size: Sequence[int] = (800, 1216), repeats: int = 2,
             device: str = "cpu", original: Optional[str] = None,
             progress: bool = True) -> List[Dict]:
    """:func:`run_job` of each job in turn (with a tqdm progress bar when ``progress`` and tqdm is
    installed)."""
    iterator = jobs
    if progress:
        try:
            from tqdm import tqdm

            iterator = tqdm(jobs, desc="benchmark", unit="case")
        except ImportError:
            pass
    return [run_job(job, size, repeats, device, original) for job in iterator]
