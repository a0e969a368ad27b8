#!/usr/bin/env python
"""Export a RegionCLIP detector to ONNX or TorchScript (detectron2's export command line).

    python tools/export_model.py --config-file CFG --output DIR --format onnx \\
        --export-method tracing [--sample-image IMAGE] [--vocabulary "cat,dog"] \\
        [--open-vocabulary] MODEL.WEIGHTS CKPT [KEY VALUE ...]

See :mod:`regionclip.tools.export_model` and docs/DEPLOY.md.
"""
import sys

from regionclip.tools.export_model import main

if __name__ == "__main__":
    sys.exit(main())
