"""Checks before evaluation: real weights, and a classifier with one row per test class."""
import logging
import os

from detectron2.data import MetadataCatalog

__all__ = ["require_weights", "check_test_classifier"]

logger = logging.getLogger(__name__)


def require_weights(cfg, random_weights: bool, flag: str, resume: bool = False) -> None:
    """Refuse to evaluate a randomly initialised model unless the user asked for it.

    Args:
        cfg: the config (``MODEL.WEIGHTS``, ``OUTPUT_DIR``).
        random_weights (bool): the user's explicit consent (``flag``).
        flag (str): how the user gives it (``--random-weights``, ``random_weights=True``).
        resume (bool): weights come from ``OUTPUT_DIR/last_checkpoint`` if it exists.

    Raises:
        ValueError: no weights and no consent.
    """
    if cfg.MODEL.WEIGHTS or (resume and os.path.isfile(
            os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))):
        return
    if random_weights:
        logger.warning("MODEL.WEIGHTS is empty: evaluating a randomly initialised model, as "
                       "asked (%s)", flag)
        return
    raise ValueError(f"MODEL.WEIGHTS is empty: evaluation would use a randomly initialised "
                     f"model. Give a checkpoint (MODEL.WEIGHTS path/to/model.pth), or {flag} if "
                     f"random weights are really meant (e.g. a smoke test).")


def _unwrap(model):
    return getattr(model, "module", model)


def check_test_classifier(cfg, model) -> None:
    """The text classifier used at test time has one row per class of every test dataset.

    A 3-row open-set embedding file for a 65-class test set would otherwise give an AP computed
    over 3 classes' worth of predictions. Datasets without ``thing_classes`` are not checked;
    datasets that are not evaluated (``no_evaluation``) get a warning only.

    Raises:
        ValueError: naming the embedding file, its rows, the dataset and its class count.
    """
    predictor = getattr(getattr(_unwrap(model), "roi_heads", None), "box_predictor", None)
    if not getattr(predictor, "use_text_emb_classifier", False):
        return
    files = getattr(predictor, "text_emb_files", {})
    if getattr(predictor, "test_cls_score", None) is not None:
        rows = predictor.test_cls_score.weight.shape[0]
        key, path = files.get("test_cls_score", ("the open-set classifier", None))
    else:
        rows = predictor.cls_score.weight.shape[0]
        key, path = files.get("cls_score", ("MODEL.ROI_HEADS.NUM_CLASSES", None))
    source = f"{key} = '{path}'" if path else key
    for name in cfg.DATASETS.TEST:
        meta = MetadataCatalog.get(name)
        classes = meta.get("thing_classes", None)
        if classes is None or len(classes) == rows:
            continue
        message = (f"{source} gives {rows} class embeddings, but the test set '{name}' has "
                   f"{len(classes)} classes: the file needs one row per class, in the dataset's "
                   f"class order (tools/extract_concept_features.py --concepts dataset:{name} "
                   f"makes it)")
        if meta.get("no_evaluation", False):
            logger.warning("%s; '%s' is not evaluated, so its results only hold class indices "
                           "into the embedding file", message, name)
            continue
        raise ValueError(message)
