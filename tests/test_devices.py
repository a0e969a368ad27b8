"""Every device-dependent path on every available device, and proof that the device comes from
the config (``MODEL.DEVICE``) and never from a hard-coded choice.

The ``cuda`` cases (marker ``gpu``) are skipped without CUDA; on a CPU machine the config is
shown to decide by (a) a machine that has (or pretends to have: ``torch.cuda.is_available()``
True, any CUDA initialisation an error) a GPU running everything with ``MODEL.DEVICE cpu``, (b) a
non-CPU device available everywhere (``meta``) that every part of the models follows, and (c)
CUDA asked for without a GPU, or mixed precision without CUDA, refused with the key named.
"""
import os
import subprocess
import sys
import time

import numpy as np
import ovd_world
import pytest
import torch
from _image_text_data import captions_field, make_samples, write_tsv_pair
from conftest import NO_CUDA, tolerance
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from ovd_world import BASE, REPO, make_ovd_coco_tree, write_embeddings
from test_pretrain_model import DIM, PRETRAIN_YAML, TEACHER_DIM, _arch_json
from tiny_clip import TINY_OPTS, write_tiny_clip
from tiny_detector import CUSTOM, tiny_detector_opts, write_images

from detectron2_ext.engine.launch import choose_backend
from detectron2_ext.utils import checked_autocast, process_device, resolve_device
from regionclip import RegionCLIP, add_regionclip_config
from regionclip.config import load_config
from regionclip.engine import Trainer

TRANSFER_CFG = os.path.join(REPO,
                            "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd.yaml")
VOCAB = ["red square", "blue circle", "cat"]
CUDA_ONLY = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]


# ----------------------------------------------------------------- helpers


def _placement(module):
    """The set of device types of every parameter and buffer of ``module``."""
    return {t.device.type for t in list(module.parameters()) + list(module.buffers())}


def assert_same_detections(got, ref, tol):
    """Detections (API dicts) equal up to ``tol``: the same number, and each reference detection
    has one of the same label, box and score (order may differ where scores tie)."""
    assert len(got) == len(ref), (len(got), len(ref))
    unused = list(got)
    for r in ref:
        match = next((g for g in unused if g["label"] == r["label"]
                      and np.allclose(g["box"], r["box"], rtol=tol["rtol"], atol=tol["atol"] * 1e3)
                      and abs(g["score"] - r["score"]) <= tol["atol"] + tol["rtol"] * r["score"]),
                     None)
        assert match is not None, f"no detection like {r} in {unused}"
        unused.remove(match)


@pytest.fixture
def cuda_watch(monkeypatch):
    """A machine with a GPU on which CUDA must stay unused; yields ``check()``, which fails if
    CUDA was used since the fixture began.

    With a real GPU the allocator's peak counters are watched. Without one, the fixture
    pretends a GPU (``torch.cuda.is_available()`` answers True) and any CUDA initialisation
    fails at once, so code that picks CUDA on its own instead of following the config breaks.
    """
    if torch.cuda.is_available():
        base = []
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)
            torch.cuda.reset_peak_memory_stats(i)
            base.append(torch.cuda.memory_allocated(i))

        def check():
            peaks = [torch.cuda.max_memory_allocated(i) for i in range(len(base))]
            assert peaks == base, f"CUDA memory was used: peaks {peaks}, before {base}"

        yield check
        return

    def touched(*args, **kwargs):
        raise AssertionError("CUDA was initialised although the config says MODEL.DEVICE cpu")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "_lazy_init", touched)
    yield lambda: None  # any use has raised already


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("devices")
    opts, weights = tiny_detector_opts(str(root))
    i = opts.index("MODEL.DEVICE")
    del opts[i:i + 2]  # every test gives the device itself
    image = write_images(str(root / "images"), [("scene.png", (96, 128))])[0]
    return {"root": root, "opts": opts, "weights": weights, "image": image}


def _detector(files, device, *extra):
    torch.manual_seed(0)  # the offline RPN has random weights
    return RegionCLIP.from_config(CUSTOM, weights=files["weights"], device=device,
                                  opts=files["opts"] + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.01",
                                                        *extra])


# ----------------------------------------------------------------- inference and the API


@pytest.mark.parametrize("nms", ["hard", "soft"])
def test_detection_on_device_equals_the_cpu_result(tiny_files, device, nms):
    """Through the API: RPN regions, region embeddings, classification and (soft-)NMS on
    ``device`` give the CPU's detections, and region, crop and text embeddings the CPU's, within
    ``tolerance(device)``."""
    extra = ["MODEL.ROI_HEADS.SOFT_NMS_ENABLED", str(nms == "soft")]
    cpu = _detector(tiny_files, "cpu", *extra)
    rc = _detector(tiny_files, device, *extra)
    rc.model.load_state_dict(cpu.model.state_dict())  # the same weights whatever the RNG
    assert _placement(rc.model) == {torch.device(device).type}
    image = tiny_files["image"]
    got, ref = rc.detect(image, VOCAB), cpu.detect(image, VOCAB)
    assert len(ref) >= 3
    assert_same_detections(got, ref, tolerance(device))
    boxes = [d["box"] for d in ref[:4]]
    emb, ref_emb = rc.encode_regions(image, boxes), cpu.encode_regions(image, boxes)
    assert emb.device.type == torch.device(device).type and emb.dtype == torch.float32
    torch.testing.assert_close(emb.cpu(), ref_emb, **tolerance(device))
    crops = rc.encode_crops(image, boxes)
    assert crops.device.type == torch.device(device).type
    torch.testing.assert_close(crops.cpu(), cpu.encode_crops(image, boxes), **tolerance(device))
    text = rc.encode_text(VOCAB)
    assert text.device.type == torch.device(device).type
    torch.testing.assert_close(text.cpu(), cpu.encode_text(VOCAB), **tolerance(device))


def test_detection_comparison_tells_detections_apart():
    """Negative control of ``assert_same_detections``: a moved box or a changed score fails."""
    ref = [{"label": "cat", "box": [10.0, 10.0, 50.0, 40.0], "score": 0.6},
           {"label": "cat", "box": [60.0, 10.0, 90.0, 40.0], "score": 0.5}]
    tol = tolerance("cuda")
    assert_same_detections(list(reversed(ref)), ref, tol)
    for change in ({"box": [10.0, 10.0, 51.0, 40.0]}, {"score": 0.61}, {"label": "dog"}):
        with pytest.raises(AssertionError):
            assert_same_detections([dict(ref[0], **change), ref[1]], ref, tol)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_lower_precision_inference_on_device(tiny_files, device, dtype):
    """``MODEL.CLIP.INFERENCE_DTYPE`` autocasts on the model's device: region embeddings stay
    within 1% cosine of float32 (the bf16 test of test_inference_options measured 0.999), yet
    are not float32's (the mode is really on)."""
    if device == "cuda" and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    full = _detector(tiny_files, device)
    low = _detector(tiny_files, device, "MODEL.CLIP.INFERENCE_DTYPE", dtype)
    low.model.load_state_dict(full.model.state_dict())
    boxes = [[4, 4, 60, 50], [50, 30, 120, 90], [0, 0, 128, 96]]
    image = tiny_files["image"]
    a, b = full.encode_regions(image, boxes), low.encode_regions(image, boxes)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert cos.min() > 0.99, cos
    assert not torch.equal(a, b)
    dets = low.detect(image, VOCAB)
    assert dets and all(np.isfinite(d["score"]) for d in dets)


def test_unsupported_autocast_dtype_is_an_error_not_float32(tiny_files, monkeypatch):
    """Where torch cannot autocast to the dtype (it warns and disables autocast, e.g. float16 on
    the CPU of older torch), inference fails with the key named instead of silently running
    float32."""
    with pytest.raises(ValueError, match="KEY: torch .* not support autocast to torch.float64"):
        checked_autocast("cpu", torch.float64, "KEY")
    assert checked_autocast("cpu", torch.bfloat16, "KEY").fast_dtype == torch.bfloat16
    rc = _detector(tiny_files, "cpu", "MODEL.CLIP.INFERENCE_DTYPE", "float16")
    rc.encode_regions(tiny_files["image"], [[0, 0, 64, 64]])  # supported by this torch
    real = torch.autocast

    def old_torch_autocast(device_type, dtype=None, enabled=True, **kw):  # torch < 2.3 on CPU
        if device_type == "cpu" and dtype == torch.float16:
            import warnings
            warnings.warn("In CPU autocast, but the target dtype is not supported. Disabling "
                          "autocast.")
            enabled = False
        return real(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(torch, "autocast", old_torch_autocast)
    with pytest.raises(ValueError, match="MODEL.CLIP.INFERENCE_DTYPE: .*torch.float16 on cpu"):
        rc.encode_regions(tiny_files["image"], [[0, 0, 64, 64]])
    with pytest.raises(ValueError, match="MODEL.CLIP.INFERENCE_DTYPE"):
        rc.detect(tiny_files["image"], VOCAB)


# ----------------------------------------------------------------- training


@pytest.fixture(scope="module")
def ovd(tmp_path_factory):
    root = tmp_path_factory.mktemp("ovd_devices")
    make_ovd_coco_tree(str(root), num_train=4, num_val=2)
    arch, weights = write_tiny_clip(str(root))
    return {"root": root, "arch": arch, "weights": weights,
            "base": write_embeddings(str(root / "base.pth"), len(BASE), dim=64)}


def _transfer_cfg(ovd, out, device, amp=False):
    opts = ovd_world.SMALL + TINY_OPTS + [
        "MODEL.DEVICE", device, "SOLVER.AMP.ENABLED", str(amp), "MODEL.CLIP.ARCH", ovd["arch"],
        "MODEL.WEIGHTS", ovd["weights"], "MODEL.CLIP.CROP_REGION_TYPE", "GT",
        "MODEL.ROI_HEADS.NUM_CLASSES", str(len(BASE)), "MODEL.CLIP.TEXT_EMB_PATH", ovd["base"],
        "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "1000",
        "OUTPUT_DIR", str(out)]
    return load_config(TRANSFER_CFG, opts, cpu_fallback=False)


def _train_and_check(trainer, device):
    trainer.resume_or_load(resume=False)
    model = trainer.model
    assert _placement(model) == {torch.device(device).type}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    totals = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(totals) == trainer.max_iter and all(np.isfinite(totals)), totals
    changed = any(not torch.equal(p.detach(), trainable[n])
                  for n, p in model.named_parameters() if n in trainable)
    scaler = getattr(trainer._trainer, "grad_scaler", None)
    # with AMP every step may be skipped while the gradient scaler backs off from overflow
    assert changed or (scaler is not None and scaler.get_scale() < 65536.0)
    return totals


TRAIN_CASES = [pytest.param("cpu", False, id="cpu"),
               pytest.param("cuda", False, id="cuda", marks=CUDA_ONLY),
               pytest.param("cuda", True, id="cuda-amp", marks=CUDA_ONLY)]


@pytest.mark.parametrize("device,amp", TRAIN_CASES)
def test_transfer_training_steps_on_device(ovd, tmp_path, monkeypatch, device, amp):
    monkeypatch.chdir(ovd["root"])
    trainer = Trainer(_transfer_cfg(ovd, tmp_path, device, amp))
    assert type(trainer._trainer).__name__ == ("AMPTrainer" if amp else "SimpleTrainer")
    _train_and_check(trainer, device)


def _pretrain_cfg(tmp_path, device, amp=False):
    samples = make_samples(4, captions_per_sample=1)
    write_tsv_pair(str(tmp_path / "data"), "train.image.tsv", "train.text.tsv",
                   [(k, img, captions_field(caps)) for k, img, caps in samples])
    g = torch.Generator().manual_seed(0)
    torch.save(torch.randn(12, DIM, generator=g), tmp_path / "pool.pth")
    torch.save(torch.randn(12, TEACHER_DIM, generator=g), tmp_path / "teacher_pool.pth")
    cfg = get_cfg()
    add_regionclip_config(cfg)
    cfg.merge_from_file(PRETRAIN_YAML)
    cfg.merge_from_list([
        "MODEL.DEVICE", device, "SOLVER.AMP.ENABLED", str(amp),
        "MODEL.CLIP.CROP_REGION_TYPE", "RANDOM", "MODEL.CLIP.PRETRAIN_SAMPLE_REGIONS", "3",
        "MODEL.CLIP.ARCH", _arch_json(tmp_path / "student.json", DIM),
        "MODEL.CLIP.TEACHER_ARCH", _arch_json(tmp_path / "teacher.json", TEACHER_DIM),
        "MODEL.CLIP.CONCEPT_POOL_EMB", str(tmp_path / "pool.pth"),
        "MODEL.CLIP.TEACHER_CONCEPT_POOL_EMB", str(tmp_path / "teacher_pool.pth"),
        "DATASETS.PATH_TRAIN", f"('{tmp_path / 'data'}',)",
        "DATASETS.FACTORY_TRAIN", "('CLIPImgTxtPairTSVDataset',)",
        "AUG.TRAIN.IMAGE_SIZE", "[64]", "AUG.TRAIN.MAX_SIZE", "96",
        "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "3", "SOLVER.BASE_LR", "0.003",
        "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "1000",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out"), "SEED", "1"])
    return cfg


@pytest.mark.parametrize("device,amp", TRAIN_CASES)
def test_pretraining_steps_on_device(tmp_path, device, amp):
    trainer = Trainer(_pretrain_cfg(tmp_path, device, amp))
    assert type(trainer._trainer).__name__ == ("AMPTrainer" if amp else "SimpleTrainer")
    _train_and_check(trainer, device)
    last = trainer.storage.latest()
    assert {"loss_img_txt_level", "loss_region_distill", "loss_concept_contrastive"} <= set(last)


def test_mixed_precision_is_refused_off_cuda(ovd, tmp_path, monkeypatch):
    """``SOLVER.AMP.ENABLED True`` with ``MODEL.DEVICE cpu``: a clear error before any model is
    built (detectron2's AMPTrainer would fail at its first step); without AMP the same config
    trains (previous tests)."""
    monkeypatch.chdir(ovd["root"])
    built = []
    monkeypatch.setattr(Trainer, "build_model", classmethod(lambda cls, cfg: built.append(cfg)))
    for cfg in (_transfer_cfg(ovd, tmp_path, "cpu", amp=True),
                _pretrain_cfg(tmp_path, "cpu", amp=True)):
        with pytest.raises(ValueError, match=r"SOLVER.AMP.ENABLED True needs a CUDA device, but "
                                             r"MODEL.DEVICE is 'cpu'.*SOLVER.AMP.ENABLED False"):
            Trainer(cfg)
    assert built == []


# ----------------------------------------------------------------- the config decides


def test_cuda_watch_catches_cuda_use(cuda_watch):
    """Negative control of the ``cuda_watch`` fixture."""
    with pytest.raises(AssertionError, match="CUDA"):
        torch.zeros(1, device="cuda")
        cuda_watch()


def test_everything_follows_model_device_cpu_on_a_gpu_machine(cuda_watch, tiny_files, ovd,
                                                              tmp_path, monkeypatch):
    """With a GPU present (real or pretended) and ``MODEL.DEVICE cpu``: inference, the API, a
    training step, pretraining and the launch backend all stay on the CPU; CUDA is never used."""
    rc = _detector(tiny_files, None, "MODEL.DEVICE", "cpu")
    assert rc.device.type == "cpu" and rc.detect(tiny_files["image"], VOCAB)
    monkeypatch.chdir(ovd["root"])
    _train_and_check(Trainer(_transfer_cfg(ovd, tmp_path / "t", "cpu")), "cpu")
    _train_and_check(Trainer(_pretrain_cfg(tmp_path, "cpu")), "cpu")
    train_net = ovd_world.load_train_net()
    assert train_net.launch_backend(resolve_device("cpu")) == "gloo"
    assert train_net.launch_backend(resolve_device("cuda")) == "nccl"  # (does not touch CUDA)
    cuda_watch()


def test_models_are_built_on_the_configured_device_meta(tiny_files, tmp_path):
    """``meta``, a non-CPU device every machine has: every parameter and buffer of both
    meta-architectures (text embeddings, loss weights and concept pools included) goes there,
    and inputs are moved there; a tensor left on the CPU by hard-coded code would show."""
    cfg = load_config(CUSTOM, tiny_files["opts"] + ["MODEL.DEVICE", "meta"], cpu_fallback=False)
    cfg.MODEL.CLIP.GET_CONCEPT_EMB = True
    emb = tmp_path / "emb.pth"
    torch.save(torch.randn(3, 64), emb)
    cfg.MODEL.CLIP.TEXT_EMB_PATH, cfg.MODEL.ROI_HEADS.NUM_CLASSES = str(emb), 3
    model = build_model(cfg)
    assert _placement(model) == {"meta"}
    assert model.roi_heads.box_predictor.cls_score.weight.device.type == "meta"
    inputs = [{"image": torch.zeros(3, 64, 96, dtype=torch.uint8)}]
    images = model.preprocess_image(inputs)
    assert images.tensor.device.type == "meta"
    assert model.backbone(images.tensor)["res4"].device.type == "meta"
    pretrain = build_model(_pretrain_cfg(tmp_path, "meta"))
    assert _placement(pretrain) == {"meta"}
    assert pretrain.concept_emb.device.type == pretrain.teacher_concept_emb.device.type == "meta"
    # negative control: the same build with MODEL.DEVICE cpu is all on the CPU
    assert _placement(build_model(_pretrain_cfg(tmp_path, "cpu"))) == {"cpu"}


def test_cuda_without_a_gpu_is_an_error_naming_the_key(tiny_files, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="MODEL.DEVICE is 'cuda' but CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="device is 'cuda:1' but CUDA is not available"):
        _detector(tiny_files, "cuda:1")
    with pytest.raises(ValueError, match="'gpu' is not a device name"):
        resolve_device("gpu")
    # the config's cuda, not given explicitly, falls back to the CPU (as tools/train_net.py)
    assert _detector(tiny_files, None, "MODEL.DEVICE", "cuda").device.type == "cpu"


def test_one_gpu_per_process_from_the_local_rank(monkeypatch):
    from detectron2.utils import comm

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert process_device("cuda:1") == "cuda:1"  # one process: as given
    with pytest.raises(ValueError, match=r"'cuda:2' but only 2 GPU\(s\) are visible"):
        process_device("cuda:2")
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "get_local_rank", lambda: 1)
    assert process_device("cuda") == "cuda:1"
    assert process_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="uses the GPU of its local rank"):
        process_device("cuda:0")


def test_launch_backend_follows_the_device_not_the_machine(monkeypatch):
    assert choose_backend("gloo", 2) == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_backend(None, 2) == "gloo"
    with pytest.raises(ValueError, match="2 processes per machine on CUDA .NCCL. need as many "
                                         "GPUs, 0 visible"):
        choose_backend("nccl", 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert choose_backend(None, 1) == "nccl"  # detectron2's choice when nothing is said
    assert choose_backend("gloo", 4) == "gloo"  # CPU processes on a GPU machine: more than GPUs
    with pytest.raises(ValueError, match="2 processes per machine on CUDA"):
        choose_backend("nccl", 2)
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend("mpi", 2)


# ----------------------------------------------------------------- several GPUs


@pytest.mark.gpu
@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs, "
                    f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} visible")
def test_two_gpus_train_through_the_cli_with_nccl_one_gpu_each(ovd, tmp_path):
    from multiproc import rendezvous_url

    cfg_opts = [v for v in ovd_world.SMALL]
    cfg_opts[cfg_opts.index("MODEL.DEVICE") + 1] = "cuda"
    cmd = [sys.executable, os.path.join(REPO, "tools/train_net.py"), "--config-file", TRANSFER_CFG,
           "--num-gpus", "2", "--dist-url", rendezvous_url(str(tmp_path))] + cfg_opts + [
        *TINY_OPTS,
        "MODEL.CLIP.ARCH", ovd["arch"], "MODEL.WEIGHTS", ovd["weights"],
        "MODEL.CLIP.CROP_REGION_TYPE", "GT", "MODEL.ROI_HEADS.NUM_CLASSES", str(len(BASE)),
        "MODEL.CLIP.TEXT_EMB_PATH", ovd["base"], "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "2",
        "SOLVER.CHECKPOINT_PERIOD", "1000", "OUTPUT_DIR", str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(cmd, cwd=ovd["root"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert (tmp_path / "model_final.pth").is_file()
    assert "Process rank 0 of 2 computes on cuda:0 (process group: nccl)" in \
        (tmp_path / "log.txt").read_text()
    assert "Process rank 1 of 2 computes on cuda:1 (process group: nccl)" in \
        (tmp_path / "log.txt.rank1").read_text()


# ----------------------------------------------------------------- make test-gpu


def _gpu_check():
    import importlib.util

    path = os.path.join(REPO, "tools/gpu_check.py")
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_test_gpu_without_a_gpu_says_so_and_fails(tmp_path):
    """The real make target (its install step satisfied by a fresh stamp) with no visible GPU."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    (venv / ".regionclip-installed").touch()  # newer than pyproject.toml: install is a no-op
    report = tmp_path / "report.md"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO)
    proc = subprocess.run(["make", "-s", "test-gpu", f"VENV={venv}", f"GPU_REPORT={report}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "[test-gpu] No GPU is present: torch.cuda.is_available() is False" in proc.stderr
    assert "make test-gpu needs a machine with an NVIDIA GPU" in proc.stderr
    assert not report.exists()


@pytest.mark.parametrize("test_status", [0, 1])
def test_gpu_check_runs_the_gpu_tests_and_benchmark_into_a_report(tmp_path, monkeypatch,
                                                                 test_status):
    """With a (pretended) GPU: ``pytest -m gpu`` and the benchmark on cuda run, the report holds
    both, and a failing test fails the check."""
    gpu_check = _gpu_check()
    calls = []

    def fake_run(cmd, timeout):
        calls.append((cmd, timeout))
        if "pytest" in cmd:
            return test_status, "27 passed, 1 skipped\n", 100.0
        return 0, ("noise\ndevice: Fake GPU\n\n| case | regions |\n|---|---|\n"
                   "| zeroshot_100_fp16 | 100 |\n"), 120.0

    monkeypatch.setattr(gpu_check, "gpu_description", lambda: (True, ["cuda:0: Fake GPU"]))
    monkeypatch.setattr(gpu_check, "_run", fake_run)
    report = tmp_path / "r" / "report.md"
    status = gpu_check.main(["--report", str(report), "--json", str(tmp_path / "b.json")])
    assert status == test_status
    (tests, test_limit), (bench, bench_limit) = calls
    assert test_limit == 150 and bench_limit == 290 - 100  # the whole check within 5 minutes
    assert tests[1:] == ["-m", "pytest", "-m", "gpu", "-rs", "-q", "-p", "no:cacheprovider"]
    assert bench[1].endswith("benchmark.py") and bench[2:4] == ["--device", "cuda"]
    assert "--regions 100 300 1000" in " ".join(bench) and "float32 float16" in " ".join(bench)
    text = report.read_text()
    assert "- cuda:0: Fake GPU" in text and "27 passed, 1 skipped" in text
    assert "| zeroshot_100_fp16 | 100 |" in text and "noise" not in text
    assert text.rstrip().endswith("Overall: PASSED." if test_status == 0 else "Overall: FAILED.")


def test_gpu_check_stage_out_of_time_is_killed_with_its_children():
    """A stage over its time limit ends at once, the processes it started too (a surviving child
    would hold the output pipe open until it ends: 30 s here)."""
    start = time.perf_counter()
    status, output, _ = _gpu_check()._run(["sh", "-c", "echo started; sleep 30; echo never"], 1)
    assert time.perf_counter() - start < 10
    assert status is None and "started" in output and "never" not in output
    assert "[timed out after 1 s]" in output
