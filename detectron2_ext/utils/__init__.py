from .comm import all_gather_with_grad, free_port  # noqa: F401
from .devices import check_amp_device, checked_autocast, process_device, resolve_device  # noqa: F401
