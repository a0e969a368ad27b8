"""Logic of the command-line tools in ``tools/`` (the scripts there stay thin)."""
