#!/usr/bin/env python
"""Speed and memory of RegionCLIP on this machine, next to the FLOP roof.

    python tools/benchmark.py [--cases roof,zeroshot,train,pretrain,batched,onnx]
                              [--regions 100 300 1000] [--chunk 0 128] [--size 800 1216]
                              [--dtype float32 bfloat16] [--device cpu|cuda] [--json FILE]

See :mod:`regionclip.tools.benchmark` (logic in :mod:`regionclip.benchmark`).
"""
import sys

from regionclip.tools.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
