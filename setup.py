#!/usr/bin/env python
"""RegionCLIP as a detectron2 plugin: packages ``regionclip`` and ``detectron2_ext``.

torch, torchvision and detectron2 are prerequisites that ``make install`` sets up (detectron2 is
not on PyPI); see docs/INSTALL.md.
"""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_requirements():
    with open(os.path.join(HERE, "requirements.txt")) as f:
        lines = [ln.split("#")[0].strip() for ln in f]
    return [ln for ln in lines if ln]


setup(
    name="regionclip",
    version="0.1.0",
    description="RegionCLIP (CVPR 2022) region-based language-image pretraining, as a detectron2 plugin",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["regionclip", "regionclip.*", "detectron2_ext", "detectron2_ext.*"]),
    package_data={
        "regionclip.clip": ["*.txt.gz", "*.json"],
        "regionclip.data": ["metadata/*.json"],
        "regionclip.data.datasets": ["metadata/*.json"],
    },
    include_package_data=True,
    install_requires=read_requirements(),
    extras_require={
        "test": ["pytest>=7", "pytest-timeout", "open_clip_torch", "webdataset", "spacy"],
        "pretrain": ["webdataset", "spacy"],
    },
)
