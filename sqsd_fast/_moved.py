"""Old import paths of modules that moved when the tree was laid out in layers, kept working
for code written against them: ``import sqsd_fast.pipeline`` gives ``sqsd_fast.app.pipeline``
(the same module object, so patches and isinstance checks agree)."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "sqsd_fast.cli": "sqsd_fast.app.cli",
    "sqsd_fast.commands": "sqsd_fast.app.commands",
    "sqsd_fast.pipeline": "sqsd_fast.app.pipeline",
    "sqsd_fast.distributed": "sqsd_fast.app.distributed",
    "sqsd_fast.subsets": "sqsd_fast.app.subsets",
    "sqsd_fast.filtering": "sqsd_fast.app.filtering",
    "sqsd_fast.run_scorer": "sqsd_fast.app.run_protocol",
    "sqsd_fast.ranking": "sqsd_fast.io.ranking",
    "sqsd_fast.quiet": "sqsd_fast.models.quiet",
    "sqsd_fast.checks": "sqsd_fast.options.checks",
    "sqsd_fast.training.options": "sqsd_fast.options.train_adapter",
    "sqsd_fast.evaluation.options": "sqsd_fast.options.evaluate",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers an old name with the module at its new place (imported on first use)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass   # the module at the new place has run already


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
