#!/usr/bin/env python
"""Region classification accuracy on ground-truth boxes: RoI-pooled regions vs image crops.

    python tools/region_accuracy.py \\
        --config-file configs/LVISv1-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_zsinf.yaml \\
        --modes roi crop --max-images 500 --output output/region_accuracy.json \\
        MODEL.WEIGHTS pretrained_ckpt/regionclip/regionclip_pretrained-cc_rn50.pth

See :mod:`regionclip.tools.region_accuracy`.
"""
import sys

from regionclip.tools.region_accuracy import main

if __name__ == "__main__":
    sys.exit(main())
