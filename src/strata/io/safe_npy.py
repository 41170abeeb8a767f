"""Read ``.npy`` files that may hold a pickled object (MABe22's dict) without running code.

``np.load(path, allow_pickle=True)`` on a user's file executes whatever the pickle asks
for (``os.system`` included). This module parses the ``.npy`` header itself, loads plain
arrays with ``allow_pickle=False``, and unpickles object arrays with an unpickler that can
only rebuild numpy arrays, dtypes and scalars; the result is then checked to contain
nothing but plain containers, strings, numbers and numpy arrays.

No maintained library does this for ``.npy`` (``torch.load(weights_only=True)`` covers
torch's zip format only, ``fickling`` analyses rather than loads), hence the hand-written
unpickler below.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

# numpy's own reconstructors, taken from what it pickles (works for numpy 1 and 2).
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_SCALAR = np.float32(0).__reduce__()[0]

# The only globals a pickled numpy object array of plain data refers to. numpy 1 wrote
# ``numpy.core.*``; numpy 2 writes ``numpy._core.*``. Both map to the installed objects,
# so no module is ever imported by name from the file.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}

_PLAIN_SCALARS = (str, int, float, bool, type(None))


class UnsafeNpyError(ValueError):
    """A ``.npy`` file is malformed or holds something other than plain data."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals in ``_ALLOWED_GLOBALS``."""

    def __init__(self, file: BinaryIO, source: Path) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeNpyError(
                f"{self._source}: refused to unpickle global {module}.{name} "
                "(only numpy arrays, dtypes and scalars are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeNpyError(f"{self._source}: refused persistent id {pid!r} in pickle")


# Bounds on an unpickled structure: a MABe22 file holds a few thousand containers nested
# less than 5 deep.
MAX_OBJECTS = 10_000_000
MAX_DEPTH = 32


def _check_plain(obj: Any, source: Path, max_objects: int = MAX_OBJECTS, max_depth: int = MAX_DEPTH) -> None:
    """Raise unless ``obj`` is built from dict/list/tuple/str/numbers/None/numpy data.

    Pickles share references, so a 458-byte file can describe a 40-level DAG (``x = [x, x]``)
    whose tree walk takes 2^40 steps, or a list that contains itself. The walk therefore
    visits each container once (by identity), refuses a container found inside itself,
    and bounds the nesting depth and the number of objects.
    """
    done: set[int] = set()  # containers fully checked
    on_path: set[int] = set()  # containers whose walk is in progress (a cycle returns to one)
    count = 0
    # (item, where, depth, leaving): a container is pushed once to enter and once to leave
    stack: list[tuple[Any, str, int, bool]] = [(obj, "<root>", 0, False)]
    while stack:
        item, where, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(item))
            done.add(id(item))
            continue
        count += 1
        if count > max_objects:
            raise UnsafeNpyError(f"{source}: more than {max_objects:,} objects in the pickled data")
        if isinstance(item, np.ndarray):
            if item.dtype.hasobject:
                raise UnsafeNpyError(f"{source}: object array at {where} is not allowed")
        elif isinstance(item, np.generic):
            if item.dtype.hasobject:
                raise UnsafeNpyError(f"{source}: object scalar at {where} is not allowed")
        elif isinstance(item, (dict, list, tuple)):
            if id(item) in on_path:
                raise UnsafeNpyError(f"{source}: the pickled data contains itself at {where} (a cycle)")
            if id(item) in done:
                continue
            if depth >= max_depth:
                raise UnsafeNpyError(f"{source}: pickled data nested deeper than {max_depth} levels at {where}")
            on_path.add(id(item))
            stack.append((item, where, depth, True))
            if isinstance(item, dict):
                for key, value in item.items():
                    stack.append((key, f"{where} key {key!r}", depth + 1, False))
                    stack.append((value, f"{where}[{key!r}]", depth + 1, False))
            else:
                stack.extend((v, f"{where}[{i}]", depth + 1, False) for i, v in enumerate(item))
        elif not isinstance(item, _PLAIN_SCALARS):
            raise UnsafeNpyError(
                f"{source}: value of type {type(item).__module__}.{type(item).__qualname__} "
                f"at {where} is not plain data"
            )


def _check_size(path: Path, fh: BinaryIO, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse a numeric header that declares more bytes than the file holds, before numpy
    allocates them (a 100-byte header can ask for terabytes)."""
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python ints: no overflow
    available = path.stat().st_size - fh.tell()
    if declared != available:
        raise UnsafeNpyError(
            f"{path}: header declares shape {shape} of {dtype} ({declared:,} bytes) but the file holds "
            f"{available:,} bytes of data (truncated or forged header)"
        )


def load_npy_safely(path: str | Path) -> Any:
    """Load a ``.npy`` file: a plain array, or the plain-data object a 0-d object array holds.

    Args:
        path: the ``.npy`` file.

    Returns:
        The array for numeric files; for object files the unpickled content (a 0-d object
        array, as ``np.save(path, some_dict)`` writes, yields the dict itself).

    Raises:
        UnsafeNpyError: naming the file, if the header is malformed, the pickle refers to
            anything but numpy's array/dtype/scalar constructors, or the content is not
            plain data.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(fh)
            else:
                raise UnsafeNpyError(f"{path}: unsupported .npy format version {version}")
            if not dtype.hasobject:
                _check_size(path, fh, shape, dtype)
                return np.load(path, allow_pickle=False)
            try:
                loaded = _RestrictedUnpickler(fh, path).load()
            except UnsafeNpyError:
                raise
            except Exception as err:  # any malformed pickle: EOF, bad opcode, bad state
                raise UnsafeNpyError(f"{path}: cannot unpickle object array: {err}") from err
    except UnsafeNpyError:
        raise
    except (OSError, ValueError) as err:
        raise UnsafeNpyError(f"{path}: not a readable .npy file: {err}") from err

    if not isinstance(loaded, np.ndarray) or loaded.shape != shape or not loaded.dtype.hasobject:
        raise UnsafeNpyError(
            f"{path}: pickle does not match its header (expected an object array of shape "
            f"{shape}, got {type(loaded).__name__})"
        )
    items = loaded.ravel(order="F" if fortran else "C").tolist()
    content = items[0] if loaded.ndim == 0 else items
    _check_plain(content, path)
    return content if loaded.ndim == 0 else loaded
