#!/usr/bin/env python
"""Open-vocabulary detection on your own images with a vocabulary of your choice.

    python tools/demo.py --input ./datasets/custom_images --vocabulary cat dog "remote control" \\
        --weights ./pretrained_ckpt/regionclip/regionclip_pretrained-cc_rn50.pth \\
        --output ./output/demo [--score-threshold 0.3] [--boxes-json boxes.json] \\
        [--opts MODEL.CLIP.BB_RPN_WEIGHTS ./pretrained_ckpt/rpn/rpn_lvis_866.pth]

See :mod:`regionclip.tools.demo`.
"""
import sys

from regionclip.tools.demo import main

if __name__ == "__main__":
    sys.exit(main())
