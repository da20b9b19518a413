"""Patches the runner installs around strategy code, in every mode. Runs inside the sandbox.

Generated files read their data from someone else's laptop (`/Users/<someone>/.../BTC-USD-15m.csv`),
from a bare name (`BTC-USD-15m.csv`), or from a `Path(__file__).parent / "data"` path, and often check
`os.path.exists` first. Hybrid modules do that at import time, so the redirect must hold in class
mode as much as in script mode: any read of a *missing* data file is served the configured dataset,
and an existing file is read as it is. The source is never rewritten.

The hooks also watch `Backtest`: the options a module builds its own backtest with (a hybrid run in
class mode keeps its cash and commission) and the result of every `run()`/`optimize()` it makes
(script mode reports the script's own backtest). Plotting is silenced: there is no display.
"""

from __future__ import annotations

import builtins
import io
import os
import stat
from dataclasses import dataclass, field
from typing import Any

DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".txt", ".tsv", ".feather")
BACKTEST_OPTIONS = frozenset({
    "cash", "spread", "commission", "margin", "trade_on_close", "hedging", "exclusive_orders",
    "finalize_trades",
})  # fmt: skip
_CSV_LIKE = (".csv", ".csv.gz", ".txt", ".tsv")
# Inside the sandbox /tmp is the size-capped scratch: writes the code cannot make where it asked land here.
OUTPUT_DIR = "/tmp/rbi-output"


@dataclass(slots=True)
class BacktestRun:
    """One `run()` or `optimize()` the strategy's own code made."""

    backtest: Any
    options: dict[str, Any]
    stats: Any


@dataclass(slots=True)
class RunHooks:
    raw_data_path: str | None
    redirects: list[str] = field(default_factory=list)
    # Paths the code wrote to that are not writable here; the files went under OUTPUT_DIR.
    outputs: list[str] = field(default_factory=list)
    # Options of each Backtest the code constructed, by id(); and its runs, in order.
    constructed: dict[int, dict[str, Any]] = field(default_factory=dict)
    runs: list[BacktestRun] = field(default_factory=list)
    _restore: list[tuple[Any, str, Any]] = field(default_factory=list)

    @property
    def stats(self) -> Any:
        """The result of the code's last backtest, or None when it ran none."""
        return self.runs[-1].stats if self.runs else None

    @property
    def last_options(self) -> dict[str, Any]:
        """The options of the last Backtest the code built (a hybrid's own cash and commission)."""
        if not self.constructed:
            return {}
        return dict(list(self.constructed.values())[-1])

    def served(self, path: Any) -> Any:
        """The dataset in place of a missing data file; anything else unchanged."""
        if self.raw_data_path is None or not isinstance(path, str | os.PathLike):
            return path
        text = os.fspath(path)
        if isinstance(text, bytes) or not text.lower().endswith(DATA_SUFFIXES):
            return path
        if text == self.raw_data_path or _exists(text):
            return path
        written = _mirror(text)
        if _exists(written):
            return written  # a file the code wrote earlier (to a place it could not write) and now reads back
        if text not in self.redirects:
            self.redirects.append(text)
        return self.raw_data_path

    def written(self, path: Any) -> Any:
        """Where a write goes: as asked when that directory is writable, else into the scratch mirror.

        Generated scripts save their stats and plots to the author's folders (`/Users/<someone>/results`)
        or next to the script (read-only here). A bare run on the author's machine succeeds, so the run
        here must too: the file lands under OUTPUT_DIR instead of failing a finished backtest.
        """
        if not isinstance(path, str | os.PathLike):
            return path
        text = os.fspath(path)
        if isinstance(text, bytes):
            return path
        if _exists(text) and os.access(text, os.W_OK):
            return path  # /dev/null, a file in scratch
        parent = os.path.dirname(os.path.abspath(text)) or "."
        if _is_dir(parent) and os.access(parent, os.W_OK):
            return path
        target = _mirror(text)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if text not in self.outputs:
            self.outputs.append(text)
        return target

    def _serves_as_csv(self, original: Any, target: Any) -> bool:
        """A missing Parquet/Feather file redirected to the CSV dataset is read as CSV."""
        return target is not original and str(target).lower().endswith(_CSV_LIKE)

    def install(self) -> None:
        import pathlib

        import numpy as np
        import pandas as pd
        from backtesting import Backtest

        hooks = self
        originals = {
            "read_csv": pd.read_csv, "read_table": pd.read_table, "read_parquet": pd.read_parquet,
            "read_feather": pd.read_feather, "open": builtins.open,
            "loadtxt": np.loadtxt, "genfromtxt": np.genfromtxt, "exists": os.path.exists,
            "isfile": os.path.isfile, "path_exists": pathlib.Path.exists, "path_is_file": pathlib.Path.is_file,
            "makedirs": os.makedirs, "isdir": os.path.isdir, "path_is_dir": pathlib.Path.is_dir,
        }
        read_csv = originals["read_csv"]

        def reader(name: str) -> Any:
            original = originals[name]

            def patched(path: Any, *args: Any, **kwargs: Any) -> Any:
                target = hooks.served(path)
                if name not in ("read_csv", "read_table") and hooks._serves_as_csv(path, target):
                    return read_csv(target)
                return original(target, *args, **kwargs)

            return patched

        def text_loader(name: str) -> Any:
            original = originals[name]

            def patched(fname: Any, *args: Any, **kwargs: Any) -> Any:
                return original(hooks.served(fname), *args, **kwargs)

            return patched

        def patched_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            reading = "r" in mode and not any(ch in mode for ch in "wax+")
            file = hooks.served(file) if reading else hooks.written(file)
            return originals["open"](file, mode, *args, **kwargs)

        def patched_makedirs(name: Any, mode: int = 0o777, exist_ok: bool = False) -> None:
            target = name
            if isinstance(name, str | os.PathLike) and not _is_dir(os.fspath(name)):
                # A folder the code cannot create here is made in the mirror, where its writes will go.
                existing = os.path.abspath(os.fspath(name))
                while not _is_dir(existing):
                    existing = os.path.dirname(existing)
                if not os.access(existing, os.W_OK):
                    target = _mirror(os.fspath(name))
            originals["makedirs"](target, mode, exist_ok=exist_ok)

        def exists_check(name: str) -> Any:
            original = originals[name]

            def patched(path: Any) -> bool:
                # `if not os.path.exists(DATA): sys.exit(...)` must see the file it is about to be served,
                # and pandas' "does the folder exist" check must see a folder made in the mirror.
                if original(hooks.served(path)):
                    return True
                return isinstance(path, str | os.PathLike) and bool(original(_mirror(os.fspath(path))))

            return patched

        def path_check(name: str) -> Any:
            original = originals[name]

            def patched(self: pathlib.Path, *args: Any, **kwargs: Any) -> bool:
                target = hooks.served(self)
                if original(pathlib.Path(target) if target is not self else self, *args, **kwargs):
                    return True
                return bool(original(pathlib.Path(_mirror(os.fspath(self))), *args, **kwargs))

            return patched

        init, run, optimize = Backtest.__init__, Backtest.run, Backtest.optimize

        def patched_init(self: Any, data: Any, strategy: Any, *args: Any, **kwargs: Any) -> None:
            init(self, data, strategy, *args, **kwargs)
            hooks.constructed[id(self)] = {k: v for k, v in kwargs.items() if k in BACKTEST_OPTIONS}

        def patched_run(self: Any, **kwargs: Any) -> Any:
            stats = run(self, **kwargs)
            hooks.runs.append(BacktestRun(self, hooks.constructed.get(id(self), {}), stats))
            return stats

        def patched_optimize(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = optimize(self, *args, **kwargs)
            best = result[0] if isinstance(result, tuple) else result
            hooks.runs.append(BacktestRun(self, hooks.constructed.get(id(self), {}), best))
            return result

        patches: list[tuple[Any, str, Any]] = [
            (pd, "read_csv", reader("read_csv")),
            (pd, "read_table", reader("read_table")),
            (pd, "read_parquet", reader("read_parquet")),
            (pd, "read_feather", reader("read_feather")),
            (np, "loadtxt", text_loader("loadtxt")),
            (np, "genfromtxt", text_loader("genfromtxt")),
            (builtins, "open", patched_open),
            (io, "open", patched_open),
            (os, "makedirs", patched_makedirs),
            (os.path, "exists", exists_check("exists")),
            (os.path, "isfile", exists_check("isfile")),
            (os.path, "isdir", exists_check("isdir")),
            (pathlib.Path, "is_dir", path_check("path_is_dir")),
            (pathlib.Path, "exists", path_check("path_exists")),
            (pathlib.Path, "is_file", path_check("path_is_file")),
            (Backtest, "__init__", patched_init),
            (Backtest, "run", patched_run),
            (Backtest, "optimize", patched_optimize),
            (Backtest, "plot", lambda self, *a, **k: None),
        ]
        for owner, name, replacement in patches:
            self._restore.append((owner, name, getattr(owner, name)))
            setattr(owner, name, replacement)

    def uninstall(self) -> None:
        """Undo the patches (matters only when the runner is used in-process, as in tests)."""
        for owner, name, original in reversed(self._restore):
            setattr(owner, name, original)
        self._restore.clear()


def _mirror(path: str) -> str:
    """The place under OUTPUT_DIR that stands for `path` (absolute paths keep their shape)."""
    return os.path.join(OUTPUT_DIR, os.path.abspath(path).lstrip(os.sep))


def _is_dir(path: str) -> bool:
    # Through os.stat, which the hooks leave alone: os.path.isdir itself is patched while they run.
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _exists(path: str) -> bool:
    try:
        os.stat(path)
    except (OSError, ValueError):
        return False
    return True
