"""Print the installed versions of tune-siamese's dependencies (with its `dev` extra, which includes the other
extras), as a pip constraints file: the lock the README's setup installs from.

Only the packages this project pulls in are listed, walked from its own metadata (markers evaluated here), so a
machine's unrelated packages stay out. `.ci/run` calls this after a passing run against the newest versions
(TUNE_SIAMESE_UPGRADE=1); nothing else writes the lock.
"""
from __future__ import annotations

import platform
import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT, EXTRAS = "tune-siamese", ("dev",)


def closure() -> dict[str, str]:
    """{canonical name: installed version} of every distribution the project (with EXTRAS) needs here."""
    found: dict[str, str] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(PROJECT, EXTRAS)]
    walked: set[tuple[str, tuple[str, ...]]] = set()  # (name, extras): ray and ray[tune] need different things
    while todo:
        name, extras = todo.pop()
        dist = metadata.distribution(name)
        for line in dist.requires or []:
            requirement = Requirement(line)
            # A requirement applies when its marker holds with no extra or with one of the extras asked for.
            if requirement.marker and not any(requirement.marker.evaluate({"extra": extra})
                                              for extra in ("", *extras)):
                continue
            key, wanted = canonicalize_name(requirement.name), tuple(sorted(requirement.extras))
            if key == PROJECT or (key, wanted) in walked:
                continue
            walked.add((key, wanted))
            try:
                found[key] = metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                sys.exit(f"{requirement.name} (needed by {name}) is not installed; install the project first")
            todo.append((requirement.name, wanted))
    return found


def main() -> None:
    versions = closure()
    print("# The versions tune-siamese's test suite last passed with: pip constraints for the README's setup.")
    print(f"# Made by .ci/freeze_constraints.py on Python {platform.python_version()}, {sys.platform} "
          f"{platform.machine()}, after `TUNE_SIAMESE_UPGRADE=1 bash .ci/run` passed.")
    print("# Refresh on purpose only: run that command again, review the diff, commit it.")
    for name in sorted(versions):
        print(f"{name}=={versions[name]}")


if __name__ == "__main__":
    main()
