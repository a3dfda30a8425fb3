"""The disciplines every graded function keeps, whatever it computes (issue 15, families 1-4).

Trusted: the checks of ``grading/checks`` call these in the grading worker, after their ``yield``,
on what the student's kernel recorded (``grading.verdict.Outcome``).

1. Generator discipline: a call given ``generator`` leaves the global random states alone
   (:func:`expect_global_rng_untouched`); one generator used for two calls continues its stream and
   the same seed reproduces (:func:`expect_stream`).
2. Inputs are left alone: ``grading.verdict.expect_unchanged`` (it names the argument).
3. Arguments, not notebook globals: :func:`trap_globals` asks for one call twice, once with the
   notebook's globals of the same names bound to wrong values and once bound to the arguments
   themselves; :func:`expect_no_globals` fails when the two differ.
4. Result types: :func:`expect_dtype_kept` (a float64 leak has its own message), :func:`expect_long`,
   :func:`expect_no_graph` (sampler results carry no autograd graph).

Each failure names the likely cause.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .hidden import CheckFailed
from .records import ObjectRecord, TensorRecord
from .verdict import Outcome, Probe

__all__ = ["expect_global_rng_untouched", "expect_stream", "trap_globals", "expect_no_globals",
           "expect_dtype_kept", "expect_long", "expect_no_graph", "same_value"]


# ------------------------------------------------------------------------------------------------
# 1. Generator discipline
# ------------------------------------------------------------------------------------------------
def expect_global_rng_untouched(out: Outcome, fn: str) -> None:
    """A call that was given a ``generator`` changed none of the global random states."""
    out.value  # noqa: B018 - a call that raised reports its own error first
    moved = [name for name, changed in (out.rng_changed or {}).items() if changed]
    if not moved:
        return
    which = {"torch": "torch's global random state", "numpy": "NumPy's global random state",
             "python": "Python's `random` state"}
    raise CheckFailed(
        f"{fn} was given a `generator` but changed {', '.join(which.get(m, m) for m in moved)}.\n"
        f"Likely cause: a draw without the generator (torch.randn_like / torch.rand_like / torch.randint / "
        f"torch.randn without generator=generator, np.random.*), or reseeding the global state "
        f"(torch.manual_seed, e.g. from generator.initial_seed()): draw every random number from `generator`.")


def same_value(a: Any, b: Any, rtol: float = 1e-6, atol: float = 1e-7) -> bool:
    """Whether two recorded values agree: tensors and arrays elementwise (NaN equal to NaN), numbers
    within the tolerances, containers item by item."""
    if isinstance(a, TensorRecord) and isinstance(b, TensorRecord):
        return a.dtype == b.dtype and _arrays_close(a.array, b.array, rtol, atol)
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return _arrays_close(a, b, rtol, atol)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_value(x, y, rtol, atol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k], rtol, atol) for k in a)
    if isinstance(a, (int, float, np.floating, np.integer)) and isinstance(b, (int, float, np.floating, np.integer)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        fa, fb = float(a), float(b)
        return (math.isnan(fa) and math.isnan(fb)) or math.isclose(fa, fb, rel_tol=rtol, abs_tol=atol)
    if isinstance(a, ObjectRecord) and isinstance(b, ObjectRecord):
        return a.type == b.type
    return type(a) is type(b) and a == b


def _arrays_close(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))


def expect_stream(first: Any, second: Any, fresh: Any, fn: str) -> None:
    """``first`` and ``second`` came from two calls with one generator, ``fresh`` from a call with a new
    generator of the same seed: the second call must continue the stream (differ from the first)
    and the fresh one must reproduce the first."""
    if same_value(first, second, rtol=0, atol=0):
        raise CheckFailed(
            f"{fn}: two calls with the same generator object returned the same result; the second call "
            f"must continue the generator's stream.\nLikely cause: the function reseeds (e.g. "
            f"torch.Generator().manual_seed(generator.initial_seed()) or torch.manual_seed(...)) or copies "
            f"the generator's state instead of drawing from `generator` itself.")
    if not same_value(first, fresh, rtol=1e-6, atol=1e-7):
        raise CheckFailed(
            f"{fn}: a generator seeded like the first one did not reproduce its result.\nLikely cause: a "
            f"draw that does not come from `generator` (the global random state, or a generator made inside "
            f"the function): pass generator=generator to every random draw.")


# ------------------------------------------------------------------------------------------------
# 3. Arguments, not notebook globals
# ------------------------------------------------------------------------------------------------
def trap_globals(p: Probe, fn: str, args: Sequence, kwargs: dict, wrong: dict, right: dict, what: str,
                 **call_kwargs) -> tuple[Outcome, Outcome]:
    """Ask for ``fn(*args, **kwargs)`` twice: with the notebook globals ``wrong`` (names -> wrong
    values, e.g. the 1000-step schedule while the arguments hold a 37-step one) and with ``right``
    (the same names bound to values consistent with the arguments). A function that uses only its
    arguments returns the same in both (``call_kwargs``: ``global_seed``, ``wrap``, ...; a random
    function gets generators of one seed, made by the caller for each call)."""
    gens = call_kwargs.pop("generators", None)
    outs = []
    for k, bind in enumerate((wrong, right)):
        kw = dict(kwargs)
        if gens is not None:
            kw["generator"] = gens[k]
        outs.append(p.call(fn, *args, what=what, bind=bind, **call_kwargs, **kw))
    return outs[0], outs[1]


def expect_no_globals(trapped: Outcome, control: Outcome, names: Sequence[str], fn: str, context: str = "",
                      rtol: float = 1e-6, atol: float = 1e-7, hint: str | None = None) -> None:
    """The result did not change when the notebook globals ``names`` were bound to wrong values
    (``hint``: the likely cause, when the notebook has a more precise one)."""
    listed = ", ".join(f"`{n}`" for n in names)
    if control.raised:
        return  # the call fails on its own: judged by the check's other cases
    if trapped.raised:
        raise CheckFailed(
            f"{fn}{context} raised an error when the notebook's globals {listed} held other values "
            f"than its arguments:\n{trapped.error}\nLikely cause: " + (hint or "the function reads a notebook global "
            "(or a hard-coded T) instead of its arguments; take T from the schedule it is given (T = len(beta))."))
    if not same_value(trapped.value, control.value, rtol=rtol, atol=atol):
        raise CheckFailed(
            f"{fn}{context} returned another result when the notebook's globals {listed} held other "
            f"values than its arguments.\nLikely cause: " + (hint or "the function uses a notebook global instead of "
            "its argument (e.g. the global alpha_bar or T); compute everything from the arguments it is given."))


# ------------------------------------------------------------------------------------------------
# 4. Result types
# ------------------------------------------------------------------------------------------------
def expect_dtype_kept(value: Any, dtype: str, what: str, source: str = "the input",
                      rule: str = "for float32 inputs; results keep the input's dtype") -> None:
    """A returned tensor has ``dtype`` (e.g. ``"torch.float32"``, the input's) on the CPU (the checks'
    device); a float64 result for a float32 input gets its own message (``rule`` says what was due)."""
    if not isinstance(value, TensorRecord):
        return  # the value checks name a wrong type
    if value.dtype != dtype:
        if value.dtype == "torch.float64" and dtype == "torch.float32":
            raise CheckFailed(
                f"{what} returned a float64 tensor {rule}.\n"
                f"Likely cause: a float64 value made inside (np.array / NumPy math, torch.tensor of Python "
                f"floats, .double(), dtype=torch.float64) that is not cast back: return result.to(x.dtype).")
        raise CheckFailed(f"{what} returned dtype {value.dtype}, expected {dtype} ({source}'s dtype).\n"
                          f"Likely cause: a cast inside the function; keep {source}'s dtype (result.to(x.dtype)).")
    if value.device != "cpu":
        raise CheckFailed(f"{what} returned a tensor on {value.device} for inputs on the CPU; results stay on "
                          f"{source}'s device.\nLikely cause: a hard-coded device (.cuda(), device='cuda'): use "
                          f"x.device.")


def expect_long(value: Any, what: str) -> None:
    """Time steps and labels are ``torch.long`` tensors."""
    if isinstance(value, TensorRecord) and value.dtype != "torch.int64":
        raise CheckFailed(f"{what} has dtype {value.dtype}, expected torch.long (int64).\nLikely cause: "
                          f"time steps and labels are integer tensors; do not convert them to float or int32.")


def expect_no_graph(value: Any, what: str) -> None:
    """A sampler's result carries no autograd graph (even with a network that has parameters)."""
    if isinstance(value, (tuple, list)):
        for v in value:
            expect_no_graph(v, what)
        return
    if isinstance(value, TensorRecord) and (value.requires_grad or value.grad_fn):
        raise CheckFailed(
            f"{what} returned a tensor that carries an autograd graph (requires_grad=True) with a network "
            f"that has parameters.\nLikely cause: the model is called without torch.no_grad(): sampling "
            f"then keeps the graph of every step in memory; wrap the sampling in `with torch.no_grad():` "
            f"(or return x.detach()).")


