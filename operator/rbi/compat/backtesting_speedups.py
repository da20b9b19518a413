"""Faster, result-identical replacements for a few of backtesting.py's per-bar hot spots.

A sandboxed trial spends its time in backtesting.py's own Python bar loop (`Backtest.run`). The
host checks every result, and the optimizer's results must equal `Backtest.optimize`'s, so each
replacement here must behave exactly as the code it replaces: same return values and types, same
side effects, same warnings, same exceptions. Each one takes a fast path only where that was proved
equivalent by reading backtesting 0.6.x's source (the proof sits next to it) and hands every other
input to the original function.

`install()` must run before strategy code is imported: strategies write
`from backtesting.lib import crossover`, which binds whatever `backtesting.lib.crossover` is at that
moment. Replacing the module attribute (rather than the original's `__code__`, which would make the
original object itself fast but leave no clean original to fall back to or restore) covers every
later `from backtesting.lib import crossover` and `lib.crossover(...)`, and `lib.cross()`, which
looks `crossover` up in the module's globals. The sandbox worker imports backtesting.lib, installs,
and only then forks the children that import a strategy. A reference taken before `install()` keeps
the original function, which is slower but gives the same results.

Patched:

* `_Broker._process_orders`: returns at once when no order is queued.
* `_Broker._position_size`, `_position_initial_value`, `_position_unrealized_pl`: a
  `functools.cached_property` subclass whose `__get__` takes no lock (Python 3.11's takes an RLock on
  every miss, and `_Broker.next` forces a miss on `_position_unrealized_pl` every bar).
* `backtesting.lib.crossover`: skips the `isinstance(x, pd.Series)` / `isinstance(x, Number)`
  (an ABC check) conversions for plain numpy arrays and backtesting's own `_Array`/`_Indicator`.

Not patched: the `_tqdm` wrapper around the bar loop (with tqdm disabled it costs one generator step
per bar, under 1%, and replacing it would change what tqdm prints when it is not disabled), and
`_Data._set_length` (two statements already; nothing to take away).
"""

from __future__ import annotations

import abc
import functools
import numbers
from collections.abc import Callable
from typing import Any

import backtesting._util as _bt_util
import backtesting.backtesting as _bt
import backtesting.lib as _bt_lib
import numpy as np
import pandas as pd

__all__ = ["install", "installed", "uninstall"]

_Broker: Any = _bt._Broker
_Data: Any = _bt_util._Data
_Array: Any = _bt_util._Array
_Indicator: Any = _bt_util._Indicator
_Trade: Any = _bt.Trade

# (owner, attribute name) -> the original value, filled by install(), emptied by uninstall().
_originals: dict[tuple[Any, str], Any] = {}
_CACHED_PROPERTIES = ("_position_size", "_position_initial_value", "_position_unrealized_pl")


# --- _Broker._process_orders ------------------------------------------------------------------------


def _make_process_orders(original: Callable[[Any], None]) -> Callable[[Any], None]:
    def _process_orders(self: Any) -> None:
        # Equivalence: with `self.orders` empty, the original
        #   1. reads `data._current_value("Open")`, `("High")`, `("Low")`: `assert self.__len >= 0`, then
        #      `self.__arrays[key][self.__len - 1]`; reads change nothing, so they matter only if they raise;
        #   2. iterates `list(self.orders)`, which is empty, so `reprocess_orders` stays False;
        #   3. skips the `if reprocess_orders:` tail and returns None.
        # The reads cannot raise when all three keys are in `__arrays` and 1 <= `__len` <= the columns'
        # length (`__arrays` is built in one go by `_Data._update` from one DataFrame's columns, all
        # 1-D and equally long, and a 1-D numpy array indexed by 0 <= n - 1 < len neither raises nor
        # warns). Only then is the early return taken; anything else (other orders, a `_Data`
        # subclass, a column deleted in `init()`, a length set out of range) runs the original.
        if not self.orders:
            data = self._data
            if type(data) is _Data:
                state = data.__dict__
                arrays = state.get("_Data__arrays")
                length = state.get("_Data__len")
                if (type(arrays) is dict and type(length) is int
                        and "Open" in arrays and "High" in arrays and "Low" in arrays):
                    opens = arrays["Open"]
                    if type(opens) is _Array and opens.ndim == 1 and 1 <= length <= len(opens):
                        return None
        return original(self)

    functools.update_wrapper(_process_orders, original)
    return _process_orders


# --- _Broker cached properties ----------------------------------------------------------------------

_NOT_FOUND = object()


class _LockFreeCachedProperty(functools.cached_property):  # type: ignore[type-arg]
    """`functools.cached_property` without the lock that Python 3.11 takes on every cache miss.

    Equivalence: the same `func`, `attrname` and `__doc__`, and the same `__get__` as Python 3.12's
    `cached_property` (3.12 dropped the lock): return the descriptor for class access, else the value
    cached in `instance.__dict__[attrname]`, else compute `func(instance)`, store it there and return
    it, with the same TypeErrors where there is no (writable) `__dict__`. The 3.11 lock only
    serialises threads computing the same property at once; a backtest runs its broker in one
    thread. `_Broker._trades_cache_clear` still finds `.func.__name__` and pops the same keys, and
    since this stays a non-data descriptor, a cached value in `__dict__` is still found without any
    call at all.
    """

    def __init__(self, original: functools.cached_property) -> None:  # type: ignore[type-arg]
        super().__init__(original.func)
        self.attrname = original.attrname
        self.__doc__ = original.__doc__

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        name = self.attrname
        if name is None:
            raise TypeError("Cannot use cached_property instance without calling __set_name__ on it.")
        try:
            cache = instance.__dict__
        except AttributeError:
            msg = f"No '__dict__' attribute on {type(instance).__name__!r} instance to cache {name!r} property."
            raise TypeError(msg) from None
        val = cache.get(name, _NOT_FOUND)
        if val is _NOT_FOUND:
            val = self.func(instance)
            try:
                cache[name] = val
            except TypeError:
                msg = (f"The '__dict__' attribute on {type(instance).__name__!r} instance does not support "
                       f"item assignment for caching {name!r} property.")
                raise TypeError(msg) from None
        return val


class _UnrealizedPlProperty(_LockFreeCachedProperty):
    """`_Broker._position_unrealized_pl`, computed in this one frame on the common path.

    The original is `self.last_price * self._position_size - sum(trade.size * trade.entry_price for
    trade in self.trades)`, behind a cached_property, and `_Broker.next` drops the cached value every
    bar, so each bar runs `__get__`, the function, `last_price`, `_Data._current_value`, a generator
    and two `Trade` properties: seven Python frames. Here, for a plain `_Broker` whose `_data` is a
    plain `_Data` and while those four accessors are still backtesting's own (checked by identity on
    every call), the same expressions run inline, in the same order, on the same objects:

    * `last_price` is `self._data._current_value('Close')`, whose body is
      `assert self.__len >= 0, self` and `return self.__arrays[key][self.__len - 1]`; inside `_Data`
      `self.__len` is the attribute `_Data__len`, so reading `data._Data__len` is the same lookup
      (with the same `__getattr__` fallback, should it be missing).
    * `Trade.size` / `Trade.entry_price` return `self.__size` / `self.__entry_price`, i.e.
      `_Trade__size` / `_Trade__entry_price`, for an object that is exactly a `Trade`.
    * `sum()` only sees the sequence of items: summing a tuple of the same items gives the same
      result. With no trade the generator yields nothing, `sum(())`; with one trade the generator
      evaluates its item and then adds it, as `sum((item,))` does. With two or more trades the
      original generator expression runs unchanged (building a tuple first would reorder the item
      products and the additions, which could reorder overflow warnings).
    """

    def __init__(self, original: functools.cached_property, last_price: Any,  # type: ignore[type-arg]
                 current_value: Any, trade_size: Any, trade_entry_price: Any) -> None:
        super().__init__(original)
        self._accessors = (last_price, current_value, trade_size, trade_entry_price)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        if type(instance) is not _Broker:
            return super().__get__(instance, owner)
        cache = instance.__dict__
        name = self.attrname
        val = cache.get(name, _NOT_FOUND)
        if val is not _NOT_FOUND:
            return val
        last_price, current_value, trade_size, trade_entry_price = self._accessors
        if _Broker.last_price is not last_price:
            return super().__get__(instance, owner)
        data = instance._data
        if type(data) is _Data and _Data._current_value is current_value and "_current_value" not in data.__dict__:
            assert data._Data__len >= 0, data
            price = data._Data__arrays["Close"][data._Data__len - 1]
        else:
            price = instance.last_price
        value = price * instance._position_size
        trades = instance.trades
        if type(trades) is list and len(trades) <= 1:
            if not trades:
                val = value - sum(())
            else:
                trade = trades[0]
                if type(trade) is _Trade and _Trade.size is trade_size and _Trade.entry_price is trade_entry_price:
                    val = value - sum((trade._Trade__size * trade._Trade__entry_price,))
                else:
                    val = value - sum((trade.size * trade.entry_price,))
        else:
            val = value - sum(trade.size * trade.entry_price for trade in trades)
        cache[name] = val  # a plain _Broker's __dict__ is a dict: no TypeError to translate
        return val


# --- backtesting.lib.crossover ----------------------------------------------------------------------

_FAST_SERIES_TYPES = (np.ndarray, _Array, _Indicator)


class _CrossoverGuard:
    """Whether `isinstance(x, pd.Series)` and `isinstance(x, Number)` are False for the fast types.

    `pd.Series` is an ordinary class, so the first is decided by the MRO and cannot change. `Number`
    is an ABC: `Number.register(np.ndarray)` (or any other ABC registration) could change the
    second, and every registration anywhere bumps `abc.get_cache_token()`, so the check is redone
    whenever the token has moved. `issubclass(type(x), C)` is what `isinstance(x, C)` decides for
    these types (they do not override `__class__`).
    """

    def __init__(self) -> None:
        self.token: object = None
        self.ok = False

    def refresh(self) -> bool:
        self.token = abc.get_cache_token()
        self.ok = not any(issubclass(cls, (pd.Series, numbers.Number)) for cls in _FAST_SERIES_TYPES)
        return self.ok


_crossover_guard = _CrossoverGuard()


def _make_crossover(original: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    fast_types = frozenset(_FAST_SERIES_TYPES)
    guard = _crossover_guard
    get_cache_token = abc.get_cache_token

    def crossover(series1: Any, series2: Any) -> Any:
        # Equivalence: the original maps a pd.Series to `.values` and a Number to `(x, x)` and keeps
        # anything else as is, then evaluates the expression below under the same `except IndexError`.
        # For exactly np.ndarray / _Array / _Indicator both isinstance checks are False (see
        # _CrossoverGuard), so the original keeps both arguments as they are: this is the same
        # expression on the same objects. Every other type goes to the original.
        if (type(series1) in fast_types and type(series2) in fast_types
                and (guard.ok if guard.token == get_cache_token() else guard.refresh())):
            try:
                return series1[-2] < series2[-2] and series1[-1] > series2[-1]
            except IndexError:
                return False
        return original(series1, series2)

    functools.update_wrapper(crossover, original)
    return crossover


# --- install / uninstall ----------------------------------------------------------------------------


def _replace(owner: Any, name: str, value: Any) -> None:
    _originals[(owner, name)] = vars(owner)[name]
    setattr(owner, name, value)


def install() -> None:
    """Put the faster replacements in place. Idempotent; run it before importing strategy code."""
    if _originals:
        return
    _replace(_Broker, "_process_orders", _make_process_orders(vars(_Broker)["_process_orders"]))
    for name in _CACHED_PROPERTIES:
        original = vars(_Broker)[name]
        if type(original) is not functools.cached_property:
            continue
        if name == "_position_unrealized_pl":
            _replace(_Broker, name, _UnrealizedPlProperty(original, vars(_Broker)["last_price"],
                                                          vars(_Data)["_current_value"], vars(_Trade)["size"],
                                                          vars(_Trade)["entry_price"]))
        else:
            _replace(_Broker, name, _LockFreeCachedProperty(original))
    _crossover_guard.token = None
    _replace(_bt_lib, "crossover", _make_crossover(vars(_bt_lib)["crossover"]))


def uninstall() -> None:
    """Put every original back (the same objects). Idempotent."""
    while _originals:
        (owner, name), value = _originals.popitem()
        setattr(owner, name, value)


def installed() -> bool:
    """True while the replacements are in place."""
    return bool(_originals)
