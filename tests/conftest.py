"""Session header: what the numeric tolerances of the suite depend on (CPU kernels, versions)."""


def pytest_report_header(config):
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    try:
        import detectron2

        d2 = detectron2.__version__
    except ImportError:
        d2 = "missing"
    return (f"torch {torch.__version__} (CPU kernels: {capability}, {torch.get_num_threads()} "
            f"threads), detectron2 {d2}; parity fixtures were made with AVX512 kernels")
