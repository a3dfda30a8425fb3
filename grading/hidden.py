"""The toolbox of the hidden checks: failures with the likely cause, conversions, comparisons.

Trusted: the checks (``grading/checks``) use it in the grading worker on what the student's kernel
sent back (``grading.records``), after ``grading.verdict`` ran their plans there.

- :class:`CheckFailed`, :func:`expect`, :func:`fail_known_mistake`: failures written for the student
  (what was expected, what came back, ``Likely cause: ...``).
- :func:`as_array`, :func:`as_tensor_array`, :func:`as_scalar`: a returned value (a
  :class:`~grading.records.TensorRecord`, an array, a number) as float64 NumPy, with its exact type,
  dtype and shape checked.
- :func:`close`, :func:`match_variants`, :func:`first_match`, :func:`describe_diff`: comparisons
  with the right answer and with known mistaken variants, naming the matching mistake.
- :data:`INDEXING_ERROR_HINTS`: the likely causes of the indexing errors students meet most.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from .records import ObjectRecord, TensorRecord, type_name

__all__ = [
    "CheckFailed", "expect", "fail_known_mistake", "as_array", "as_tensor_array", "as_scalar", "close",
    "max_abs_diff", "INDEXING_ERROR_HINTS", "describe_diff", "first_match", "match_variants",
]


class CheckFailed(AssertionError):
    """A hidden test failed; the message is written for the student."""


def expect(condition: bool, message: str, hint: str | None = None) -> None:
    """Raise :class:`CheckFailed` with ``message`` (and ``Likely cause: hint``) unless ``condition``."""
    if not bool(condition):
        raise CheckFailed(message + (f"\nLikely cause: {hint}" if hint else ""))


def fail_known_mistake(message: str, hint: str | None) -> None:
    """Raise :class:`CheckFailed` with ``message``; when ``hint`` is given (the description of the known
    mistaken variant the student's output matched, e.g. from :func:`first_match`), say so and add it
    as the likely cause."""
    if hint:
        raise CheckFailed(message + "\nYour output matches a known mistake.\nLikely cause: " + hint)
    raise CheckFailed(message)


# ----------------------------------------------------------------------------------------------
# Conversions: only genuine tensors and arrays are trusted
# ----------------------------------------------------------------------------------------------
def as_array(x: Any, name: str, shape: tuple | None = None, dtype: str | None = None,
             finite: bool = True) -> np.ndarray:
    """Convert a student's output to a fresh NumPy array (float64, or int64 for ``dtype='long'``).

    Accepts exactly ``torch.Tensor`` or ``np.ndarray`` (no subclasses, no look-alikes), checks the
    shape (``None`` entries match any size) and the dtype family, and rejects NaN and infinity.
    """
    if isinstance(x, TensorRecord):  # what a student's kernel returned (trusted checks)
        if not x.exact:
            raise CheckFailed(f"{name} should be a torch.Tensor, got a subclass of torch.Tensor.")
        torch_dtype = getattr(torch, x.dtype.removeprefix("torch."), None)
        if not isinstance(torch_dtype, torch.dtype):
            raise CheckFailed(f"{name} has an unknown dtype {x.dtype}.")
        arr = np.array(x.array, copy=True)
    elif isinstance(x, ObjectRecord):
        if x.type.startswith("tensor ("):
            raise CheckFailed(f"{name} is a {x.type}; expected a real dense CPU tensor.")
        raise CheckFailed(f"{name} should be a torch.Tensor, got {x.type}.")
    elif type(x) is torch.Tensor:
        if x.is_complex():
            raise CheckFailed(f"{name} is a complex tensor; expected real values.")
        torch_dtype = x.dtype
        arr = np.array(x.detach().to("cpu").numpy(), copy=True)
    elif type(x) is np.ndarray:
        torch_dtype = None
        arr = np.array(x, copy=True)
    else:
        raise CheckFailed(
            f"{name} should be a torch.Tensor, got {type(x).__module__}.{type(x).__qualname__}."
        )
    if shape is not None:
        ok = len(arr.shape) == len(shape) and all(
            want is None or got == want for got, want in zip(arr.shape, shape))
        if not ok:
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise CheckFailed(f"{name} has shape {tuple(arr.shape)}, expected {want}.")
    if dtype == "long":
        if torch_dtype is not None and torch_dtype != torch.int64:
            raise CheckFailed(f"{name} has dtype {torch_dtype}, expected torch.long (int64).")
        if torch_dtype is None and arr.dtype != np.int64:
            raise CheckFailed(f"{name} has dtype {arr.dtype}, expected int64 (torch.long).")
        return arr.astype(np.int64)
    if dtype in ("float", "float32"):
        is_float = (torch_dtype.is_floating_point if torch_dtype is not None
                    else np.issubdtype(arr.dtype, np.floating))
        if not is_float:
            raise CheckFailed(f"{name} has dtype {torch_dtype or arr.dtype}, expected a floating dtype.")
        if dtype == "float32" and (torch_dtype or arr.dtype) not in (torch.float32, np.float32):
            raise CheckFailed(f"{name} has dtype {torch_dtype or arr.dtype}, expected float32.")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    out = arr.astype(np.float64)
    if finite and not np.all(np.isfinite(out)):
        raise CheckFailed(f"{name} contains NaN or infinite values.")
    return out


def as_tensor_array(x: Any, name: str, shape: tuple | None = None) -> np.ndarray:
    """A student's floating ``torch.Tensor`` (exact type) as a float64 array, shape checked.

    Like ``as_array(x, name, shape, dtype="float")`` but for functions the spec says return a tensor:
    a NumPy array is refused with a message that says how to convert it.
    """
    if type(x) is not torch.Tensor and not isinstance(x, TensorRecord):
        kind = type_name(x) if not isinstance(x, np.ndarray) else "numpy.ndarray"
        if type(x).__module__ not in ("builtins", "numpy", "grading.records"):
            kind = f"{type(x).__module__}.{type(x).__qualname__}"
        raise CheckFailed(f"{name} should be a torch.Tensor, got {kind}. Convert NumPy results with "
                          f"torch.from_numpy or torch.as_tensor before returning them.")
    return as_array(x, name, shape=shape, dtype="float")


def as_scalar(x: Any, name: str) -> float:
    """A Python float from a 0-d tensor/array or a genuine int/float (no look-alikes)."""
    if type(x) in (float, int) or type(x) in (np.float64, np.float32, np.int64, np.int32):
        value = float(x)
    else:
        arr = as_array(x, name)
        if arr.size != 1:
            raise CheckFailed(f"{name} should be a single number, got shape {arr.shape}.")
        value = float(arr.reshape(-1)[0])
    if not math.isfinite(value):
        raise CheckFailed(f"{name} is {value}, expected a finite number.")
    return value


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def close(a: np.ndarray, b: np.ndarray, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """True when the arrays have one shape and agree within ``atol + rtol * |b|`` everywhere."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= atol + rtol * np.abs(b)))


def first_match(got: Any, variants: Iterable[tuple[str, Any]] | Mapping[str, Any],
                agree: Callable[[Any, Any], bool] | None = None, *,
                atol: float = 1e-5, rtol: float = 1e-4) -> str | None:
    """The description of the first known mistaken variant that ``got`` agrees with, or None.

    ``variants`` holds ``(description, value)`` pairs (or a dict ``{description: value}``), each value
    what a known mistake would have returned; ``None`` values are skipped (variants that do not apply
    to these inputs). Agreement is :func:`close` with ``atol``/``rtol``, or the predicate
    ``agree(got, value)`` when given (e.g. for scalars or statistics with their own tolerance).
    """
    pairs = variants.items() if isinstance(variants, Mapping) else variants
    for hint, value in pairs:
        if value is None:
            continue
        if agree(got, value) if agree is not None else close(got, value, atol=atol, rtol=rtol):
            return hint
    return None


def match_variants(got: np.ndarray, want: np.ndarray, variants: Sequence[tuple[str, np.ndarray | None]],
                   what: str, atol: float = 1e-5, rtol: float = 1e-4, context: str = "") -> None:
    """Diagnose a student's output against the correct one and known mistaken variants.

    Returns when ``got`` is close to ``want`` (:func:`close` with ``atol``, ``rtol``). Otherwise raises
    :class:`CheckFailed` ``"<what> is wrong<context>: <largest difference>."``, and when ``got`` also
    matches one of ``variants`` (``(description, value)`` pairs, see :func:`first_match`) adds that
    the output matches a known mistake and its description as the likely cause.
    """
    if close(got, want, atol=atol, rtol=rtol):
        return
    fail_known_mistake(f"{what} is wrong{context}: {describe_diff(got, want)}.",
                       first_match(got, variants, atol=atol, rtol=rtol))


def describe_diff(got: np.ndarray, want: np.ndarray) -> str:
    """A short 'expected ..., got ...' phrase for two arrays."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return f"expected shape {want.shape}, got {got.shape}"
    flat_g, flat_w = got.reshape(-1), want.reshape(-1)
    i = int(np.argmax(np.abs(flat_g - flat_w))) if flat_g.size else 0
    return (f"largest difference {max_abs_diff(got, want):.3g} "
            f"(expected {flat_w[i]:.6g}, got {flat_g[i]:.6g} at flat index {i})")


# ----------------------------------------------------------------------------------------------
# Errors students meet most
# ----------------------------------------------------------------------------------------------
#: ``(text in the error message, likely cause)`` for the errors students meet most when indexing a
#: noise schedule with a batch of times; pass as ``call(..., error_hints=INDEXING_ERROR_HINTS)``.
INDEXING_ERROR_HINTS: tuple[tuple[str, str], ...] = (
    ("must match the size of tensor",
     "a (B,) coefficient such as alpha_bar[t] was multiplied with a (B, C, H, W) image without "
     "reshaping: use coef.reshape(-1, 1, 1, 1) (or coef[:, None, None, None])."),
    ("out of bounds",
     "an index past the end of the schedule: with 0-based times, step t uses beta[t] or "
     "alpha_bar[t], and t + 1 overflows at t = T - 1 (off by one in t?)."),
    ("only integer tensors", "t must stay a torch.long tensor to index the schedule."),
    ("tensors used as indices must be long", "t must stay a torch.long tensor to index the schedule."),
)
