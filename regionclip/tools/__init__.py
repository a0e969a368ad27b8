"""Logic of the command-line tools in ``tools/`` (the scripts there stay thin)."""
import json
import os

__all__ = ["read_json"]


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
