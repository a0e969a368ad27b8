#!/usr/bin/env python
"""Build pretraining data from a folder of images and captions: TSV pairs or WebDataset shards.

Examples::

    python tools/make_image_text_dataset.py --images DIR --captions captions.json --output OUT
    python tools/make_image_text_dataset.py --images DIR --captions captions.csv --output OUT \\
        --format wds --shard-size 1000
    python tools/make_image_text_dataset.py --images IMG2DATASET_OUT --output OUT  # tar or files

See :mod:`regionclip.tools.make_image_text_dataset` and docs/PRETRAINING.md ("Data").
"""
import sys

from regionclip.tools.make_image_text_dataset import main

if __name__ == "__main__":
    sys.exit(main())
