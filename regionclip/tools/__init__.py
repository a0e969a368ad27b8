"""Logic of the command-line tools. Each module ``regionclip.tools.NAME`` is the script
``tools/NAME.py`` and the console command ``regionclip-NAME`` (underscores as dashes), with one
shape: ``run(argv=None)`` does the work and returns its result (for Python callers and tests),
``main(argv=None) -> int`` is the command (0 on success, 1 with ``error: ...`` on stderr when the
inputs are wrong)."""
import json
import logging
import os
import sys
from typing import Callable, Optional, Sequence

__all__ = ["read_json", "run_command", "INPUT_ERRORS"]

# Errors that mean "the inputs are wrong" (a missing file, a bad value, a missing optional
# package): a command reports them in one line; anything else keeps its traceback.
INPUT_ERRORS = (ImportError, OSError, ValueError)


def run_command(run: Callable, argv: Optional[Sequence[str]] = None) -> int:
    """``run(argv)`` as a command: INFO logging to stderr, exit status 0, or 1 after printing
    ``error: <message>`` for an input error (:data:`INPUT_ERRORS`)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(argv)
    except INPUT_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def read_json(path: str, flag: str):
    """Parse the json file ``path`` given to the command-line option ``flag``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid json (the message names the option, the file and where).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} '{path}' does not exist")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{flag} '{path}' is not valid json: {e}") from None
