"""The RegionCLIP trainer: detectron2's ``DefaultTrainer`` with RegionCLIP's checkpoints, data
loaders and evaluators, and multi-process training on CPU as on GPUs."""
import logging
import os
import weakref

from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    hooks,
)
from detectron2.evaluation import DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from detectron2_ext.data import build_resumable_detection_train_loader
from detectron2_ext.engine import ExactResume
from detectron2_ext.evaluation import COCOSplitEvaluator, LVISEvaluatorCompat, PredictionWriter
from detectron2_ext.utils import check_amp_device

from ..checkpoint import RegionCLIPCheckpointer, load_model_weights
from ..data.mappers import build_test_mapper
from ..data.pretrain import build_pretrain_train_loader, is_image_text_config
from .checks import check_test_classifier

# load_model_weights is re-exported for code that imported it from here
__all__ = ["Trainer", "build_evaluator", "load_model_weights"]

logger = logging.getLogger(__name__)

def build_evaluator(cfg, dataset_name, output_folder=None):
    """Evaluator by the dataset's ``evaluator_type``: COCO with per-split AP, LVIS, or a writer.

    Datasets whose metadata has ``no_evaluation=True`` (e.g. ``lvis_v1_val_custom_img``) get their
    detections written to ``<output>/<type>_instances_results.json`` without evaluation.
    """
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
    meta = MetadataCatalog.get(dataset_name)
    kind = meta.get("evaluator_type", None)
    if meta.get("no_evaluation", False):
        return PredictionWriter(dataset_name, output_folder,
                                f"{kind or 'coco'}_instances_results.json")
    if kind == "coco":
        # never reuse a ground-truth json converted by an earlier run: the dataset's registration
        # (e.g. its novel classes) may have changed since
        return COCOSplitEvaluator(dataset_name, output_dir=output_folder, allow_cached_coco=False)
    if kind == "lvis":
        return LVISEvaluatorCompat(dataset_name, output_dir=output_folder)
    raise NotImplementedError(f"no evaluator for dataset '{dataset_name}' (evaluator_type "
                              f"{kind!r}); "
                              "register it with evaluator_type 'coco' or 'lvis', or set "
                              "no_evaluation=True in its metadata")


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` for every RegionCLIP model.

    Differences: the checkpointer reads OpenAI CLIP and original RegionCLIP files; the offline RPN
    weights (``MODEL.CLIP.BB_RPN_WEIGHTS``) are loaded after ``MODEL.WEIGHTS``; test loaders keep
    ground-truth boxes when regions may come from them; evaluators report base/novel AP;
    DistributedDataParallel gets the model's own GPU as device id (none for CPU models, gloo);
    ``SOLVER.AMP.ENABLED`` on a device other than CUDA is refused before anything is built;
    checkpoints carry the random generators' states and the train loader's position, so that
    ``--resume`` after an interruption continues exactly as the uninterrupted run
    (docs/RELIABILITY.md).
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        check_amp_device(cfg.SOLVER.AMP.ENABLED, cfg.MODEL.DEVICE)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        device = next(model.parameters()).device
        device_ids = [device.index] if device.type == "cuda" else None
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)
        trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_cls(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = RegionCLIPCheckpointer(model, cfg.OUTPUT_DIR,
                                                   trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        """Load weights as :func:`load_model_weights`; when resuming, continue the iteration count,
        the data stream and the random generators of the checkpoint."""
        load_model_weights(self.cfg, self.checkpointer.model, resume=resume,
                           checkpointer=self.checkpointer)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1
            if not any(isinstance(h, ExactResume) and h.loaded for h in self._hooks):
                logger.warning("The checkpoint has no data-stream and random-generator states "
                               "(written by an older version?): training continues at iteration "
                               "%d, but the data stream starts again from its beginning, so the "
                               "result will differ from an uninterrupted run", self.start_iter)

    def build_hooks(self):
        """detectron2's hooks, with :class:`~detectron2_ext.engine.ExactResume` where the periodic
        checkpointer is (in every process; the checkpointer only in the main one): it collects
        the states that each checkpoint stores."""
        hook_list = super().build_hooks()
        where = next((i for i, h in enumerate(hook_list)
                      if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook))),
                     len(hook_list))
        hook_list.insert(where, ExactResume(self._trainer.data_loader,
                                            self.cfg.SOLVER.CHECKPOINT_PERIOD))
        return hook_list

    @classmethod
    def build_train_loader(cls, cfg):
        """Image-text pretraining loader when ``DATASETS.TRAIN`` contains ``"imgtxtpairs"``
        (:func:`regionclip.data.pretrain.build_pretrain_train_loader`), else detectron2's
        detection loader in its resumable form
        (:func:`detectron2_ext.data.build_resumable_detection_train_loader`)."""
        if is_image_text_config(cfg):
            return build_pretrain_train_loader(cfg)
        return build_resumable_detection_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=build_test_mapper(cfg))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's evaluation, after checking that the test classifier has one row per
        class of each test set (:func:`~regionclip.engine.checks.check_test_classifier`)."""
        check_test_classifier(cfg, model)
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        evaluator = build_evaluator(cfg, dataset_name, output_folder)
        return DatasetEvaluators([evaluator])
