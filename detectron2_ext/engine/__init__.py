from .launch import launch  # noqa: F401
from .resume import ExactResume, capture_rng_states, restore_rng_states  # noqa: F401
