"""What came back from a student's kernel, as plain trusted values (the trusted side of
``gradeprobe.codec``).

Trusted: runs in the grading worker; it only reads data the kernel wrote.

Trees are decoded into NumPy arrays, Python scalars and containers, and two small records:
:class:`TensorRecord` (a tensor's values with its dtype, device and autograd flags, as the kernel
reported them) and :class:`ObjectRecord` (anything that was not data). Nothing here executes code
that came from the kernel; an unknown or malformed tree raises ``WireError``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gradeprobe.codec import WireError, float_of


@dataclass(frozen=True)
class TensorRecord:
    """A tensor the student's code returned or passed on: values and what the kernel said of it."""
    array: np.ndarray        # the values (bfloat16 arrives as float32)
    dtype: str               # "torch.float32"
    device: str = "cpu"
    requires_grad: bool = False
    grad_fn: bool = False    # carried an autograd graph
    exact: bool = True       # type(x) is torch.Tensor (no subclass)

    @property
    def shape(self) -> tuple:
        return tuple(self.array.shape)

    @property
    def is_floating_point(self) -> bool:
        return self.dtype in ("torch.float16", "torch.bfloat16", "torch.float32", "torch.float64")


@dataclass(frozen=True)
class ObjectRecord:
    """A value that could not cross as data (a module, a generator, an unknown object)."""
    type: str


def decode(tree: Any, arrays: dict) -> Any:
    """The trusted value of a record tree."""
    if not isinstance(tree, dict) or not isinstance(tree.get("t"), str):
        raise WireError("malformed record")
    tag = tree["t"]
    if tag == "none":
        return None
    if tag == "bool":
        if not isinstance(tree.get("v"), bool):
            raise WireError("malformed bool")
        return tree["v"]
    if tag == "int":
        if type(tree.get("v")) is not int:
            raise WireError("malformed int")
        return tree["v"]
    if tag == "float":
        return float_of(tree)
    if tag == "str":
        if not isinstance(tree.get("v"), str):
            raise WireError("malformed str")
        return tree["v"]
    if tag == "tensor":
        arr = _shaped(_array(tree, arrays), tree.get("shape"))
        return TensorRecord(arr, str(tree.get("dtype")), str(tree.get("device", "cpu")),
                            bool(tree.get("requires_grad")), bool(tree.get("grad_fn")),
                            bool(tree.get("exact")))
    if tag == "ndarray":
        arr = _array(tree, arrays)
        if not tree.get("exact", True):
            return ObjectRecord("a subclass of numpy.ndarray")
        return arr
    if tag == "npscalar":
        return _shaped(_array(tree, arrays), [])[()]
    if tag in ("list", "tuple"):
        items = tree.get("v")
        if not isinstance(items, list):
            raise WireError("malformed list")
        out = [decode(v, arrays) for v in items]
        return out if tag == "list" else tuple(out)
    if tag == "dict":
        items = tree.get("v")
        if not isinstance(items, dict):
            raise WireError("malformed dict")
        return {str(k): decode(v, arrays) for k, v in items.items()}
    if tag == "object":
        return ObjectRecord(str(tree.get("type", "object"))[:200])
    raise WireError(f"unknown record tag {tag!r}")


def _array(tree: dict, arrays: dict) -> np.ndarray:
    key = tree.get("a")
    if not isinstance(key, str) or key not in arrays:
        raise WireError("a record names an array that is not there")
    return np.array(arrays[key], copy=True)


def _shaped(arr: np.ndarray, shape: Any) -> np.ndarray:
    """``arr`` with the shape the kernel reported, when it has that many elements: the array files
    carry a 0-d array as shape (1,) (``np.ascontiguousarray``), the tree says it was 0-d."""
    if isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape) \
            and int(np.prod(shape, dtype=np.int64)) == arr.size and tuple(shape) != arr.shape:
        return arr.reshape(shape)
    return arr


def float_array(value: Any) -> np.ndarray | None:
    """A recorded tensor's (or array's) values as float64, NaN kept; None for anything else."""
    if isinstance(value, TensorRecord):
        return value.array.astype(np.float64)
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        return value.astype(np.float64)
    return None


def type_name(value: Any) -> str:
    """How to name the type of a decoded value in a message to the student."""
    if isinstance(value, TensorRecord):
        return "torch.Tensor" if value.exact else "a subclass of torch.Tensor"
    if isinstance(value, ObjectRecord):
        return value.type
    if isinstance(value, np.ndarray):
        return "numpy.ndarray"
    return type(value).__name__
