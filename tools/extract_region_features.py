#!/usr/bin/env python
"""Region features (and optionally detections) of a folder of images.

Original command line (options such as ``--fix-index-bug`` go before the ``KEY VALUE`` pairs)::

    python tools/extract_region_features.py --config-file CFG [--num-gpus N] \\
        [--fix-index-bug] [--one-per-region] [--skip-bad-images] \\
        MODEL.WEIGHTS CKPT MODEL.CLIP.CROP_REGION_TYPE RPN MODEL.CLIP.OFFLINE_RPN_CONFIG RPN_CFG \\
        MODEL.CLIP.BB_RPN_WEIGHTS RPN_CKPT INPUT_DIR DIR OUTPUT_DIR OUT \\
        [MODEL.CLIP.TEXT_EMB_PATH EMB] [KEY VALUE ...]

writes ``OUT/<name>.pth`` per image. See :mod:`regionclip.tools.extract_region_features`.
"""
import sys

from regionclip.tools.extract_region_features import main

if __name__ == "__main__":
    sys.exit(main())
