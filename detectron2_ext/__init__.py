"""Method-agnostic detectron2 additions (candidates for detectron2 pull requests).

Imports only detectron2, torch and the standard library; knows nothing about CLIP or RegionCLIP.
"""
from .config import add_detectron2_ext_config  # noqa: F401

__all__ = ["add_detectron2_ext_config"]
