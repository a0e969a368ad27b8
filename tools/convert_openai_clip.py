#!/usr/bin/env python
"""Convert OpenAI CLIP weights to a detectron2-style RegionCLIP checkpoint.

    python tools/convert_openai_clip.py --student RN50.pt [--teacher RN50x4.pt] --output OUT.pth

See :mod:`regionclip.tools.convert_openai_clip`.
"""
import sys

from regionclip.tools.convert_openai_clip import main

if __name__ == "__main__":
    sys.exit(main())
