"""A tiny CLIP ResNet for fast tests: architecture JSON (for MODEL.CLIP.ARCH) and OpenAI-style
weights."""
import torch

from regionclip.clip import CLIPConfig, TextConfig, VisualConfig, build_clip
from regionclip.modeling.clip_arch import save_clip_arch

# res2..res5 channels 64/128/256/512; attention pool 7x7 (224 px) like RN50, so the RN50 configs'
# POOLER_RESOLUTION 14 applies unchanged; joint embedding 64.
TINY = CLIPConfig(VisualConfig((1, 1, 1, 1), 16, 224, 64, 8), TextConfig(64, 2, 2, 64))
TINY_OPTS = ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.CLIP.TEXT_EMB_DIM", "64"]


@torch.no_grad()
def calibrate_batchnorm_(visual, image_size, seed=0, batch=8):
    """Set the BatchNorm statistics of a CLIP image tower to those of noise images, as training
    would: every layer then passes on a signal of unit scale.

    With arbitrary statistics (e.g. variances ~U(0.5, 2), gains ~U(0.2, 0.6)) the signal dies out
    over the layers while constant offsets stay: embeddings of different images differed by 1e-6
    (tiny tower) to 2e-5 (RN50) of their size, and tests comparing embeddings could not tell one
    input from another. Works for ``nn.BatchNorm2d`` and detectron2's ``FrozenBatchNorm2d``
    (each norm gets the statistics of its own input, in one pass through the whole tower).
    """
    def measure(module, args):
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

    norms = [m for m in visual.modules()
             if hasattr(m, "running_mean") and hasattr(m, "running_var")]
    handles = [m.register_forward_pre_hook(measure) for m in norms]
    was_training = visual.training
    visual.eval()
    images = torch.randn(batch, 3, image_size, image_size,
                         generator=torch.Generator().manual_seed(seed))
    try:
        if hasattr(visual, "forward_features"):  # our towers: run every stage (res5 included)
            visual.forward_features(images, ("res5",))
        else:
            visual(images)
    finally:
        for handle in handles:
            handle.remove()
    visual.train(was_training)
    return visual


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
    calibrate_batchnorm_(model.visual, TINY.visual.image_size, seed + 1)
    arch = save_clip_arch(TINY, f"{folder}/tiny_arch.json")
    weights = f"{folder}/tiny_OAI_CLIP.pth"
    torch.save(model.state_dict(), weights)
    return arch, weights
