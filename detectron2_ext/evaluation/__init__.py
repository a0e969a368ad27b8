from .coco_split_evaluation import (  # noqa: F401
    COCOSplitEvaluator,
    split_ap_from_coco_eval,
    split_proposal_recall,
    splits_from_metadata,
)
from .lvis_evaluation import LVISEvaluatorCompat, PredictionWriter, numpy_float_alias  # noqa: F401
