"""CLIPFastRCNN end to end on a COCO-OVD-shaped synthetic tree: train, evaluate, CLI, 2
processes."""
import json
import os
import subprocess
import sys
import warnings

import ovd_world
import pytest
import torch
from multiproc import rendezvous_url
from ovd_world import BASE, REPO, load_train_net, make_ovd_coco_tree, write_embeddings
from tiny_clip import TINY_OPTS, write_tiny_clip

CFG = os.path.join(REPO, "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd.yaml")
SMALL = ovd_world.SMALL + ["SOLVER.CHECKPOINT_PERIOD", "1000"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ovd")
    make_ovd_coco_tree(str(root))
    arch, weights = write_tiny_clip(str(root))
    emb = {"base": write_embeddings(str(root / "base.pth"), len(BASE), dim=64),
           "all": write_embeddings(str(root / "all.pth"), 65, dim=64, seed=1),
           "arch": arch, "weights": weights}
    return root, emb


def _args(extra, eval_only=False, resume=False, num_gpus=1):
    train_net = load_train_net()
    argv = ["--config-file", CFG] + (["--eval-only"] if eval_only else []) + \
           (["--resume"] if resume else []) + ["--num-gpus", str(num_gpus), "--dist-url",
                                               f"tcp://127.0.0.1:{_port()}"] + extra
    from detectron2.engine import default_argument_parser
    return train_net, default_argument_parser().parse_args(argv)


def _port():
    from detectron2_ext.utils import free_port
    return free_port()


def _gt_opts(root, emb, out):
    # 2 base classes in training (the synthetic train set also contains novel shapes: they are
    # simply absent from the base json), 65-class open-set embeddings at test time
    return SMALL + TINY_OPTS + ["MODEL.CLIP.ARCH", emb["arch"], "MODEL.WEIGHTS", emb["weights"],
                                "MODEL.CLIP.CROP_REGION_TYPE", "GT",
                                "MODEL.ROI_HEADS.NUM_CLASSES", str(len(BASE)),
                    "MODEL.CLIP.TEXT_EMB_PATH", emb["base"],
                    "MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH", emb["all"], "OUTPUT_DIR", str(out)]


@pytest.mark.slow
def test_train_then_evaluate_reports_novel_base_all(world, monkeypatch, tmp_path):
    root, emb = world
    monkeypatch.chdir(root)
    train_net, args = _args(_gt_opts(root, emb, tmp_path) + ["SOLVER.MAX_ITER", "2"])
    train_net.main(args)
    final = tmp_path / "model_final.pth"
    assert final.is_file()
    state = torch.load(final, map_location="cpu", weights_only=False)["model"]
    # frozen text classifier and zero background embedding are saved, as the original's checkpoints
    assert torch.equal(state["roi_heads.box_predictor.cls_bg_score.weight"], torch.zeros(1, 64))
    torch.testing.assert_close(state["roi_heads.box_predictor.cls_score.weight"],
                               torch.load(emb["base"]))
    _, args = _args(_gt_opts(root, emb, tmp_path) + ["MODEL.WEIGHTS", str(final)], eval_only=True)
    res = train_net.main(args)["bbox"]
    for key in ("AP50_novel", "AP50_base", "AP50_all", "AP", "AP50"):
        assert key in res and res[key] == res[key]  # present and not NaN
    assert res["AP50_all"] == pytest.approx(res["AP50"], abs=1e-4)
    assert (tmp_path / "inference" / "coco_instances_results.json").is_file()


@pytest.mark.slow
def test_resume_continues_iteration_count(world, monkeypatch, tmp_path):
    root, emb = world
    monkeypatch.chdir(root)
    train_net, args = _args(_gt_opts(root, emb, tmp_path) + ["SOLVER.MAX_ITER", "2"])
    train_net.main(args)
    _, args = _args(_gt_opts(root, emb, tmp_path) + ["SOLVER.MAX_ITER", "3"], resume=True)
    trainer_cls = train_net.Trainer
    seen = {}
    orig = trainer_cls.train

    def spy(self):
        seen["start"] = self.start_iter
        return orig(self)

    monkeypatch.setattr(trainer_cls, "train", spy)
    train_net.main(args)
    assert seen["start"] == 2
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 2  # one more iteration on top of the two of the first run


@pytest.mark.slow
@pytest.mark.dist
def test_two_cpu_processes_train_through_the_cli(world, tmp_path):
    """`tools/train_net.py --num-gpus 2` on a machine without GPUs: two gloo processes."""
    root, emb = world
    # faulthandler: should a worker die of a signal, its Python stacks are in stderr
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONFAULTHANDLER="1")

    def run():
        cmd = [sys.executable, os.path.join(REPO, "tools/train_net.py"), "--config-file", CFG,
               "--num-gpus", "2", "--dist-url", rendezvous_url(str(tmp_path))] + \
            _gt_opts(root, emb, tmp_path) + ["SOLVER.MAX_ITER", "2"]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        errors = "\n".join(line for line in proc.stderr.splitlines() if "warn" not in line.lower())
        return proc.returncode, errors

    code, errors = run()
    if code and "terminated with signal SIGABRT" in errors:
        # Seen twice in ~100 runs before launch() destroyed the process group (gloo aborting a
        # worker, "terminate called without an active exception"); not reproduced since. One
        # retry keeps such a C++-level abort from failing the suite, and is reported.
        warnings.warn("2-process CPU training: a worker aborted (SIGABRT); retried once:\n"
                      + errors[-3000:])
        code, errors = run()
    assert code == 0, errors[-8000:]
    assert (tmp_path / "model_final.pth").is_file()
    log = (tmp_path / "log.txt").read_text()
    assert "World size: 2" in log
    # MODEL.DEVICE cpu: gloo, also on a machine with GPUs (where launch() would default to NCCL)
    assert "Process rank 0 of 2 computes on cpu (process group: gloo)" in log
    assert "Process rank 1 of 2 computes on cpu (process group: gloo)" in \
        (tmp_path / "log.txt.rank1").read_text()


@pytest.mark.slow
def test_cli_rpn_zero_shot_eval_runs_unchanged(world, tmp_path):
    """The original's zero-shot RPN command (file paths aside) as a subprocess."""
    root, emb = world
    cmd = [sys.executable, os.path.join(REPO, "tools/train_net.py"), "--config-file",
           os.path.join(REPO,
                        "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd_zsinf.yaml"),
           "--eval-only", "MODEL.CLIP.ARCH", emb["arch"], "MODEL.WEIGHTS", emb["weights"],
           "MODEL.CLIP.TEXT_EMB_PATH", emb["all"]] + TINY_OPTS + ["MODEL.CLIP.CROP_REGION_TYPE",
                                                                  "RPN",
           "MODEL.CLIP.MULTIPLY_RPN_SCORE", "True", "MODEL.CLIP.OFFLINE_RPN_CONFIG",
           os.path.join(REPO, "configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"),
           "MODEL.CLIP.OFFLINE_RPN_POST_NMS_TOPK_TEST", "20", "OUTPUT_DIR", str(tmp_path),
           "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160",
           # the offline RPN has random weights: with the raw-logit rescoring (the original's
           # default) a negative objectness gives a NaN score, and an unlucky draw (SEED -1)
           # detected nothing at all; this seed's draw keeps over a hundred detections
           "SEED", "3"]
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "No CUDA device: running on the CPU" in proc.stdout
    detections = json.loads((tmp_path / "inference" / "coco_instances_results.json").read_text())
    assert len(detections) > 0
    assert "AP50_novel" in proc.stdout + proc.stderr
