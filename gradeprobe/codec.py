"""The wire format between the trusted grader and the student's kernel: plain data, nothing that runs.

Kernel side: imported by the probe in the kernel; the trusted side uses the same reading functions,
which trust nothing they read.

A value becomes a JSON tree; its arrays travel beside it in an ``.npz`` file under the keys the tree
names. Reading either file never runs code: ``json`` and ``numpy.load(..., allow_pickle=False)``,
on regular files opened without following links, each of bounded size.

Tags of the tree (``{"t": ...}``):

- ``none``, ``bool``, ``int``, ``float`` (``"nan"``, ``"inf"``, ``"-inf"`` as strings), ``str``
- ``tensor``: ``a`` (array key), ``dtype`` (``"torch.float32"``), ``device``, ``requires_grad``,
  ``grad_fn`` (whether it carries an autograd graph), ``exact`` (``type(x) is torch.Tensor``)
- ``ndarray``: ``a``; ``npscalar``: ``a`` (a 0-d array)
- ``list``, ``tuple``: ``v`` (items); ``dict``: ``v`` (string keys)
- ``object``: ``type`` (what could not be sent as data: a module, a generator, anything else)
- specs the trusted side sends (see ``gradeprobe.executor``): ``generator``, ``stub``, ``ref``
"""
from __future__ import annotations

import io
import json
import math
import os
import stat

import numpy as np

MAX_JSON_BYTES = 8 * 1024 * 1024
MAX_NPZ_BYTES = 256 * 1024 * 1024
#: array dtypes that may cross (no object arrays, no structured dtypes)
DTYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "float16", "float32", "float64"}


class WireError(ValueError):
    """A file of the wire format is missing, too large, a link, or not plain data."""


# ------------------------------------------------------------------------------------------------
# Encoding (both sides)
# ------------------------------------------------------------------------------------------------
class Arrays(dict):
    """The arrays of one tree, keyed ``a0, a1, ...``."""

    def add(self, arr: np.ndarray) -> str:
        arr = np.ascontiguousarray(arr)
        if arr.dtype.name not in DTYPES:
            raise WireError(f"arrays of dtype {arr.dtype} cannot be sent")
        key = f"a{len(self)}"
        self[key] = arr
        return key


def scalar(v) -> dict:
    """The tree of a Python scalar (or None)."""
    if v is None:
        return {"t": "none"}
    if isinstance(v, bool):
        return {"t": "bool", "v": v}
    if isinstance(v, int):
        return {"t": "int", "v": int(v)}
    if isinstance(v, float):
        return {"t": "float", "v": v if math.isfinite(v) else repr(v)}
    if isinstance(v, str):
        return {"t": "str", "v": v[:100_000]}
    raise TypeError(f"not a scalar: {type(v).__name__}")


def float_of(tree: dict) -> float:
    v = tree["v"]
    if isinstance(v, str):
        if v not in ("nan", "inf", "-inf"):
            raise WireError(f"not a float: {v!r}")
        return float(v)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise WireError(f"not a float: {v!r}")
    return float(v)


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def pack(tree: dict, arrays: dict) -> tuple[bytes, bytes]:
    """``(json_bytes, npz_bytes)`` of a tree and its arrays."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return json.dumps(tree, allow_nan=False).encode(), buf.getvalue()


def unpack(raw_json: bytes, raw_npz: bytes, name: str = "record") -> tuple[dict, dict]:
    """The inverse of :func:`pack`; only plain data comes out (raises :class:`WireError`)."""
    if len(raw_json) > MAX_JSON_BYTES or len(raw_npz) > MAX_NPZ_BYTES:
        raise WireError(f"{name} is too large")
    try:
        tree = json.loads(raw_json.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"{name}.json is not JSON: {exc}") from None
    if not isinstance(tree, dict):
        raise WireError(f"{name}.json does not hold an object")
    arrays = {}
    try:
        with np.load(io.BytesIO(raw_npz), allow_pickle=False) as npz:
            for key in npz.files:
                arr = npz[key]
                if arr.dtype.name not in DTYPES:
                    raise WireError(f"{name}.npz: array {key} has dtype {arr.dtype}")
                arrays[key] = arr
    except WireError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed archive
        raise WireError(f"{name}.npz is not a NumPy archive: {type(exc).__name__}: {exc}") from None
    return tree, arrays


def write_file(folder: str, name: str, tree: dict, arrays: dict) -> None:
    """Write ``<folder>/<name>.npz`` then ``<folder>/<name>.json`` (the JSON last: its presence
    means the pair is complete)."""
    os.makedirs(folder, exist_ok=True)
    raw_json, raw_npz = pack(tree, arrays)
    for suffix, data in ((".npz", raw_npz), (".json", raw_json)):
        tmp = os.path.join(folder, f".{name}{suffix}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, os.path.join(folder, name + suffix))


def open_dir(base: str, *parts: str) -> int:
    """A descriptor of ``base/part/...``, walking each part without following a link (the parts may
    lie in a folder that student code can change)."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            if not part or "/" in part or part in (".", ".."):
                raise WireError(f"bad path component {part!r}")
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_bytes(dir_fd: int, name: str, limit: int) -> bytes:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0), dir_fd=dir_fd)
    except OSError as exc:
        raise WireError(f"{name}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise WireError(f"{name} is not a regular file")
        if st.st_size > limit:
            raise WireError(f"{name} is larger than {limit} bytes")
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise WireError(f"{name} is larger than {limit} bytes")
        return data
    finally:
        os.close(fd)


def read_file(folder: str, name: str, base: str | None = None) -> tuple[dict, dict]:
    """``(tree, arrays)`` of ``<folder>/<name>``; with ``base``, ``folder`` is relative to it and is
    walked without following links. Raises :class:`WireError` (a ``ValueError``) or ``OSError``."""
    if "/" in name or name.startswith("."):
        raise WireError(f"bad record name {name!r}")
    if base is None:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    else:
        fd = open_dir(base, *[p for p in folder.split("/") if p])
    try:
        raw_json = _read_bytes(fd, name + ".json", MAX_JSON_BYTES)
        raw_npz = _read_bytes(fd, name + ".npz", MAX_NPZ_BYTES)
    finally:
        os.close(fd)
    return unpack(raw_json, raw_npz, name)
