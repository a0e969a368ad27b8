#!/usr/bin/env python
"""RegionCLIP end to end in a generated world (docs/TOYWORLD.md).

    python tools/toyworld.py --output output/toyworld [--size tiny|default] [--seed 0]
    python tools/toyworld.py demo [--vocab "star,red circle"] [--images FILE_OR_DIR]
"""
import sys

from regionclip.toyworld.cli import main

if __name__ == "__main__":
    sys.exit(main())
