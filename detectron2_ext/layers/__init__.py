from .soft_nms import batched_soft_nms, soft_nms  # noqa: F401
