"""Session header (what the numeric tolerances depend on) and the device parametrization.

Tests of device-dependent paths take the ``device`` fixture (or use ``DEVICES`` in their own
parametrization): they run on ``cpu`` and on ``cuda``. The ``cuda`` case carries the ``gpu``
marker (``pytest -m gpu`` selects it; ``make test-gpu`` runs it) and is skipped, with the reason,
when ``torch.cuda.is_available()`` is false. While a ``cuda`` case runs, TF32 is off so that
float32 on the GPU is compared with the CPU at float32 accuracy (``tolerance``).
"""
import os
from pathlib import Path

import pytest
import torch

# the checkout's root, for test files and helpers (``from conftest import REPO``)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_PATH = Path(REPO)

NO_CUDA = (f"CUDA is not available (torch {torch.__version__}, built with CUDA "
            f"{torch.version.cuda}): the cuda case runs on a GPU machine (make test-gpu)")

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)],
                 id="cuda"),
]

# float32 results on a device against the same computation on the CPU: different kernels sum in
# different orders (cuDNN convolution algorithms, RoIAlign), so the GPU gets 10x the CPU's
# run-to-run tolerance; with TF32 (the cuDNN default) errors reach 1e-3 and it is switched off.
_TOLERANCE = {"cpu": {"rtol": 1e-4, "atol": 1e-5}, "cuda": {"rtol": 1e-3, "atol": 1e-4}}


def tolerance(device) -> dict:
    """``rtol``/``atol`` for ``torch.testing.assert_close`` of float32 results on ``device``
    against a CPU reference."""
    return dict(_TOLERANCE[torch.device(device).type])


def _use_device(device):
    """Enter ``device`` for one test (cuda: TF32 off); returns the function that restores."""
    if torch.device(device).type != "cuda":
        return lambda: None
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def restore():
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    return restore


@pytest.fixture(params=DEVICES)
def device(request):
    """``"cpu"``, and ``"cuda"`` (marker ``gpu``; skipped without CUDA)."""
    restore = _use_device(request.param)
    yield request.param
    restore()


def pytest_report_header(config):
    capability = torch.backends.cpu.get_cpu_capability()
    try:
        import detectron2

        d2 = detectron2.__version__
    except ImportError:
        d2 = "missing"
    gpus = (", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            if torch.cuda.is_available() else "none")
    return (f"torch {torch.__version__} (CPU kernels: {capability}, {torch.get_num_threads()} "
            f"threads), detectron2 {d2}; parity fixtures were made with AVX512 kernels; "
            f"CUDA devices: {gpus}")
