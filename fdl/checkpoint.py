"""Save and load pytrees as safetensors files, atomically, without pickle.

A checkpoint is one ``.safetensors`` file. Its tensors are the tree's tensor
leaves, named by their ``"a.b"`` paths (``params.fc1.weight``), so any
safetensors reader can inspect them. The file's metadata holds, as JSON:

- ``fdl.tree``: the tree's structure: dicts (with their keys, in order),
  ``OrderedDict``, lists, tuples, ``None`` nodes, NamedTuples (recorded as
  ``"module:qualname"`` plus their fields) and the non-tensor leaves
  (``int``, ``float``, ``bool``, ``str``) by value;
- ``fdl.sha256``: a digest of every tensor's bytes, checked on load;
- ``fdl.user``: the ``metadata`` passed to :func:`save`.

Nothing is ever unpickled: loading reads JSON and raw tensor bytes, and a
NamedTuple class is re-imported by name and checked to be a NamedTuple with
the recorded fields (or taken from ``like``).

Writes are atomic: the file is written to a temporary file in the same
folder, flushed to disk (``fsync``) and renamed over ``path`` with
``os.replace``. A crash at any point leaves either the previous checkpoint or
the new one, never a mix.

Example:
    >>> import os, tempfile, torch, fdl
    >>> params = {"fc": {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}}
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.safetensors")
    >>> fdl.checkpoint.save(path, {"params": params, "step": 10, "key": fdl.random.key(0)})
    >>> ckpt = fdl.checkpoint.load(path)
    >>> ckpt["step"], ckpt["params"]["fc"]["weight"].shape
    (10, torch.Size([2, 3]))
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import struct
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import safetensors.torch
import torch

from fdl._leaf import describe as _kind_of

__all__ = ["FORMAT", "load", "read_metadata", "save"]

FORMAT = "fdl.checkpoint/1"
"""The value of the ``fdl.format`` metadata entry of files this module writes."""

_SCALARS = (bool, int, float, str)


# ---------------------------------------------------------------------------
# Encoding the structure
# ---------------------------------------------------------------------------


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _encode_key(k: Any, where: str) -> list[Any]:
    if isinstance(k, str):
        return ["s", k]
    if isinstance(k, int) and not isinstance(k, bool):
        return ["i", k]
    raise TypeError(f"checkpoint: dict key {k!r} at '{where}' must be a str or an int")


def _decode_key(k: Any) -> Any:
    kind, value = k
    return value if kind == "s" else int(value)


def _join(prefix: str, part: Any) -> str:
    return f"{prefix}.{part}" if prefix else str(part)


def _encode(node: Any, path: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """JSON description of ``node``; its tensors go into ``tensors`` under their paths."""
    where = path or "<root>"
    if node is None:
        return {"t": "none"}
    if isinstance(node, torch.Tensor):
        if node.layout != torch.strided or node.is_quantized:
            raise TypeError(f"checkpoint: tensor at '{where}' has layout {node.layout}; dense only")
        name = path or "<root>"
        if name in tensors:  # a dict key containing "." can repeat a path
            name = f"{name}#{len(tensors)}"
        tensors[name] = node
        return {"t": "tensor", "name": name}
    if isinstance(node, _SCALARS):
        kind = type(node).__name__
        return {"t": kind, "v": node}
    if _is_namedtuple(node):
        cls = type(node)
        return {
            "t": "namedtuple",
            "cls": f"{cls.__module__}:{cls.__qualname__}",
            "fields": list(cls._fields),
            "c": [
                _encode(v, _join(path, f), tensors) for f, v in zip(cls._fields, node, strict=True)
            ],
        }
    if isinstance(node, (list, tuple)) and type(node) in (list, tuple):
        return {
            "t": type(node).__name__,
            "c": [_encode(v, _join(path, i), tensors) for i, v in enumerate(node)],
        }
    if type(node) in (dict, OrderedDict):
        keys = list(node)
        return {
            "t": "odict" if isinstance(node, OrderedDict) else "dict",
            "keys": [_encode_key(k, where) for k in keys],
            "c": [_encode(node[k], _join(path, k), tensors) for k in keys],
        }
    raise TypeError(
        f"checkpoint: cannot store {type(node).__name__} at '{where}'; leaves must be tensors, "
        "int, float, bool, str or None, in dict/list/tuple/NamedTuple containers"
    )


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


class _Bad(ValueError):
    """A structure that does not match the file or ``like`` (becomes ValueError)."""


def _import_namedtuple(spec: str, fields: list[str], where: str) -> type:
    module_name, _, qualname = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise _Bad(
            f"the NamedTuple {spec} at '{where}' cannot be imported ({e}); "
            "pass like= a tree of the same structure to rebuild it"
        ) from None
    if not (isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")):
        raise _Bad(f"{spec} at '{where}' is not a NamedTuple class")
    if list(obj._fields) != fields:
        raise _Bad(f"{spec} at '{where}' has fields {list(obj._fields)}, the file has {fields}")
    return obj


def _decode(
    spec: dict[str, Any],
    tensors: Mapping[str, torch.Tensor],
    like: Any,
    has_like: bool,
    path: str,
    device: torch.device | str | None,
) -> Any:
    where = path or "<root>"
    t = spec.get("t")
    if t == "none":
        if has_like and like is not None:
            raise _Bad(f"at '{where}': the file has None, like has {_kind_of(like)}")
        return None
    if t == "tensor":
        x = tensors.get(spec["name"])
        if x is None:
            raise _Bad(f"tensor {spec['name']!r} (at '{where}') is missing from the file")
        if has_like:
            if not isinstance(like, torch.Tensor):
                raise _Bad(f"at '{where}': the file has {_kind_of(x)}, like has {_kind_of(like)}")
            if like.shape != x.shape or like.dtype != x.dtype:
                raise _Bad(
                    f"at '{where}': the file has shape {tuple(x.shape)} {x.dtype}, like has "
                    f"shape {tuple(like.shape)} {like.dtype}"
                )
            if device is None:
                return x.to(like.device)
        return x if device is None else x.to(device)
    if t in ("bool", "int", "float", "str"):
        value = spec["v"]
        expected: dict[str, type | tuple[type, ...]] = {
            "bool": bool,
            "int": int,
            "float": (int, float),
            "str": str,
        }
        if not isinstance(value, expected[t]) or (t == "int" and isinstance(value, bool)):
            raise _Bad(f"at '{where}': stored {t} value {value!r} is malformed")
        if t == "float":
            value = float(spec["v"])
        if has_like and not isinstance(like, _SCALARS):
            raise _Bad(f"at '{where}': the file has {t}, like has {_kind_of(like)}")
        return value
    children = spec.get("c")
    if not isinstance(children, list):
        raise _Bad(f"at '{where}': malformed node {t!r}")
    if t == "namedtuple":
        fields = spec["fields"]
        if has_like:
            if not _is_namedtuple(like) or list(type(like)._fields) != list(fields):
                raise _Bad(
                    f"at '{where}': the file has NamedTuple {spec['cls']} with fields "
                    f"{fields}, like has {_kind_of(like)}"
                )
            cls = type(like)
        else:
            cls = _import_namedtuple(spec["cls"], fields, where)
        subs = like if has_like else [None] * len(children)
        return cls(
            *[
                _decode(c, tensors, s, has_like, _join(path, f), device)
                for c, s, f in zip(children, subs, fields, strict=True)
            ]
        )
    if t in ("list", "tuple"):
        typ = list if t == "list" else tuple
        if has_like:
            if type(like) is not typ or len(like) != len(children):
                got = (
                    f"{type(like).__name__} of length {len(like)}"
                    if isinstance(like, (list, tuple))
                    else _kind_of(like)
                )
                raise _Bad(
                    f"at '{where}': the file has {t} of length {len(children)}, like has {got}"
                )
        subs = like if has_like else [None] * len(children)
        return typ(
            _decode(c, tensors, s, has_like, _join(path, i), device)
            for i, (c, s) in enumerate(zip(children, subs, strict=True))
        )
    if t in ("dict", "odict"):
        keys = [_decode_key(k) for k in spec["keys"]]
        if len(keys) != len(children):
            raise _Bad(f"at '{where}': malformed dict node")
        by_key = dict(zip(keys, children, strict=True))
        mapping_type: type[dict] = OrderedDict if t == "odict" else dict
        if has_like:
            if not isinstance(like, Mapping) or set(like) != set(keys):
                if isinstance(like, Mapping):
                    missing = sorted(map(str, set(keys) - set(like)))
                    extra = sorted(map(str, set(like) - set(keys)))
                    raise _Bad(
                        f"at '{where}': keys differ: like lacks {missing}, the file lacks {extra}"
                    )
                raise _Bad(f"at '{where}': the file has a dict, like has {_kind_of(like)}")
            keys = list(like)
        return mapping_type(
            (
                k,
                _decode(
                    by_key[k],
                    tensors,
                    like[k] if has_like else None,
                    has_like,
                    _join(path, k),
                    device,
                ),
            )
            for k in keys
        )
    raise _Bad(f"at '{where}': unknown node type {t!r}")


# ---------------------------------------------------------------------------
# Bytes on disk
# ---------------------------------------------------------------------------


def _tensor_bytes(x: torch.Tensor) -> memoryview:
    return memoryview(x.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]


def _digest(names: list[str], tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in names:
        x = tensors[name]
        h.update(f"{name}\0{x.dtype}\0{tuple(x.shape)}\0".encode())
        h.update(_tensor_bytes(x))
    return h.hexdigest()


def _prepare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, dense, contiguous CPU tensors, each owning its memory."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, x in tensors.items():
        y = x.detach().resolve_conj().resolve_neg().to("cpu").contiguous()
        ptr = y.untyped_storage().data_ptr()
        if ptr in seen or y.untyped_storage().nbytes() != y.numel() * y.element_size():
            y = y.clone()  # safetensors stores each tensor in its own bytes
        if y.numel():
            seen.add(y.untyped_storage().data_ptr())
        out[name] = y
    return out


def _write_bytes(f: Any, data: bytes) -> None:
    f.write(data)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str, data: bytes) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_bytes(f, data)
            f.flush()
            os.fsync(f.fileno())
        mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def _read_header(path: str, data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors byte string, or ValueError saying why not."""
    if len(data) < 8:
        raise ValueError(f"{path} is not a safetensors file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > 100_000_000:
        raise ValueError(
            f"{path} is not a complete safetensors file (header of {n} bytes, file of "
            f"{len(data)} bytes): truncated, corrupt or another format"
        )
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a safetensors file: unreadable header ({e})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _read(path: str | os.PathLike) -> tuple[str, bytes, dict[str, str]]:
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    meta = _read_header(path, data)
    if meta.get("fdl.format") != FORMAT:
        found = meta.get("fdl.format")
        why = f"format {found!r}, expected {FORMAT!r}" if found else "no fdl metadata"
        raise ValueError(
            f"{path} is not an fdl checkpoint ({why}); a plain safetensors file can be read "
            "with safetensors.torch.load_file"
        )
    return path, data, meta


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def save(path: str | os.PathLike, tree: Any, *, metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``tree`` to ``path`` as a safetensors file, atomically.

    Tensors are stored detached, on the CPU, in their dtype; ``int``,
    ``float``, ``bool``, ``str`` leaves and ``None`` nodes are stored in the
    structure. Nothing is written unless the whole tree can be stored.

    Args:
        path: the file to write (``.safetensors`` by convention); its folder
            must exist. An existing file is replaced only once the new one is
            complete on disk.
        tree: a pytree of dict (str or int keys), ``OrderedDict``, list,
            tuple and NamedTuple containers.
        metadata: optional JSON-serialisable mapping kept with the file; read
            it back with :func:`read_metadata`.

    Raises:
        TypeError: a leaf or key that cannot be stored (named by its path).

    Example:
        >>> import os, tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> save(path, {"w": torch.ones(2)}, metadata={"epoch": 3})
        >>> read_metadata(path)
        {'epoch': 3}
    """
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(tree, "", tensors)
    try:
        user = json.dumps(dict(metadata) if metadata is not None else {}, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint metadata must be JSON-serialisable: {e}") from None
    tensors = _prepare(tensors)
    meta = {
        "fdl.format": FORMAT,
        "fdl.tree": json.dumps(structure),
        "fdl.sha256": _digest(_collect_names(structure), tensors),
        "fdl.user": user,
    }
    _atomic_write(os.fspath(path), safetensors.torch.save(tensors, metadata=meta))


def load(
    path: str | os.PathLike, like: Any = None, *, device: torch.device | str | None = None
) -> Any:
    """Read a tree written by :func:`save`.

    Without ``like`` the tree is rebuilt from the file alone: containers and
    key order as saved, NamedTuple classes re-imported by name (and checked to
    be NamedTuples with the saved fields). With ``like`` (a tree of the
    expected structure, e.g. freshly initialised params and optimizer state)
    its classes and key order are used, every tensor must match its shape and
    dtype, and tensors go to ``like``'s devices.

    Args:
        path: a file written by :func:`save`.
        like: optional template tree.
        device: where to put the tensors (default: CPU, or ``like``'s devices).

    Returns:
        The tree.

    Raises:
        ValueError: the file is truncated, corrupt (its checksum fails), not
            an fdl checkpoint, or does not match ``like`` (with the path).

    Example:
        >>> import os, tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> save(path, {"w": torch.ones(2), "n": 3})
        >>> load(path)
        {'w': tensor([1., 1.]), 'n': 3}
    """
    path, data, meta = _read(path)
    try:
        structure = json.loads(meta["fdl.tree"])
        digest = meta["fdl.sha256"]
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: the fdl metadata is damaged ({e})") from None
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own error type
        raise ValueError(f"{path} is corrupt or truncated: {e}") from None
    names = list(tensors)
    order = _collect_names(structure)
    if set(order) != set(names):
        raise ValueError(f"{path}: the tensors in the file do not match its fdl structure")
    if _digest(order, tensors) != digest:
        raise ValueError(f"{path} is corrupt: the tensor data does not match its checksum")
    try:
        return _decode(structure, tensors, like, like is not None, "", device)
    except _Bad as e:
        raise ValueError(f"{path}: {e}") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: the fdl structure metadata is damaged ({e!r})") from None


def _collect_names(spec: Any) -> list[str]:
    """Tensor names in the order :func:`save` hashed them (structure order)."""
    out: list[str] = []
    stack = [spec]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if node.get("t") == "tensor":
            out.append(str(node.get("name")))
        stack.extend(reversed(node.get("c", []) if isinstance(node.get("c"), list) else []))
    return out


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata`` mapping given to :func:`save` (``{}`` if none).

    Raises:
        ValueError: the file is not an fdl checkpoint.
    """
    path, _, meta = _read(path)
    try:
        return json.loads(meta.get("fdl.user", "{}"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the user metadata is damaged ({e})") from None
