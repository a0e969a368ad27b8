#!/usr/bin/env python
"""Build a concept pool (concepts.txt, optionally its embeddings) from a caption corpus.

Example (the paper's COCO pool: nouns of COCO Captions occurring at least 100 times)::

    python tools/build_concept_pool.py --captions annotations/captions_train2017.json \\
        --output concepts.txt --min-count 100 \\
        [--weights RN50_OAI_CLIP.pth --output-emb coco_nouns_emb.pth]

Needs spaCy and an English pipeline (en_core_web_sm). See
:mod:`regionclip.tools.build_concept_pool`.
"""
import sys

from regionclip.tools.build_concept_pool import main

if __name__ == "__main__":
    sys.exit(main())
