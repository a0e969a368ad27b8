"""Loading a built model's weights from its config: ``MODEL.WEIGHTS`` then the offline RPN's; a
text encoder from another file."""
import logging

from regionclip.clip.model import split_clip_state_dict

from .checkpointer import RegionCLIPCheckpointer, load_offline_rpn_weights
from .io import extract_state_dict, read_torch_file

__all__ = ["load_model_weights", "load_text_encoder_weights"]

logger = logging.getLogger(__name__)


def load_model_weights(cfg, model, resume=False, checkpointer=None):
    """Load ``MODEL.WEIGHTS`` (or the last checkpoint when resuming), then ``BB_RPN_WEIGHTS``.

    The second checkpoint initialises only the offline backbone and RPN, as the original did in
    evaluation and in training. The original decided by name (CLIPFastRCNN or PretrainFastRCNN
    with ``CROP_REGION_TYPE`` "RPN": exactly the models built with an offline branch); here the
    built model decides, so that a registered subclass under another name gets its offline RPN
    too instead of keeping it random.

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
    if (getattr(model, "offline_proposal_generator", None) is not None
            and cfg.MODEL.CLIP.BB_RPN_WEIGHTS):
        load_offline_rpn_weights(model, cfg.MODEL.CLIP.BB_RPN_WEIGHTS)
    return ret


def load_text_encoder_weights(model, path: str) -> None:
    """Load ``model.lang_encoder`` from the text tower of ``path``: a RegionCLIP pretrained
    checkpoint (``lang_encoder.*``) or OpenAI CLIP weights (top-level text keys). Every tensor of
    the text encoder must be in the file, with its shape.

    Raises:
        ValueError: the file has no complete text tower of the model's shape (names the file).
    """
    state_dict = extract_state_dict(read_torch_file(path), path)
    text = {k[len("lang_encoder."):]: v for k, v in state_dict.items()
            if k.startswith("lang_encoder.")} or split_clip_state_dict(state_dict)[1]
    own = model.lang_encoder.state_dict()
    wrong = [f"{k}: file {tuple(text[k].shape)} vs model {tuple(v.shape)}" if k in text else
             f"{k}: not in the file" for k, v in own.items()
             if k not in text or tuple(text[k].shape) != tuple(v.shape)]
    if wrong:
        raise ValueError(f"{path} has no text tower of the model's shape ({len(wrong)} tensors "
                         f"missing or of other shapes):\n  " + "\n  ".join(wrong[:10]))
    model.lang_encoder.load_state_dict({k: text[k] for k in own})
    logger.info("Text encoder (%d tensors) from %s", len(own), path)
