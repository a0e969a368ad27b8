from .launch import launch  # noqa: F401
