from .fast_rcnn_inference import fast_rcnn_inference, fast_rcnn_inference_single_image  # noqa: F401
