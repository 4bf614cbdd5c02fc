"""One exception type for every problem with user input.

The CLI and run_search.py catch it and print its message with exit code 2, no traceback.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn


class InputError(ValueError):
    """Bad user input: a file, a line of a file, an option or a config value."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = None if path is None else str(path)
        self.line = line


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one InputError line (exit 2) instead of usage text plus the error."""

    def error(self, message: str) -> NoReturn:
        raise InputError(f"{message} (see {self.prog} --help)")
