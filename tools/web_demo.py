#!/usr/bin/env python
"""A web page to try a detector on your own pictures (Gradio; pip install -e '.[web]').

    python tools/web_demo.py [--host 127.0.0.1] [--port 7860]     # the shipped toy detector
    python tools/web_demo.py --config-file CFG --weights W.pth [--opts KEY VALUE ...]
    python tools/web_demo.py --model NAME                          # a model-zoo name

Without a model flag it serves the toy-world detector of projects/toyworld/weights (as
``make demo``). See :mod:`regionclip.tools.web_demo` and docs/DEPLOY.md.
"""
import os
import sys

from regionclip.tools.web_demo import main

# the toy-world project: installed by make install; from a checkout without it, its folder goes
# first on the path (before tools/, whose toyworld.py would shadow the package)
TOYWORLD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "projects",
                        "toyworld")


def toy_model(opts=(), device=None):
    """The shipped toy detector (``toyworld.demo.web_model``)."""
    if os.path.isdir(TOYWORLD):
        sys.path.insert(0, TOYWORLD)
    try:
        from toyworld.demo import web_model
    except ImportError as e:
        raise ImportError(f"the default model is the toy-world detector of {TOYWORLD} ({e}); "
                          "give --config-file and --weights, or --model NAME") from None
    return web_model(opts=opts, device=device)


if __name__ == "__main__":
    sys.exit(main(default_model=toy_model))
