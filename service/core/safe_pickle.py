"""Unpickling data files that must stay data: numpy arrays in builtin containers, nothing else.

    obj = loads_arrays(data, encoding="bytes")   # a CIFAR batch: dict of bytes keys → arrays, lists

A pickle can name any importable callable and call it (``os.system``, ``builtins.exec``,
``subprocess.Popen``...), so a crafted data file would run code in every trial that reads it. This
unpickler resolves only the names an array pickle needs, from a fixed table (it imports nothing by
name), and refuses every other with ``ForbiddenPickle`` before anything is called. dict, list,
tuple, str, bytes, int, float, bool and None need no name at all (pickle opcodes build them).
"""

from __future__ import annotations

import _compat_pickle
import functools
import io
import pickle
from typing import Any


class ForbiddenPickle(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; nothing it names was called."""


@functools.cache
def _allowed() -> dict[tuple[str, str], Any]:
    import codecs

    import numpy as np

    try:  # numpy ≥ 2 (numpy.core is its deprecated alias)
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    table = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3's bytes in protocol ≤ 2 (the official CIFAR pickles are Python 2's; ours are 2 too)
        ("_codecs", "encode"): codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):  # the name in files pickled by numpy 1.x / 2.x
        table[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct  # protocols 0-4
        table[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    for builtins in ("builtins", "__builtin__"):  # Python 3 / Python 2 names of the module
        table.update({(builtins, c.__name__): c for c in (set, frozenset, bytearray)})
    return table


class ArrayUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` knows only numpy arrays and builtin containers."""

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed().get((module, name))
        if found is None:
            py3 = ".".join(_compat_pickle.NAME_MAPPING.get(
                (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name)))
            also = f" ({py3} in Python 3)" if py3 != f"{module}.{name}" else ""
            raise ForbiddenPickle(f"refused to load {module}.{name}{also}: a data pickle may hold only "
                                  f"numpy arrays, numbers, strings, bytes and builtin containers")
        return found


def loads_arrays(data: bytes, *, encoding: str = "ASCII") -> Any:
    """``pickle.loads`` for data: raises ``ForbiddenPickle`` (an ``UnpicklingError``) on any global
    outside the allow-list. ``encoding="bytes"`` reads Python 2's str as bytes (as CIFAR's keys)."""
    return ArrayUnpickler(io.BytesIO(data), encoding=encoding).load()
