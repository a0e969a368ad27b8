"""Speed and memory of RegionCLIP on this machine, next to the FLOP roof (``tools/benchmark.py``,
``regionclip-benchmark``; docs/PERFORMANCE.md).

One module per concern:

* :mod:`.timing`: timing (device-synchronised), FLOP counting, peak memory;
* :mod:`.models`: the benchmarked models (packaged configs, random weights with realistic frozen
  BatchNorm statistics) and their inputs;
* :mod:`.cases`: the cases (``roof``, ``zeroshot``, ``train``, ``pretrain``,
  ``batched``, ``onnx``), each a function of a
  :class:`~.cases.CaseArgs` returning one result dict; :data:`~.cases.CASES` names them;
* :mod:`.deploy`: the ``batched`` and ``onnx`` cases' detector and rows (batched against one by
  one detection, onnxruntime against PyTorch);
* :mod:`.original`: the zero-shot case run with the original RegionCLIP code;
* :mod:`.runner`: the jobs of a run, each case in its own process (:mod:`.child`);
* :mod:`.report`: the markdown table of the results.
"""
from .cases import CASES, CaseArgs
from .report import markdown_table
from .runner import Job, plan_jobs, run_jobs

__all__ = ["CASES", "CaseArgs", "Job", "plan_jobs", "run_jobs", "markdown_table"]
