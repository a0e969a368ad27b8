"""Loading a built model's weights from its config: ``MODEL.WEIGHTS`` then the offline RPN's."""
from .checkpointer import RegionCLIPCheckpointer, load_offline_rpn_weights

__all__ = ["load_model_weights", "RPN_META_ARCHS"]

RPN_META_ARCHS = ("CLIPFastRCNN", "PretrainFastRCNN")


def load_model_weights(cfg, model, resume=False, checkpointer=None):
    """Load ``MODEL.WEIGHTS`` (or the last checkpoint when resuming), then ``BB_RPN_WEIGHTS``.

    The second checkpoint initialises only the offline backbone and RPN (RPN-mode RegionCLIP
    meta-architectures), as the original did in evaluation and in training.

    Args:
        cfg: the model's config.
        model: the model built from it.
        resume (bool): load ``OUTPUT_DIR/last_checkpoint`` when there is one.
        checkpointer (RegionCLIPCheckpointer or None): the one to use (a trainer's); default: a
            new one writing to ``OUTPUT_DIR``.

    Returns:
        dict: what the checkpointer returned for the first checkpoint (e.g. ``iteration``).
    """
    checkpointer = checkpointer or RegionCLIPCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    ret = checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    if (cfg.MODEL.META_ARCHITECTURE in RPN_META_ARCHS and cfg.MODEL.CLIP.CROP_REGION_TYPE == "RPN"
            and cfg.MODEL.CLIP.BB_RPN_WEIGHTS):
        load_offline_rpn_weights(model, cfg.MODEL.CLIP.BB_RPN_WEIGHTS)
    return ret
