"""Exact resume through ``tools/train_net.py``: a training process killed with SIGKILL right after
a checkpoint and restarted with ``--resume`` ends with the same tensors, bit for bit, as the run
that was never interrupted; detection training and pretraining, one process and two.

Every run is a subprocess with the same environment (thread count included). The uninterrupted
run and the killed one use the same fixed seed; the comparison covers every tensor of the final
model and of the optimizer state.
"""
import os
import signal
import subprocess
import sys
import time

import ovd_world
import pytest
import torch
from _image_text_data import captions_field, make_samples, write_tsv_pair, write_wds_shards
from multiproc import rendezvous_url
from ovd_world import BASE, REPO, make_ovd_coco_tree, write_embeddings
from tiny_clip import TINY_OPTS, write_tiny_clip

DETECTION_CFG = os.path.join(REPO,
                             "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd.yaml")
PRETRAIN_CFG = os.path.join(REPO, "configs/pretrain/RegionCLIP_RN50.yaml")
HOOK = "ExactResume"


@pytest.fixture(scope="module")
def detection_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    make_ovd_coco_tree(str(root))
    arch, weights = write_tiny_clip(str(root))
    emb = write_embeddings(str(root / "base.pth"), len(BASE), dim=64)
    opts = ovd_world.SMALL + TINY_OPTS + [
        "MODEL.CLIP.ARCH", arch, "MODEL.WEIGHTS", weights, "MODEL.CLIP.CROP_REGION_TYPE", "GT",
        "MODEL.ROI_HEADS.NUM_CLASSES", str(len(BASE)), "MODEL.CLIP.TEXT_EMB_PATH", emb,
        "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.MAX_ITER", "16",
        "DATASETS.TEST", "()"]  # training only: the weights are compared, not an evaluation
    return root, DETECTION_CFG, opts


@pytest.fixture(scope="module")
def pretrain_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    arch, weights = write_tiny_clip(str(root))
    torch.save(torch.randn(12, 64, generator=torch.Generator().manual_seed(0)), root / "pool.pth")
    samples = make_samples(10, captions_per_sample=2)
    write_tsv_pair(str(root / "tsv"), "train.image.tsv", "train.text.tsv",
                   [(k, img, captions_field(caps)) for k, img, caps in samples])
    write_wds_shards(str(root / "wds"), [{"__key__": k, "png": img, "txt": caps[0]}
                                         for k, img, caps in samples], per_shard=2)
    opts = TINY_OPTS + [
        "MODEL.DEVICE", "cpu", "MODEL.CLIP.ARCH", arch, "MODEL.CLIP.TEACHER_ARCH", arch,
        "MODEL.WEIGHTS", weights, "MODEL.CLIP.CONCEPT_POOL_EMB", str(root / "pool.pth"),
        "MODEL.CLIP.CROP_REGION_TYPE", "RANDOM", "MODEL.CLIP.PRETRAIN_SAMPLE_REGIONS", "3",
        "AUG.TRAIN.IMAGE_SIZE", "[64]", "AUG.TRAIN.MAX_SIZE", "96", "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.BASE_LR", "0.003", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.MAX_ITER", "10", "SOLVER.CHECKPOINT_PERIOD", "3", "SEED", "1"]
    return root, PRETRAIN_CFG, opts


def _data_opts(root, form, workers):
    factory = "CLIPImgTxtPairTSVDataset" if form == "tsv" else "WebDatasetImageText"
    return ["DATASETS.PATH_TRAIN", f"('{root / form}',)", "DATASETS.FACTORY_TRAIN",
            f"('{factory}',)", "DATALOADER.NUM_WORKERS", str(workers)]


def _command(world, out, processes, resume=False, extra=()):
    root, cfg, opts = world
    return ([sys.executable, os.path.join(REPO, "tools/train_net.py"), "--config-file", cfg,
             "--num-gpus", str(processes), "--dist-url", rendezvous_url(str(root))]
            + (["--resume"] if resume else []) + opts + list(extra) + ["OUTPUT_DIR", str(out)])


def _env():
    # the same thread count in every run: the float results depend on it
    return dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")


def _run(command, cwd):
    proc = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc


def _run_and_kill_after_first_checkpoint(command, cwd, out):
    """Start a training run, SIGKILL it (and its workers) as soon as a checkpoint is tagged."""
    proc = subprocess.Popen(command, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    tag = out / "last_checkpoint"
    try:
        while not tag.exists():
            if proc.poll() is not None:
                pytest.fail("the run ended before writing a checkpoint:\n"
                            + proc.stderr.read().decode()[-6000:])
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model_final.pth").exists(), "the run finished before it was killed"
    return tag.read_text()


def _checkpoint(path):
    # everything the resume state adds is plain data: the safe reader takes it
    return torch.load(path, map_location="cpu", weights_only=True)


def _tensors(checkpoint):
    """Every tensor of the model and of the optimizer state, by name."""
    out = {f"model/{k}": v for k, v in checkpoint["model"].items()}
    optimizer = checkpoint["trainer"]["_trainer"]["optimizer"]["state"]
    for index, state in optimizer.items():
        out.update((f"optimizer/{index}/{k}", v) for k, v in state.items()
                   if isinstance(v, torch.Tensor))
    return out


def _assert_bitwise_equal(reference, resumed):
    a, b = _tensors(reference), _tensors(resumed)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:5]}"


def _training_starts(out):
    """The first iteration of each run in the output folder, from its log."""
    log = (out / "log.txt").read_text()
    return [int(line.rsplit(" ", 1)[1]) for line in log.splitlines()
            if "Starting training from iteration" in line]


def _kill_resume_compare(world, tmp_path, processes=1, extra=()):
    root = world[0]
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    _run(_command(world, reference, processes, extra=extra), root)
    killed_at = _run_and_kill_after_first_checkpoint(
        _command(world, interrupted, processes, extra=extra), root, interrupted)
    at_kill = _checkpoint(interrupted / killed_at)
    _run(_command(world, interrupted, processes, resume=True, extra=extra), root)
    starts = _training_starts(interrupted)
    assert starts[0] == 0 and starts[-1] == at_kill["iteration"] + 1  # really resumed mid-run
    final = _checkpoint(interrupted / "model_final.pth")
    _assert_bitwise_equal(_checkpoint(reference / "model_final.pth"), final)
    # not vacuous: the weights moved after the resume
    moved = _tensors(at_kill)
    assert any(not torch.equal(moved[k], v) for k, v in _tensors(final).items()
               if k.startswith("model/"))
    assert at_kill["trainer"]["hooks"][HOOK]["world_size"] == processes
    return interrupted, at_kill, killed_at


@pytest.mark.slow
def test_detection_training_killed_and_resumed_ends_bitwise_equal(detection_world, tmp_path):
    interrupted, at_kill, killed_at = _kill_resume_compare(detection_world, tmp_path)
    # negative control: the same checkpoint without the data-stream and generator states
    # (as written before this feature) resumes into different weights, and says so
    del at_kill["trainer"]["hooks"][HOOK]
    torch.save(at_kill, interrupted / killed_at)
    (interrupted / "last_checkpoint").write_text(killed_at)
    (interrupted / "model_final.pth").unlink()
    root = detection_world[0]
    _run(_command(detection_world, interrupted, 1, resume=True), root)
    log = (interrupted / "log.txt").read_text()
    assert "the data stream starts again from its beginning" in log
    plain = _tensors(_checkpoint(interrupted / "model_final.pth"))
    reference = _tensors(_checkpoint(tmp_path / "reference" / "model_final.pth"))
    assert any(not torch.equal(plain[k], reference[k]) for k in reference)


@pytest.mark.slow
def test_pretraining_tsv_killed_and_resumed_ends_bitwise_equal(pretrain_world, tmp_path):
    _kill_resume_compare(pretrain_world, tmp_path,
                         extra=_data_opts(pretrain_world[0], "tsv", workers=0))


@pytest.mark.slow
def test_pretraining_webdataset_with_workers_killed_and_resumed(pretrain_world, tmp_path):
    # 2 workers read the 5 shards: each worker's position in its record stream is restored
    _, at_kill, _ = _kill_resume_compare(pretrain_world, tmp_path,
                                         extra=_data_opts(pretrain_world[0], "wds", workers=2))
    data = at_kill["trainer"]["hooks"][HOOK]["processes"][0]["data"]
    assert data["num_workers"] == 2 and set(data["cursors"]) == {0, 1}


@pytest.mark.slow
@pytest.mark.dist
def test_two_process_pretraining_killed_and_resumed_ends_bitwise_equal(pretrain_world, tmp_path):
    _, at_kill, _ = _kill_resume_compare(pretrain_world, tmp_path, processes=2,
                                         extra=_data_opts(pretrain_world[0], "tsv", workers=0))
    ranks = [p["data"]["rank"] for p in at_kill["trainer"]["hooks"][HOOK]["processes"]]
    assert ranks == [0, 1]
