"""The zero-shot case run with the original RegionCLIP code (``--original CHECKOUT``).

Run as a script, by path (``python .../regionclip/benchmark/original.py FIELDS_JSON``), never
imported with the package: the original's fork of detectron2 must be the first detectron2 the
process imports, and ``import regionclip`` would import ours. It puts the fork first on
``sys.path`` with the import shims of the checkout's ``tests/parity/generate_fixtures.py`` (none
changes a computation), so it needs this project's checkout as well as the original's; it loads
:mod:`.timing` and :mod:`.models` by path (they import nothing of either detectron2 at module
level). Prints ``RESULT {json}`` as :mod:`.child`.
"""
import importlib.util
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.abspath(__file__)


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parity_generator_path() -> str:
    """``tests/parity/generate_fixtures.py`` of the checkout this file is in."""
    path = os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests", "parity",
                        "generate_fixtures.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the 'original' case needs this project's checkout (its {path} "
                                f"installs the original's import shims); run it from a checkout")
    return path


def case_zeroshot_original(fields: dict, tmp: str) -> dict:
    """The zero-shot workload of ``cases.case_zeroshot`` (whole model only), original code."""
    timing = _load("regionclip_benchmark_timing", os.path.join(HERE, "timing.py"))
    models = _load("regionclip_benchmark_models", os.path.join(HERE, "models.py"))
    _load("parity_generator", parity_generator_path()).install_shims(fields["original"])
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    emb = os.path.join(tmp, "emb65.pth")
    torch.save(torch.randn(65, 1024), emb)
    h, w = fields["size"]
    n = fields["num_regions"]
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(fields["original"], "configs", models.ZS_CONFIG))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.CLIP.CROP_REGION_TYPE", "GT",
                         "MODEL.CLIP.TEXT_EMB_PATH", emb, "INPUT.MIN_SIZE_TEST", str(h),
                         "INPUT.MAX_SIZE_TEST", str(w)])
    model = build_model(cfg)
    models.realistic_random_weights(model)
    model.eval()
    inputs = models.zeroshot_inputs(n, (h, w))
    with torch.no_grad():
        seconds = timing.timeit(lambda: model(inputs), fields["repeats"], "cpu")
        flops = timing.count_flops(lambda: model(inputs))
    return {"case": f"original_zeroshot_{n}", "regions": n, "chunk": "", "seconds": seconds,
            "gflop": flops / 1e9, "peak_rss_mb": timing.peak_rss_mb()}


def main(argv=None) -> int:
    (fields,) = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory() as tmp:
        result = case_zeroshot_original(json.loads(fields), tmp)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
