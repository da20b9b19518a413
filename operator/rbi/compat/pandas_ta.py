"""`import pandas_ta` served by pandas-ta-classic, the maintained pure-Python fork.

Generated strategies write `import pandas_ta as ta`, `from pandas_ta import rsi`, `df.ta.rsi()`.
The original pandas_ta needs numba (which caps numpy) and is no longer released; pandas-ta-classic
keeps its API and its column names (`BBL_20_2.0`, `MACD_12_26_9`, ...). `install()` makes
`pandas_ta` and every `pandas_ta.<sub>` the same module objects as `pandas_ta_classic[.<sub>]`,
so identity checks and submodule imports behave as with the original. A real `pandas_ta` on the
path always wins: then nothing is aliased.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from collections.abc import Sequence

ALIAS = "pandas_ta"
TARGET = "pandas_ta_classic"


def _real_module(fullname: str) -> str:
    return TARGET + fullname[len(ALIAS):]


class _AliasLoader(importlib.abc.Loader):
    """Loads `pandas_ta.x` by importing `pandas_ta_classic.x` and putting that module under the alias."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # a throwaway module; exec_module replaces it in sys.modules

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system returns whatever sys.modules holds after exec_module, so the alias is the
        # real module object, with its own __spec__ and __name__ untouched.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas-ta-classic 0.8 touches an attribute pandas 3 deprecates
            sys.modules[module.__name__] = importlib.import_module(_real_module(module.__name__))


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        if importlib.util.find_spec(_real_module(fullname)) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(), is_package=True)


def _real_pandas_ta_installed() -> bool:
    return any(not isinstance(finder, _AliasFinder) and finder.find_spec(ALIAS, None) is not None  # type: ignore[call-arg]
               for finder in sys.meta_path if hasattr(finder, "find_spec"))


def install(*, warm: bool = False) -> bool:
    """Serve `pandas_ta` from pandas-ta-classic; True when the alias is (now) in place.

    Idempotent. `warm` also imports the library and every indicator (about a second, once), so a
    forked sandbox child finds them loaded instead of reading ~280 modules from disk per run.
    """
    if any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        installed = True
    elif ALIAS in sys.modules or _real_pandas_ta_installed() or importlib.util.find_spec(TARGET) is None:
        return False
    else:
        # First: the path finder would otherwise load `pandas_ta.overlap` a second time from the classic
        # package's __path__. Safe, since no other finder knows pandas_ta (checked just above).
        sys.meta_path.insert(0, _AliasFinder())
        installed = True
    if warm:
        _warm()
    return installed


def _warm() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as in _AliasLoader
        module = importlib.import_module(ALIAS)
        loader = importlib.import_module(TARGET + "._indicator_loader")
        for name in sorted(getattr(loader, "_INDICATOR_TO_CATEGORY", {})):
            try:
                getattr(module, name)
            except (AttributeError, ImportError):  # a few names (max, min, sum) are math aliases without a module
                continue
        for name in list(sys.modules):
            if name.startswith(TARGET + "."):
                sys.modules.setdefault(ALIAS + name[len(TARGET):], sys.modules[name])


def serves(module: str) -> bool:
    """True when `import <module>` works in the sandbox through this alias (host-side checks ask this)."""
    return module == ALIAS and importlib.util.find_spec(TARGET) is not None
