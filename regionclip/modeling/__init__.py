"""Models; importing this package registers every component with detectron2's registries."""
