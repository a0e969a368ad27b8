"""Independent jobs of a stage in parallel processes.

Stage 5 fine-tunes three detectors (from the teacher, from the student, the oracle) that do not
depend on each other. With ``WORKERS: 2`` they run in two processes of ``NUM_THREADS / WORKERS``
(at least one) torch threads each: on two cores shared with other work, one-thread processes stay
fast where a two-thread process slows down many times (docs/TOYWORLD.md). Every job is seeded the
same way in either mode, so a job's numbers depend on its thread count, not on the mode.
"""
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, List, Sequence

__all__ = ["job_threads", "run_jobs"]


def job_threads(settings) -> int:
    """Torch threads of one job: ``NUM_THREADS / WORKERS`` (at least 1), or 0 (torch's default)
    when ``NUM_THREADS`` is 0."""
    if not settings.NUM_THREADS:
        return 0
    return max(1, int(settings.NUM_THREADS) // max(1, int(settings.WORKERS)))


def _start():
    import logging

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s",
                        datefmt="%H:%M:%S")


def run_jobs(settings, fn: Callable, jobs: Sequence[tuple]) -> List:
    """``[fn(*job) for job in jobs]``, in ``settings.WORKERS`` processes when more than one.

    ``fn`` must be a module-level function and its arguments picklable. Before each job the
    process is seeded with ``settings.SEED`` and set to :func:`job_threads` threads, so sequential
    and parallel runs give the same results.
    """
    from .common import seed_everything

    threads = job_threads(settings)
    workers = min(int(settings.WORKERS), len(jobs))
    if workers <= 1:
        results = []
        for job in jobs:
            seed_everything(settings.SEED, threads, settings.DETERMINISTIC)
            results.append(fn(*job))
        seed_everything(settings.SEED, settings.NUM_THREADS, settings.DETERMINISTIC)
        return results
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start) as pool:
        futures = [pool.submit(_seeded, settings.SEED, threads, settings.DETERMINISTIC, fn, job)
                   for job in jobs]
        return [f.result() for f in futures]


def _seeded(seed: int, threads: int, deterministic: bool, fn: Callable, job: tuple):
    from .common import seed_everything

    seed_everything(seed, threads, deterministic)
    return fn(*job)
