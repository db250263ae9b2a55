"""Read a ``torch.save`` archive holding a whole pickled ``nn.Module`` without running
any code from it.

Some published models (the SuDoRM-RF authors' releases) are saved with
``torch.save(model, path)``: the pickle names the authors' classes, and ``torch.load``
would import and call them. :func:`read_pickled_modules` instead unpickles with a
:class:`pickle.Unpickler` whose ``find_class`` admits only tensor rebuilding and plain
containers; every other global becomes an inert :class:`StandIn` class that merely
records the arguments and state the pickle gives it. Nothing outside this module and
``torch`` is imported or called. Tensor data comes from the archive's storage records
through ``persistent_load``.

Only torch's zip archive format (``torch.save`` since torch 1.6) is read. This module is
in the base layer: it imports nothing from sepkit.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

# Storage classes a torch pickle may name, by the element type their bytes hold.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


class RestrictedPickleError(ValueError):
    """The file is not a torch zip archive this reader can decode; the message names it."""


class StandIn:
    """Inert replacement for a class or function a pickle names. Constructing it, or
    restoring state onto it, only records what the pickle passed (``args``, ``kwargs``,
    ``state``); the real class is never imported."""

    qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        # The state of an nn.Module is its __dict__ (or a (dict, slots) pair).
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]
        self.state = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualified_name}>"


class _StorageType:
    """What ``find_class`` returns for ``torch.<X>Storage``: just the element type."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(
    storage: torch.Tensor,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    """A view of the flat storage tensor with the pickled geometry, as a fresh tensor."""
    return torch.as_strided(storage, tuple(size), tuple(stride), storage_offset).clone()


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool = False, *unused: Any) -> torch.Tensor:
    """Parameters come back as plain tensors: only their values matter here."""
    return data


def _reconstruct(cls: type, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` for stand-ins only (protocol 0/1 pickles of objects)."""
    if not (isinstance(cls, type) and issubclass(cls, StandIn)):
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}")
    return cls()


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "frozenset"): frozenset,
    ("copyreg", "_reconstructor"): _reconstruct,
    ("copy_reg", "_reconstructor"): _reconstruct,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._source = source
        self._stand_ins: dict[tuple[str, str], type[StandIn]] = {}
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        key = (module, name)
        if key not in self._stand_ins:
            self._stand_ins[key] = type(name, (StandIn,), {"qualified_name": f"{module}.{name}"})
        return self._stand_ins[key]

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise RestrictedPickleError(f"{self._source}: unknown storage record {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise RestrictedPickleError(f"{self._source}: storage of unsupported type {storage_type!r:.80}")
        if key not in self._storages:
            try:
                raw = self._archive.read(f"{self._prefix}/data/{key}")
            except KeyError:
                raise RestrictedPickleError(f"{self._source}: storage {key!r} missing from the archive") from None
            dtype = storage_type.dtype
            itemsize = torch.empty(0, dtype=dtype).element_size()
            if len(raw) % itemsize:
                raise RestrictedPickleError(f"{self._source}: storage {key!r} is truncated")
            flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            self._storages[key] = flat
        return self._storages[key]


def _archive_prefix(archive: zipfile.ZipFile, source: str) -> str:
    prefixes = [name[: -len("/data.pkl")] for name in archive.namelist() if name.endswith("/data.pkl")]
    if len(prefixes) != 1 or "/" in prefixes[0]:
        raise RestrictedPickleError(f"{source}: not a torch archive (no single <name>/data.pkl record)")
    prefix = prefixes[0]
    if f"{prefix}/byteorder" in archive.namelist() and archive.read(f"{prefix}/byteorder").strip() != b"little":
        raise RestrictedPickleError(f"{source}: big-endian torch archives are not supported")
    return prefix


def pickle_strings(path: str | Path) -> set[str]:
    """Every string constant in a torch archive's pickle (global names included), read
    with :mod:`pickletools` without unpickling; empty for files that are not torch zip
    archives. Used to recognise a file's format before loading it."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = archive.read(f"{_archive_prefix(archive, str(path))}/data.pkl")
    except (OSError, zipfile.BadZipFile, RestrictedPickleError, KeyError):
        return set()
    strings: set[str] = set()
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if isinstance(arg, str):
                # GLOBAL's argument is "module name" on one line.
                strings.update(arg.split(" ") if opcode.name == "GLOBAL" else [arg])
    except Exception:  # a malformed pickle simply is not a format we recognise
        return strings
    return strings


def read_pickled_modules(path: str | Path) -> Any:
    """Unpickle a torch zip archive with stand-ins for every non-tensor class.

    Returns:
        The pickled object graph: tensors, plain containers and :class:`StandIn`
        instances (e.g. the top-level module, whose ``state`` is its ``__dict__``).

    Raises:
        RestrictedPickleError: not a torch zip archive, or a storage record it cannot
            decode; the message names the file.
    """
    source = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise RestrictedPickleError(f"{source}: not a torch zip archive ({type(err).__name__})") from None
    with archive:
        prefix = _archive_prefix(archive, source)
        unpickler = _RestrictedUnpickler(archive.read(f"{prefix}/data.pkl"), archive, prefix, source)
        try:
            return unpickler.load()
        except RestrictedPickleError:
            raise
        except Exception as err:  # pickle raises many types for corrupt streams
            raise RestrictedPickleError(f"{source}: cannot decode the pickle ({type(err).__name__}: {err})") from None


def _module_entries(module: StandIn, prefix: str) -> Iterator[tuple[str, Any]]:
    state = module.state if isinstance(module.state, dict) else {}
    skipped = state.get("_non_persistent_buffers_set")
    skipped = skipped if isinstance(skipped, (set, frozenset)) else set()

    def entries(name: str) -> dict:
        found = state.get(name)
        return found if isinstance(found, dict) else {}

    for group in ("_parameters", "_buffers"):
        for name, value in entries(group).items():
            if value is not None and not (group == "_buffers" and name in skipped):
                yield f"{prefix}{name}", value
    for name, child in entries("_modules").items():
        if isinstance(child, StandIn):
            yield from _module_entries(child, f"{prefix}{name}.")


def stand_in_state_dict(module: StandIn, source: str) -> dict[str, torch.Tensor]:
    """The ``state_dict`` the real module would return: parameters and persistent
    buffers of the module and its submodules, under their dotted names (``source``
    names the file in errors)."""
    state: dict[str, torch.Tensor] = {}
    for key, value in _module_entries(module, ""):
        if not isinstance(value, torch.Tensor):
            raise RestrictedPickleError(f"{source}: weight {key!r} is not a tensor ({type(value).__name__})")
        state[key] = value
    return state


def stand_in_attributes(module: StandIn) -> dict[str, Any]:
    """The plain attributes (``__dict__`` without torch's bookkeeping) of a pickled module."""
    state = module.state if isinstance(module.state, dict) else {}
    return {key: value for key, value in state.items() if not key.startswith("_")}
