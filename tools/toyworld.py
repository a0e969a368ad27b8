#!/usr/bin/env python
"""RegionCLIP end to end in a generated world (docs/TOYWORLD.md): the command line of the
toy-world project ``projects/toyworld`` (``make install`` installs it; from a checkout without it,
the project folder is put on the path).

    python tools/toyworld.py --output output/toyworld [--size tiny|default] [--seed 0]
    python tools/toyworld.py demo [--vocab "star,red circle"] [--images FILE_OR_DIR]
"""
import os
import sys

try:
    from toyworld.cli import main
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "projects", "toyworld"))
    from toyworld.cli import main

if __name__ == "__main__":
    sys.exit(main())
