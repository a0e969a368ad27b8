"""A tiny CLIP ResNet for fast tests: architecture JSON (for MODEL.CLIP.ARCH) and OpenAI-style weights."""
import torch

from regionclip.clip import CLIPConfig, TextConfig, VisualConfig, build_clip
from regionclip.modeling.clip_arch import save_clip_arch

# res2..res5 channels 64/128/256/512; attention pool 7x7 (224 px) like RN50, so the RN50 configs'
# POOLER_RESOLUTION 14 applies unchanged; joint embedding 64.
TINY = CLIPConfig(VisualConfig((1, 1, 1, 1), 16, 224, 64, 8), TextConfig(64, 2, 2, 64))
TINY_OPTS = ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.CLIP.TEXT_EMB_DIM", "64"]


def write_tiny_clip(folder, seed=0):
    """Write ``tiny_arch.json`` and ``tiny_OAI_CLIP.pth`` (a random CLIP with OpenAI key names).

    Returns:
        (str, str): the architecture file and the weights file.
    """
    torch.manual_seed(seed)
    model = build_clip(TINY)  # BatchNorm init with zero gamma in each block's last norm
    with torch.no_grad():  # give the frozen statistics realistic, non-trivial values
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buf.normal_(0, 0.1)
        for name, param in model.named_parameters():  # CLIP's init zeroes each block's last gamma
            if ".bn" in name and name.endswith("weight"):
                param.uniform_(0.2, 0.6)
    arch = save_clip_arch(TINY, f"{folder}/tiny_arch.json")
    weights = f"{folder}/tiny_OAI_CLIP.pth"
    torch.save(model.state_dict(), weights)
    return arch, weights
