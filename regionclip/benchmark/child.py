"""One benchmark case in this process: ``python -m regionclip.benchmark.child CASE FIELDS_JSON``
prints ``RESULT {json}`` (the runner starts one process per case, so that peak memory is the
case's own)."""
import json
import sys
import tempfile
from typing import Dict, Optional, Sequence

from .cases import CASES, CaseArgs
from .timing import peak_rss_mb

__all__ = ["run_case", "main"]

RESULT = "RESULT "


def run_case(case: str, fields: Dict) -> Dict:
    """Run case ``case`` with the :class:`CaseArgs` ``fields`` (a scratch folder is made); the
    result gets this process's peak memory (unless the case measured it: zero-shot takes it after
    the whole model's run, before its part measurements) and, on a GPU, its peak GPU memory and
    name."""
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; choose from {sorted(CASES)}")
    with tempfile.TemporaryDirectory() as tmp:
        args = CaseArgs(**dict(fields, tmp=tmp))
        result = CASES[case](args)
    result.setdefault("peak_rss_mb", peak_rss_mb())  # a case may measure its own part
    if args.device != "cpu":
        import torch

        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        result["gpu"] = torch.cuda.get_device_name()
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    case, fields = list(sys.argv[1:] if argv is None else argv)
    print(RESULT + json.dumps(run_case(case, json.loads(fields))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
