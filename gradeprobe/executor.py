"""Execute a plan of the trusted grader on a notebook's globals and record what came back.

Kernel side: runs in the student's kernel; what it records is data the verdict checks, never a verdict.

A plan (``gradeprobe.codec`` tree) is ``{"steps": [step, ...]}``; each step is one of

- ``{"do": "call", "key", "fn", "args", "kwargs", "wrap", "bind", "keep", "global_seed"}``: call
  the notebook's global ``fn`` (after seeding the global random states with ``global_seed``, if given). During the call the notebook globals named in ``bind`` are set to the given values
  and those named in ``wrap`` are replaced by wrappers that record each call of the student's own
  function (its arguments and result) and pass it through. ``keep`` names the result for later steps.
- ``{"do": "method", "key", "obj", "name", "args", "kwargs", "keep"}``: call a method of a kept object
  (``loss.backward()``, ``norm.forward(h, cond)``).
- ``{"do": "inspect", "key", "obj"}``: record an object's observable state (a module's parameters,
  gradients and buffers, a generator's state).

Arguments are data, or specs of objects built here: ``generator`` (a seeded ``torch.Generator``),
``stub`` (a model or optimizer of ``gradeprobe.stubs.KINDS`` or of a ``gradeprobe.stubs_<notebook>``
module, see :func:`stub_class`; a ``ref`` among its parameters is an object built earlier, e.g. the
model an optimizer updates; with ``record`` its calls are recorded) and ``ref`` (an object built or
kept earlier, by id).

Each step's record holds: ``ok``, ``error`` (type and message when it raised), ``value``, the tensor
arguments after the call (``args_after``, ``kwargs_after``: in-place edits show), whether the
global random states changed (``rng``: they are restored afterwards), the recorded calls of wrapped
functions (``wrapped``) and of recording stubs (``model_calls``), and the seconds it took.
"""
from __future__ import annotations

import importlib
import random
import time
from typing import Any

import numpy as np
import torch

from . import stubs
from .codec import Arrays, WireError, float_of, scalar

MAX_ITEMS = 10_000          # items of one list or dict that are recorded
MAX_WRAPPED_CALLS = 5_000   # calls of one wrapped function recorded per step
MAX_RECORD_BYTES = 192 * 1024 * 1024


# ------------------------------------------------------------------------------------------------
# Plan trees -> objects (in the kernel)
# ------------------------------------------------------------------------------------------------
_TORCH_DTYPES = {f"torch.{n}": getattr(torch, n) for n in
                 ("bool", "int8", "int16", "int32", "int64", "uint8", "float16", "float32", "float64",
                  "bfloat16")}


def build(tree: Any, arrays: dict, objects: dict) -> Any:
    """The object a plan tree describes (tensors are fresh copies: nothing is shared between calls)."""
    if not isinstance(tree, dict) or "t" not in tree:
        raise WireError(f"not a value tree: {tree!r:.80}")
    tag = tree["t"]
    if tag in ("none", "bool", "int", "str"):
        return tree.get("v")
    if tag == "float":
        return float_of(tree)
    if tag == "tensor":
        out = torch.from_numpy(np.array(arrays[tree["a"]], copy=True)).to(_TORCH_DTYPES[tree["dtype"]])
        return out.requires_grad_(True) if tree.get("requires_grad") else out
    if tag == "ndarray":
        return np.array(arrays[tree["a"]], copy=True)
    if tag in ("list", "tuple"):
        items = [build(v, arrays, objects) for v in tree["v"]]
        return items if tag == "list" else tuple(items)
    if tag == "dict":
        return {k: build(v, arrays, objects) for k, v in tree["v"].items()}
    if tag == "ref":
        return objects[tree["id"]]
    if tag == "generator":
        if tree["id"] not in objects:
            objects[tree["id"]] = torch.Generator().manual_seed(int(tree["seed"]))
        return objects[tree["id"]]
    if tag == "stub":
        if tree["id"] not in objects:
            params = {k: build(v, arrays, objects) for k, v in tree["params"].items()}
            model = stub_class(tree["kind"])(**params)
            objects[tree["id"]] = stubs.RecordingModel(model) if tree.get("record") else model
        return objects[tree["id"]]
    raise WireError(f"unknown tag {tag!r}")


def stub_class(kind: str):
    """The class a plan names: ``"constant"`` (``gradeprobe.stubs.KINDS``) or ``"sampling.FixedNoise"``
    (class ``FixedNoise`` of ``gradeprobe.stubs_sampling``, listed in its ``__all__``)."""
    if kind in stubs.KINDS:
        return stubs.KINDS[kind]
    module, _, name = kind.rpartition(".")
    if not module.isidentifier() or not name.isidentifier():
        raise WireError(f"unknown stub {kind!r}")
    mod = importlib.import_module(f"gradeprobe.stubs_{module}")
    if name not in getattr(mod, "__all__", ()):
        raise WireError(f"unknown stub {kind!r}")
    return getattr(mod, name)


# ------------------------------------------------------------------------------------------------
# Objects -> record trees (what the trusted side reads)
# ------------------------------------------------------------------------------------------------
class Recorder:
    """Encodes values into trees with their arrays, within a size budget."""

    def __init__(self):
        self.arrays = Arrays()
        self.bytes = 0

    def _array(self, arr: np.ndarray) -> str:
        self.bytes += arr.nbytes
        if self.bytes > MAX_RECORD_BYTES:
            raise WireError("the values to record are too large")
        return self.arrays.add(arr)

    def encode(self, v: Any, depth: int = 0) -> dict:
        if depth > 8:
            return {"t": "object", "type": "nested too deeply"}
        try:
            if isinstance(v, torch.Tensor):
                return self._tensor(v)
            if isinstance(v, np.ndarray):
                if v.dtype.name not in ("bool", "int8", "int16", "int32", "int64", "uint8",
                                        "float16", "float32", "float64"):
                    return {"t": "object", "type": f"numpy array of dtype {v.dtype}"}
                return {"t": "ndarray", "a": self._array(np.array(v, copy=True)),
                        "exact": type(v) is np.ndarray}
            if isinstance(v, np.generic) and not isinstance(v, (np.object_, np.void)):
                return {"t": "npscalar", "a": self._array(np.array(v))}
            if v is None or type(v) in (bool, int, float, str):
                return scalar(v)
            if type(v) in (list, tuple):
                items = [self.encode(x, depth + 1) for x in v[:MAX_ITEMS]]
                return {"t": type(v).__name__, "v": items, "length": len(v)}
            if type(v) is dict:
                return {"t": "dict", "v": {str(k): self.encode(x, depth + 1)
                                           for k, x in list(v.items())[:MAX_ITEMS]}}
        except WireError:
            raise
        except Exception as exc:  # noqa: BLE001 - a value that misbehaves when looked at
            return {"t": "object", "type": f"unreadable ({type(exc).__name__})"}
        return {"t": "object", "type": f"{type(v).__module__}.{type(v).__qualname__}"}

    def _tensor(self, x: torch.Tensor) -> dict:
        info = {"t": "tensor", "dtype": str(x.dtype), "device": str(x.device),
                "requires_grad": bool(x.requires_grad), "grad_fn": x.grad_fn is not None,
                "exact": type(x) is torch.Tensor, "shape": list(x.shape)}
        if x.is_complex() or x.is_sparse or x.device.type == "meta":
            info["t"] = "object"
            info["type"] = f"tensor ({x.dtype}, {x.layout}, {x.device})"
            return info
        data = torch.Tensor.detach(x).to("cpu")
        if data.dtype == torch.bfloat16:
            data = data.float()
        info["a"] = self._array(np.array(data.numpy(), copy=True))
        return info

    def state(self, obj: Any) -> dict:
        """The observable state of a kept object."""
        if isinstance(obj, torch.nn.Module):
            params = dict(obj.named_parameters())
            return {"t": "dict", "v": {
                "module": scalar(f"{type(obj).__module__}.{type(obj).__qualname__}"),
                "training": scalar(bool(obj.training)),
                "params": self.encode({k: p for k, p in params.items()}),
                "grads": self.encode({k: p.grad for k, p in params.items()}),
                "buffers": self.encode(dict(obj.named_buffers())),
            }}
        if isinstance(obj, torch.Generator):
            return {"t": "dict", "v": {"generator_state": self.encode(obj.get_state())}}
        if callable(getattr(type(obj), "probe_state", None)):  # a stub's counters (an optimizer's steps)
            return self.encode(obj.probe_state())
        return self.encode(obj)


# ------------------------------------------------------------------------------------------------
# Running the steps
# ------------------------------------------------------------------------------------------------
def _error(exc: BaseException) -> dict:
    return {"type": type(exc).__name__, "message": str(exc)[:4000]}


class _Globals:
    """Sets and restores notebook globals (``bind``) and wraps student functions (``wrap``)."""

    _MISSING = object()

    def __init__(self, ns: dict, bind: dict, wrap: list[str], rec: Recorder):
        self.ns, self.bind, self.wrap, self.rec = ns, bind, wrap, rec
        self.saved: list[tuple[str, Any]] = []
        self.calls: dict[str, list] = {}

    def __enter__(self):
        for name, value in self.bind.items():
            self.saved.append((name, self.ns.get(name, self._MISSING)))
            self.ns[name] = value
        for name in self.wrap:
            fn = self.ns.get(name)
            if not callable(fn):
                continue
            self.saved.append((name, fn))
            self.calls[name] = []
            self.ns[name] = self._wrapper(name, fn)
        return self

    def _wrapper(self, name: str, fn):
        calls, rec = self.calls[name], self.rec

        def wrapped(*args, **kwargs):
            entry = None
            if len(calls) < MAX_WRAPPED_CALLS:
                entry = {"args": rec.encode(list(args)), "kwargs": rec.encode(dict(kwargs))}
                calls.append(entry)
            try:
                out = fn(*args, **kwargs)
            except BaseException as exc:
                if entry is not None:
                    entry["error"] = _error(exc)
                raise
            if entry is not None:
                entry["value"] = rec.encode(out)
            return out

        wrapped.__name__ = getattr(fn, "__name__", name)
        wrapped.__doc__ = getattr(fn, "__doc__", None)
        return wrapped

    def __exit__(self, *exc):
        for name, value in reversed(self.saved):
            if value is self._MISSING:
                self.ns.pop(name, None)
            else:
                self.ns[name] = value
        return False


def _rng_states():
    return torch.random.get_rng_state(), np.random.get_state(), random.getstate()


def _rng_changed(before, after) -> dict:
    (t0, n0, p0), (t1, n1, p1) = before, after
    numpy_same = n0[0] == n1[0] and np.array_equal(n0[1], n1[1]) and tuple(n0[2:]) == tuple(n1[2:])
    return {"t": "dict", "v": {"torch": scalar(not torch.equal(t0, t1)),
                               "numpy": scalar(not numpy_same), "python": scalar(p0 != p1)}}


def _tensor_args(rec: Recorder, values) -> dict:
    """The tensors and arrays among the arguments, as they are after the call."""
    if isinstance(values, dict):
        return {"t": "dict", "v": {k: rec.encode(v) if isinstance(v, (torch.Tensor, np.ndarray))
                                   else scalar(None) for k, v in values.items()}}
    return {"t": "list", "v": [rec.encode(v) if isinstance(v, (torch.Tensor, np.ndarray)) else scalar(None)
                               for v in values]}


def _recorded_model_calls(rec: Recorder, objects: dict) -> dict:
    out = {}
    for oid, obj in objects.items():
        if isinstance(obj, stubs.RecordingModel) and obj.calls:
            out[oid] = rec.encode(obj.calls)
            obj.calls = []
    return {"t": "dict", "v": out}


def run_step(step: dict, ns: dict, arrays: dict, objects: dict, rec: Recorder) -> dict:
    kind = step.get("do")
    result: dict = {"ok": False, "error": None}
    t0 = time.perf_counter()
    if kind == "inspect":
        obj = objects.get(step["obj"])
        result.update(ok=obj is not None, value=rec.state(obj) if obj is not None else scalar(None))
        return result
    if kind == "call":
        fn = ns.get(step["fn"])
        if fn is None:
            result["error"] = {"type": "missing", "message": step["fn"]}
            return result
        if not callable(fn):
            result["error"] = {"type": "not callable", "message": type(fn).__name__}
            return result
    elif kind == "method":
        if step["obj"] not in objects:
            result["error"] = {"type": "missing object", "message": step["obj"]}
            return result
        try:
            fn = getattr(objects[step["obj"]], step["name"])
        except Exception as exc:  # noqa: BLE001
            result["error"] = _error(exc)
            return result
    else:
        raise WireError(f"unknown step {kind!r}")
    args = build(step.get("args", {"t": "list", "v": []}), arrays, objects)
    kwargs = build(step.get("kwargs", {"t": "dict", "v": {}}), arrays, objects)
    bind = build(step.get("bind", {"t": "dict", "v": {}}), arrays, objects)
    before = _rng_states()
    if step.get("global_seed") is not None:  # the check moves the global random state on purpose
        seed = int(step["global_seed"])
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
    seeded = _rng_states()
    value = None
    with _Globals(ns, bind, list(step.get("wrap", [])), rec) as g:
        try:
            with torch.enable_grad():
                value = fn(*args, **kwargs)
            result["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt too: the cell's time is up
            result["error"] = _error(exc)
            if isinstance(exc, KeyboardInterrupt):
                raise
    after = _rng_states()
    result["rng"] = _rng_changed(seeded, after)
    torch.random.set_rng_state(before[0])
    np.random.set_state(before[1])
    random.setstate(before[2])
    result["seconds"] = round(time.perf_counter() - t0, 4)
    result["value"] = rec.encode(value)
    result["args_after"] = _tensor_args(rec, args)
    result["kwargs_after"] = _tensor_args(rec, kwargs)
    result["wrapped"] = {name: calls for name, calls in g.calls.items()}
    result["model_calls"] = _recorded_model_calls(rec, objects)
    if step.get("keep"):
        objects[step["keep"]] = value
    return result


def execute(plan: tuple[dict, dict], ns: dict) -> tuple[dict, dict]:
    """Run every step of ``plan`` (``(tree, arrays)``) on ``ns``; returns the record ``(tree, arrays)``."""
    tree, arrays = plan
    objects: dict = {}
    rec = Recorder()
    steps = {}
    for step in tree.get("steps", []):
        try:
            steps[step["key"]] = run_step(step, ns, arrays, objects, rec)
        except WireError as exc:
            steps[step["key"]] = {"ok": False, "error": {"type": "probe", "message": str(exc)}}
    return {"question": tree.get("question"), "steps": steps}, dict(rec.arrays)
