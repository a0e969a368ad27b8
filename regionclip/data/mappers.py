"""Dataset mappers."""
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils

__all__ = ["build_test_mapper"]

# Meta-architectures that may use ground-truth boxes as regions at inference.
GT_REGION_META_ARCHS = ("CLIPFastRCNN",)


def build_test_mapper(cfg):
    """Test-time mapper; keeps ground-truth boxes for meta-architectures that may crop them.

    detectron2's test mapper drops annotations. ``CLIPFastRCNN`` with ``CROP_REGION_TYPE GT``
    classifies the ground-truth boxes, so (as the original) annotations are kept and transformed
    with the test-time resize for it. Masks and keypoints are not loaded.
    """
    if cfg.MODEL.META_ARCHITECTURE not in GT_REGION_META_ARCHS:
        return DatasetMapper(cfg, is_train=False)
    return DatasetMapper(
        is_train=True,  # only so that annotations are kept; augmentations are the test ones
        augmentations=utils.build_augmentation(cfg, is_train=False),
        image_format=cfg.INPUT.FORMAT,
        use_instance_mask=False,
        use_keypoint=False,
        recompute_boxes=False,
    )
