from .comm import all_gather_with_grad, free_port  # noqa: F401
