"""Indicator reuse across the trials of one batch: `Strategy.I(func, *args)` computed once.

Runs inside the sandboxed child (and the Job runner). A parameter search runs the same code
many times, and most parameters usually feed only `next()`: the indicators a trial asks for
have very often been computed by an earlier trial of the batch already.

The key must never say "same" when the values could differ:

- the function by identity, and only functions that are stable for the whole batch (defined at
  module level or in a library): no bound methods (they see `self` and so the trial's
  parameters), nothing defined inside a function (`<locals>`: closures over per-trial state),
  no callable objects; the module globals a plain function reads that hold data (numbers,
  strings, containers, arrays) are part of the key by content, and one it cannot hash makes the
  call uncacheable;
- the arguments by content: arrays and pandas objects by a hash of their bytes (the data arrays
  are new objects in every run, so identity would never match), scalars by type and value,
  containers recursively; the strategy's `self.data` by the data window; anything else makes the
  call uncacheable;
- the keyword arguments the function receives (the plot-only options of `I` are left out);
- the data window the trial runs on.

What is stored is a private copy, and every hit hands out a fresh copy: a trial that writes
into its indicator array cannot change what the next trial gets.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import types
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

# The options of Strategy.I itself; they change only how an indicator is drawn.
_I_OPTIONS = frozenset({"name", "plot", "overlay", "color", "scatter"})
_MAX_DEPTH = 4
_MAX_ITEMS = 64
DEFAULT_MAX_BYTES = 256 * 2**20


class _Uncacheable(Exception):
    pass


def _digest(data: Any) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _array_key(value: Any) -> tuple[Any, ...]:
    import numpy as np

    array = np.ascontiguousarray(value)
    if array.dtype.hasobject:
        raise _Uncacheable("object array")
    return ("ndarray", array.dtype.str, array.shape, _digest(array.view(np.uint8).reshape(-1).data))


def _pandas_key(value: Any) -> tuple[Any, ...]:
    import pandas as pd

    hashed = pd.util.hash_pandas_object(value, index=True).to_numpy()
    columns = tuple(map(str, value.columns)) if isinstance(value, pd.DataFrame) else (str(value.name),)
    dtypes = tuple(map(str, value.dtypes)) if isinstance(value, pd.DataFrame) else (str(value.dtype),)
    return (type(value).__name__, columns, dtypes, len(value), _digest(hashed.data))


def value_key(value: Any, window: Hashable, depth: int = 0) -> Hashable:
    """A content key for one argument; raises _Uncacheable for anything it cannot vouch for."""
    import numpy as np
    import pandas as pd
    from backtesting._util import _Data

    if depth > _MAX_DEPTH:
        raise _Uncacheable("nested too deep")
    if value is None or isinstance(value, bool | int | str | bytes):
        return (type(value).__name__, value)
    if isinstance(value, float):
        return ("float", repr(value))  # repr keeps nan and -0.0 apart from everything else
    if isinstance(value, np.generic):
        return ("np", value.dtype.str, value.tobytes())
    if isinstance(value, _Data):
        return ("data", window)
    if isinstance(value, np.ndarray):
        return _array_key(value)
    if isinstance(value, pd.Series | pd.DataFrame):
        return _pandas_key(value)
    if isinstance(value, tuple | list):
        if len(value) > _MAX_ITEMS:
            raise _Uncacheable("long sequence")
        return (type(value).__name__, tuple(value_key(v, window, depth + 1) for v in value))
    if isinstance(value, dict):
        if len(value) > _MAX_ITEMS or not all(isinstance(k, str) for k in value):
            raise _Uncacheable("dict")
        return ("dict", tuple(sorted((k, value_key(v, window, depth + 1)) for k, v in value.items())))
    raise _Uncacheable(type(value).__name__)


def _globals_read(func: types.FunctionType) -> tuple[Any, ...]:
    """The data among the module globals a function reads, by content: a strategy may set one from a
    parameter. Modules, functions and classes are code, not data; any other object makes it uncacheable."""
    names = []
    for name in func.__code__.co_names:
        if name not in func.__globals__:
            continue  # a builtin or an attribute name
        value = func.__globals__[name]
        if isinstance(value, types.ModuleType | types.FunctionType | types.BuiltinFunctionType | type):
            continue
        names.append((name, value_key(value, None)))
    return tuple(names)


def function_key(func: Any) -> Hashable:
    """The function itself (held, so its id cannot be reused) plus what it reads; or _Uncacheable."""
    import numpy as np

    if isinstance(func, types.MethodType):
        raise _Uncacheable("bound method")
    if isinstance(func, types.BuiltinFunctionType | np.ufunc):
        return (func,)
    if not isinstance(func, types.FunctionType):
        # Cython functions (TA-Lib's) are stable module attributes too; other callables are objects.
        if type(func).__name__ == "cython_function_or_method":
            return (func,)
        raise _Uncacheable(type(func).__name__)
    if "<locals>" in func.__qualname__:
        raise _Uncacheable("defined inside a function")
    # Numpy ufuncs, TA-Lib's wrapped functions and the like read no strategy data; what they do read
    # (say `np`) was skipped above as code.
    extra: tuple[Any, ...] = _globals_read(func)
    wrapped = getattr(func, "__wrapped__", None)
    if isinstance(wrapped, types.FunctionType):
        extra += _globals_read(wrapped)
    return (func, extra)


def _copy(value: Any) -> Any:
    """A deep copy of an indicator result, or _Uncacheable if it is not plain arrays."""
    import numpy as np
    import pandas as pd

    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise _Uncacheable("object array")
        return value.copy()
    if isinstance(value, pd.Series | pd.DataFrame):
        return value.copy(deep=True)
    if isinstance(value, tuple | list) and len(value) <= _MAX_ITEMS:
        return type(value)(_copy(v) for v in value)
    raise _Uncacheable(type(value).__name__)


def _nbytes(value: Any) -> int:
    if isinstance(value, tuple | list):
        return sum(_nbytes(v) for v in value)
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    memory = getattr(value, "memory_usage", None)
    return int(memory(deep=True).sum()) if callable(memory) else 0


@dataclass(slots=True)
class IndicatorCache:
    """LRU of indicator results, bounded in bytes (the batch's memory limit covers it)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    window: Hashable = None
    hits: int = 0
    misses: int = 0
    uncacheable: int = 0
    _entries: OrderedDict[Hashable, tuple[Any, int]] = field(default_factory=OrderedDict)
    _bytes: int = 0

    def key(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable | None:
        try:
            return (function_key(func), self.window, value_key(args, self.window),
                    value_key(kwargs, self.window))
        except _Uncacheable:
            return None

    def lookup(self, key: Hashable) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return _copy(entry[0])

    def store(self, key: Hashable, value: Any) -> None:
        try:
            private = _copy(value)
        except _Uncacheable:
            return
        size = _nbytes(private)
        if size > self.max_bytes:
            return
        while self._entries and self._bytes + size > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped
        self._entries[key] = (private, size)
        self._bytes += size

    def call(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key = self.key(func, args, kwargs)
        if key is None:
            self.uncacheable += 1
            return func(*args, **kwargs)
        hit = self.lookup(key)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        value = func(*args, **kwargs)
        self.store(key, value)
        return value

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "uncacheable": self.uncacheable,
                "entries": len(self._entries), "bytes": self._bytes}


@contextlib.contextmanager
def installed(cache: IndicatorCache) -> Iterator[IndicatorCache]:
    """Route every `Strategy.I` through the cache while the block runs."""
    from backtesting import Strategy

    original = Strategy.I

    def cached_i(self: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        func_kwargs = {k: v for k, v in kwargs.items() if k not in _I_OPTIONS}
        options = {k: v for k, v in kwargs.items() if k in _I_OPTIONS}

        # Same name and signature as func, so the indicator's label (taken from func) is unchanged.
        @functools.wraps(func)
        def through_cache(*call_args: Any, **call_kwargs: Any) -> Any:
            return cache.call(func, call_args, call_kwargs)

        return original(self, through_cache, *args, **options, **func_kwargs)

    Strategy.I = cached_i
    try:
        yield cache
    finally:
        Strategy.I = original
