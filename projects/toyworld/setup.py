#!/usr/bin/env python
"""The toy world: RegionCLIP end to end on a generated world, a project beside the library.

Install it editable from the checkout (``make install`` does): its detectron2 configs in
``configs/`` inherit the library's ``configs/Base-*.yaml`` by relative path, and its presets and
shipped detector live in ``presets/`` and ``weights/`` beside the package.

    pip install -e projects/toyworld
"""
from setuptools import setup

setup(
    name="regionclip-toyworld",
    version="0.1.0",
    description=("RegionCLIP end to end on a generated open-vocabulary world "
                 "(a project of regionclip)"),
    license="MIT",
    python_requires=">=3.9",
    packages=["toyworld"],
    install_requires=["regionclip"],
)
