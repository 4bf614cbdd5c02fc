"""One exception type for every problem with user input.

The CLI and run_search.py catch it and print its message with exit code 2, no traceback.
"""
from __future__ import annotations

import argparse
import difflib
from pathlib import Path
from typing import Any, NoReturn


class InputError(ValueError):
    """Bad user input: a file, a line of a file, an option or a config value."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = None if path is None else str(path)
        self.line = line


# The most characters of one piece of user input that a message quotes: a pair-list line of 200 MB once went whole
# into a "one-line" error.
QUOTED_CHARACTERS = 200


def quoted(text: str, limit: int = QUOTED_CHARACTERS) -> str:
    """`text` as repr() quotes it, cut to its first `limit` characters (its length said) when longer."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}…({len(text)} characters)"


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one InputError line (exit 2) instead of usage text plus the error,
    with the option a misspelt one was probably meant to be. No abbreviations: argparse would take
    `--num-sample 3` for --num-samples and start an hour's search on a typo's guess."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message: str) -> NoReturn:
        hint = ""
        if message.startswith("unrecognized arguments:"):
            given = [word.split("=")[0] for word in message.split(":", 1)[1].split() if word.startswith("--")]
            close = [difflib.get_close_matches(word, list(self._option_string_actions), n=1) for word in given]
            hint = next((f"; did you mean {match[0]}?" for match in close if match), "")
        raise InputError(f"{message}{hint} (see {self.prog} --help)")


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a search that can be resumed; its message says how (and was printed).

    A KeyboardInterrupt, so code that stops on Ctrl-C still does; `experiment` is the folder to resume.

    Example:
        try:
            result = ts.search(space="smoke")
        except ts.SearchInterrupted as stopped:
            result = ts.resume(stopped.experiment)
    """

    def __init__(self, message: str, experiment: str):
        super().__init__(message)
        self.message, self.experiment = message, experiment
