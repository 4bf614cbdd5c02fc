"""Module paths that experiments written by earlier versions pickled, mapped to where those names live now.

Tune saves its state (tuner.pkl, the searcher's state, the search generator's) with classes named by module path,
so resuming or finalizing an older experiment imports `tune_siamese.tuning.CompletionWatch` and the like. Those
modules are gone; this finder answers for them with a module whose attributes are the moved names, each lookup
warning (DeprecationWarning) that the experiment was written by an older version.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any, Sequence

# old module -> the modules its names live in now. Tune's saved state names the searcher, the search generator,
# the study storage, the callbacks and reporter, and functions it was given (trial folder and name creators,
# trainables) by their module path.
_TUNING = ("tune_siamese.searching.tuner", "tune_siamese.searching.trainable", "tune_siamese.searching.callbacks",
           "tune_siamese.searching.live_table", "tune_siamese.searching.samplers")
MOVED: dict[str, tuple[str, ...]] = {
    "tune_siamese.search": _TUNING,  # the Ray layer's name before tuning.py (0.1.0)
    "tune_siamese.tuning": _TUNING,
    "tune_siamese.study": ("tune_siamese.searching.study",),
    "tune_siamese.study_search": ("tune_siamese.searching.study_search",),
    "tune_siamese.finalists": ("tune_siamese.final.finalists",),
    "tune_siamese.finish": ("tune_siamese.final.finalists",),  # train_finalist, before finalists.py
}


class _MovedModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # a module's own attributes (__file__, __path__) are not names that moved:
            raise AttributeError(name)  # answering them would make tools that walk sys.modules warn
        for target in MOVED[self.__name__]:
            module = importlib.import_module(target)
            if hasattr(module, name):
                value = getattr(module, name)
                home = getattr(value, "__module__", target)
                warnings.warn(f"{self.__name__}.{name} (saved by an earlier tune-siamese) is now {home}.{name}; "
                              "the experiment still resumes", DeprecationWarning, stacklevel=2)
                return value
        raise AttributeError(f"{self.__name__} (a module of an earlier tune-siamese) had no {name} that moved")


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.machinery.ModuleSpec(fullname, self) if fullname in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _MovedModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class Package(types.ModuleType):
    """The package's own class: importing an old module sets it as an attribute of the package, which must not
    replace a public name (`tune_siamese.search` is the API function, and was once the Ray layer's module)."""

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, _MovedModule):
            return
        super().__setattr__(name, value)


def install(package: str) -> None:
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
    sys.modules[package].__class__ = Package
