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
    with torch.no_grad():
        for name, param in model.named_parameters():  # CLIP's init zeroes each block's last gamma
            if ".bn" in name and name.endswith("weight"):
                param.uniform_(0.2, 0.6)
        # Frozen statistics measured on noise images, as training would: every layer then passes
        # on a signal of unit scale. (Arbitrary statistics let the signal die out in the 17
        # layers: the embeddings varied by 1e-6 of their size between images, and tests that
        # compare embeddings could not tell one input from another.)
        norms = [m for m in model.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average: the batch's own statistics
        model.visual.train()
        noise = torch.randn(8, 3, TINY.visual.image_size, TINY.visual.image_size,
                            generator=torch.Generator().manual_seed(seed + 1))
        model.visual(noise)
        model.visual.eval()
        for norm in norms:
            norm.momentum = 0.1
    arch = save_clip_arch(TINY, f"{folder}/tiny_arch.json")
    weights = f"{folder}/tiny_OAI_CLIP.pth"
    torch.save(model.state_dict(), weights)
    return arch, weights
