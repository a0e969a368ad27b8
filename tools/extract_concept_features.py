#!/usr/bin/env python
"""Embed concepts with the CLIP text tower (81-prompt ensemble, un-normalised).

Original command line (only the language encoder is built; no RPN config needed)::

    python tools/extract_concept_features.py --config-file CFG MODEL.WEIGHTS CKPT \\
        MODEL.CLIP.GET_CONCEPT_EMB True INPUT_DIR DIR OUTPUT_DIR OUT \\
        [MODEL.CLIP.TEXT_EMB_DIM 640 MODEL.RESNETS.DEPTH 200]

reads ``DIR/concepts.txt`` and writes ``OUT/concept_embeds.pth``. Direct form::

    python tools/extract_concept_features.py --concepts coco_65 | FILE.txt | WORD ... \\
        --weights CKPT --output FILE.pth [--depth 50|101|200] [--no-prompt-ensemble] \\
        [--batch-size N]

See :mod:`regionclip.tools.extract_concept_features`.
"""
import sys

from regionclip.tools.extract_concept_features import main

if __name__ == "__main__":
    sys.exit(main())
