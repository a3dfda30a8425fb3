"""The visible tests' assertions: each failure says what was expected, what came back and, where a
known mistake gives exactly what came back, the likely cause.

Kernel side (students have this module): it holds no reference implementation, only the numbers a
visible test already shows and the values a few well-known mistakes produce on the same input.

    expect_close(x_t, [-0.89, 0.21, -0.22], name="q_sample(x_0, t, noise)", atol=1e-3,
                 causes={"alpha_bar used where its square root belongs": [-0.80, 0.19, -0.2]})

A visible test that fails through these helpers names the same cause as the hidden check that
knows the mistake, locally, in ``check.py``, and in the graded notebook's feedback.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

__all__ = ["expect_close", "expect_shape", "expect_dtype", "expect", "VisibleTestFailed"]


class VisibleTestFailed(AssertionError):
    """A visible test failed; the message names the likely cause where one is known."""


def _array(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def _short(a: np.ndarray, n: int = 6) -> str:
    flat = a.reshape(-1)
    body = ", ".join(f"{v:.4g}" for v in flat[:n])
    return f"[{body}{', ...' if flat.size > n else ''}]" if a.ndim else f"{float(a):.6g}"


def _close(got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> bool:
    return got.shape == want.shape and bool(np.allclose(got, want, atol=atol, rtol=rtol))


def expect_close(got, expected, *, name: str, atol: float = 1e-5, rtol: float = 0.0,
                 causes: Mapping[str, object] | None = None) -> None:
    """Assert ``got`` equals ``expected`` within ``atol + rtol * |expected|``, elementwise.

    ``causes`` maps a likely cause to the value that mistake returns on the same input; when
    ``got`` matches one of them, the message names it."""
    want = _array(expected)
    try:
        value = _array(got)
    except (TypeError, ValueError) as err:
        raise VisibleTestFailed(f"{name}: expected numbers, got {type(got).__name__} ({err})")
    if value.shape != want.shape and value.size == want.size:
        value = value.reshape(want.shape)
    if _close(value, want, atol, rtol):
        return
    if not np.isfinite(value).all():
        cause = "the result holds NaN or inf (a division by zero, or a log/sqrt of a negative)"
    else:
        cause = next((c for c, wrong in (causes or {}).items()
                      if _close(value, _array(wrong), atol, rtol)), None)
    message = f"{name}: expected {_short(want)}, got {_short(value)}"
    if cause:
        message += f". Likely cause: {cause}"
    raise VisibleTestFailed(message)


def expect_shape(got, shape: tuple, *, name: str) -> None:
    """Assert a tensor's shape, with what came back."""
    actual = tuple(getattr(got, "shape", ()))
    if actual != tuple(shape):
        hint = ""
        if sorted(actual) == sorted(shape):
            hint = ". Likely cause: the axes are in another order (check the (B, C, H, W) layout)"
        elif len(actual) != len(shape):
            hint = (". Likely cause: a missing or extra axis (a per-image value needs "
                    "view(-1, 1, 1, 1) to broadcast over C, H, W)")
        raise VisibleTestFailed(f"{name}: expected shape {tuple(shape)}, got {actual}{hint}")


def expect_dtype(got, dtype: torch.dtype, *, name: str) -> None:
    """Assert a tensor's dtype; float64 from a float32 input usually means NumPy or a Python float
    list crept in."""
    actual = getattr(got, "dtype", type(got).__name__)
    if actual != dtype:
        hint = ""
        if actual == torch.float64 and dtype == torch.float32:
            hint = (". Likely cause: a float64 tensor made inside (np.array, torch.tensor of "
                    "Python floats, dtype=torch.float64): cast back with .to(x.dtype)")
        elif dtype == torch.long:
            hint = ". Labels and time steps are integer tensors (torch.long)"
        raise VisibleTestFailed(f"{name}: expected dtype {dtype}, got {actual}{hint}")


def expect(condition: bool, message: str) -> None:
    """Assert a condition, with a message that says what was expected and the likely cause."""
    if not condition:
        raise VisibleTestFailed(message)
