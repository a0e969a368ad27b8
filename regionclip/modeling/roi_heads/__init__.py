"""ROI heads and the text-embedding box predictor (registered on import)."""
from .clip_box_predictor import CLIPFastRCNNOutputLayers, load_text_embeddings  # noqa: F401
from .clip_roi_heads import CLIPRes5ROIHeads, PretrainRes5ROIHeads, region_embeddings  # noqa: F401
