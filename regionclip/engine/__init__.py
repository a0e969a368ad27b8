"""Training and evaluation engine."""
from .trainer import Trainer, build_evaluator, load_model_weights  # noqa: F401
