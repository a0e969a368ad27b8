from .coco_split_evaluation import COCOSplitEvaluator, split_ap_from_coco_eval  # noqa: F401
