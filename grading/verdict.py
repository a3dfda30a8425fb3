"""Trusted verdicts: hidden tests whose expected values and decisions never enter the student's kernel.

Trusted: runs in the grading worker (or, outside grading, in the instructor's own process).

A trusted check is a generator function of one argument, a :class:`Probe`, with one ``yield``::

    @trusted
    def check_q_sample(p):
        x_0 = ...                                      # inputs, drawn from p.gen(...) (a secret seed)
        out = p.call("q_sample", x_0, t, ab, noise, what="q_sample(x_0, t, alpha_bar, noise)")
        yield                                          # --- the kernel runs the calls here ---
        got = as_tensor_array(out.value, "x_t", shape=x_0.shape)   # what came back, as plain data
        match_variants(got, want, variants, "q_sample")            # verdict: raises CheckFailed

Before the ``yield`` the check only *asks*: each ``p.call`` adds a step to the plan (which student
function to call, on which inputs, with which stub models and generators) and returns an
:class:`Outcome` that is empty for now. The plan goes to the kernel as plain data; the kernel's
probe (``gradeprobe``) executes it and sends back plain data (arrays, JSON). After the ``yield`` the
outcomes are filled and the check judges, in the trusted process, exactly as a check of
``grading.hidden`` did: same comparisons, same messages with the likely cause.

While grading, the worker plans every trusted check of a notebook with a seed drawn for that job
(:func:`plan_checks`), lets nbgrader execute the notebook, then judges (:func:`judge_checks`).
Outside grading, :func:`run_local` does all three in one process (nbval on ``solutions/``, the
mistake suites): the plan and the record still pass through the wire format.
"""
from __future__ import annotations

import hashlib
import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from gradeprobe.codec import Arrays, WireError, pack, read_file, scalar, unpack, write_file

from .hidden import CheckFailed
from .records import ObjectRecord, TensorRecord, decode, type_name

#: the hidden line of a trusted test cell: ``gradeprobe.run("01_forward_process", "q_sample", globals())``
PROBE_LINE = re.compile(r"""gradeprobe\.run\(\s*["'](\w+)["']\s*,\s*["'](\w+)["']\s*,\s*globals\(\)\s*\)""")
LOCAL_SEED = 0


# ------------------------------------------------------------------------------------------------
# Asking: specs and outcomes
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """An object the kernel builds for the plan: a seeded generator, a stub model, a kept result."""
    tree: dict

    @property
    def id(self) -> str:
        return self.tree["id"]


@dataclass(frozen=True)
class WrappedCall:
    """One call of a student's own building block, recorded while a graded function ran."""
    args: list
    kwargs: dict
    value: Any = None
    error: dict | None = None


class Outcome:
    """What one step of the plan gave; filled when the check resumes after its ``yield``."""

    def __init__(self, key: str, what: str, fn: str | None, error_hints: Sequence[tuple[str, str]]):
        self.key, self.what, self.fn, self.error_hints = key, what, fn, tuple(error_hints)
        self._record: dict | None = None
        self._arrays: dict = {}

    def _fill(self, record: dict | None, arrays: dict) -> None:
        self._record, self._arrays = record, arrays

    def _get(self, name: str) -> Any:
        if self._record is None:
            raise CheckFailed(f"{self.what} did not run: the hidden tests got no result for it "
                              f"(did the kernel stop, or did the notebook change the test code?).")
        return decode(self._record[name], self._arrays) if name in self._record else None

    @property
    def error(self) -> str | None:
        """The message the student would see for a call that raised, else None."""
        if self._record is None:
            self._get("value")
        err = self._record.get("error")
        if not err:
            return None
        kind, message = str(err.get("type", "")), str(err.get("message", ""))
        if kind == "missing":
            return f"`{message}` is not defined. Run its answer cell first (and keep its name)."
        if kind == "not callable":
            return f"`{self.fn}` should be a function or class, got {message}."
        if kind == "missing object":
            return f"{self.what} could not run: an earlier call it depends on failed."
        if kind == "NotImplementedError":
            return f"{self.what} is not implemented yet (it raises NotImplementedError)."
        if kind == "probe":
            return f"{self.what} could not be recorded: {message}"
        if kind == "CheckFailed":
            return message
        text = f"{self.what} raised {kind}: {message}"
        for pattern, hint in self.error_hints:
            if pattern in text:
                return f"{text}\nLikely cause: {hint}"
        return text

    @property
    def raised(self) -> bool:
        return self.error is not None

    @property
    def value(self) -> Any:
        """The returned value as plain data; raises :class:`CheckFailed` when the call raised."""
        err = self.error
        if err is not None:
            raise CheckFailed(err)
        return self._get("value")

    @property
    def args_after(self) -> list:
        """The tensor arguments as they were after the call (None for the others)."""
        self.value  # noqa: B018 - a call that raised has no meaningful arguments
        return self._get("args_after") or []

    @property
    def kwargs_after(self) -> dict:
        self.value  # noqa: B018
        return self._get("kwargs_after") or {}

    @property
    def rng_changed(self) -> dict:
        """``{"torch": bool, "numpy": bool, "python": bool}``: which global random states moved."""
        return self._get("rng") or {}

    def wrapped(self, name: str) -> list[WrappedCall] | None:
        """The recorded calls of the student's own ``name`` during this call (None if not defined)."""
        self._get("value")
        calls = (self._record.get("wrapped") or {}).get(name)
        if calls is None:
            return None
        out = []
        for c in calls:
            if not isinstance(c, dict):
                raise WireError("malformed wrapped call")
            out.append(WrappedCall(decode(c.get("args", {"t": "list", "v": []}), self._arrays),
                                   decode(c.get("kwargs", {"t": "dict", "v": {}}), self._arrays),
                                   decode(c["value"], self._arrays) if "value" in c else None,
                                   c.get("error")))
        return out

    def model_calls(self, model: Spec) -> list[dict]:
        """The calls a recording stub model saw during this step (x, t, rest, out, training, grad_enabled)."""
        return (self._get("model_calls") or {}).get(model.id, [])


def expect_unchanged(out: Outcome, inputs: dict[str, Any], fn: str) -> None:
    """The tensor arguments of call ``out`` (``{name: what was sent}``, in argument order, then the
    keyword arguments by name) are unchanged after the call: no in-place edit of an input."""
    after = list(out.args_after) + [out.kwargs_after.get(k) for k in inputs][len(out.args_after):]
    for (name, sent), got in zip(inputs.items(), after):
        if sent is None or got is None:
            continue
        want = sent.detach().cpu().numpy() if isinstance(sent, torch.Tensor) else np.asarray(sent)
        arr = got.array if isinstance(got, TensorRecord) else got
        if not (isinstance(arr, np.ndarray) and arr.shape == want.shape
                and np.array_equal(arr.astype(np.float64), want.astype(np.float64), equal_nan=True)):
            raise CheckFailed(f"{fn} changed its input `{name}` in place.\nLikely cause: an in-place "
                              f"operation (`+=`, `.mul_()`, `x[...] = ...`) on an argument; compute a "
                              f"new tensor instead.")


# ------------------------------------------------------------------------------------------------
# The probe a check asks through
# ------------------------------------------------------------------------------------------------
class Probe:
    """Collects the plan of one check; see the module docstring."""

    def __init__(self, assignment: str, question: str, seed: int):
        self.assignment, self.question, self.seed = assignment, question, int(seed)
        self.steps: list[dict] = []
        self.arrays = Arrays()
        self.outcomes: dict[str, Outcome] = {}
        self.frozen = False
        self._ids = 0

    # -- inputs ------------------------------------------------------------------------------
    def gen(self, offset: int) -> torch.Generator:
        """A generator for the check's own inputs: seeded from the job's secret seed and ``offset``,
        so that inputs change from one grading run to the next (hard-coded outputs fail)."""
        digest = hashlib.sha256(f"{self.seed}:{self.question}:{offset}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)

    # -- objects built in the kernel --------------------------------------------------------------
    def _id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}{self._ids}"

    def generator(self, seed: int) -> Spec:
        """A ``torch.Generator().manual_seed(seed)`` built in the kernel (one object, reused by id)."""
        return Spec({"t": "generator", "id": self._id("g"), "seed": int(seed)})

    def stub(self, kind: str, record: bool = False, **params) -> Spec:
        """A stub model of ``gradeprobe.stubs.KINDS``; with ``record`` its calls are recorded."""
        return Spec({"t": "stub", "id": self._id("m"), "kind": kind, "record": bool(record),
                     "params": {k: self._encode(v) for k, v in params.items()}})

    # -- steps ------------------------------------------------------------------------------------
    def _step(self, step: dict, what: str, fn: str | None, error_hints) -> Outcome:
        if self.frozen:
            raise RuntimeError("a trusted check asked for a call after its yield")
        key = f"s{len(self.steps)}"
        step["key"] = key
        self.steps.append(step)
        self.outcomes[key] = Outcome(key, what, fn, error_hints)
        return self.outcomes[key]

    def call(self, fn: str, *args, what: str | None = None, wrap: Sequence[str] = (),
             bind: dict | None = None, keep: bool = False, global_seed: int | None = None,
             error_hints: Sequence[tuple[str, str]] = (), **kwargs) -> Outcome:
        """Ask the kernel to call the notebook's ``fn(*args, **kwargs)``; see ``gradeprobe.executor``.

        ``wrap``: the student's own functions whose calls are recorded meanwhile; ``bind``: notebook
        globals set for the call; ``keep``: later steps may use the result; ``global_seed``: the global
        random states are seeded with it first (they are restored after every call)."""
        step = {"do": "call", "fn": fn, "args": self._encode(list(args)),
                "kwargs": self._encode(dict(kwargs)), "wrap": list(wrap),
                "bind": self._encode(dict(bind or {})),
                "global_seed": None if global_seed is None else int(global_seed)}
        out = self._step(step, what or fn, fn, error_hints)
        if keep:
            step["keep"] = out.key
        return out

    def method(self, obj: Outcome | Spec, name: str, *args, what: str | None = None,
               keep: bool = False, error_hints: Sequence[tuple[str, str]] = (), **kwargs) -> Outcome:
        """Ask the kernel to call ``obj.name(*args, **kwargs)`` on a kept result or a built object."""
        step = {"do": "method", "obj": obj.key if isinstance(obj, Outcome) else obj.id, "name": name,
                "args": self._encode(list(args)), "kwargs": self._encode(dict(kwargs))}
        out = self._step(step, what or name, None, error_hints)
        if keep:
            step["keep"] = out.key
        return out

    def inspect(self, obj: Outcome | Spec, what: str = "the object") -> Outcome:
        """Ask for an object's state: a module's parameters, gradients and buffers."""
        return self._step({"do": "inspect", "obj": obj.key if isinstance(obj, Outcome) else obj.id},
                          what, None, ())

    # -- encoding (trusted -> kernel) ---------------------------------------------------------------
    def _encode(self, v: Any) -> dict:
        if isinstance(v, Spec):
            return v.tree
        if isinstance(v, Outcome):
            return {"t": "ref", "id": v.key}
        if isinstance(v, torch.Tensor):
            return {"t": "tensor", "a": self.arrays.add(v.detach().cpu().numpy()),
                    "dtype": str(v.dtype), "requires_grad": bool(v.requires_grad)}
        if isinstance(v, np.ndarray):
            return {"t": "ndarray", "a": self.arrays.add(v)}
        if isinstance(v, (list, tuple)):
            return {"t": "list" if isinstance(v, list) else "tuple", "v": [self._encode(x) for x in v]}
        if isinstance(v, dict):
            return {"t": "dict", "v": {str(k): self._encode(x) for k, x in v.items()}}
        return scalar(v)

    def plan(self) -> tuple[dict, dict]:
        return ({"question": self.question, "assignment": self.assignment, "steps": self.steps},
                dict(self.arrays))

    def fill(self, record: tuple[dict, dict] | None) -> None:
        """Give every outcome its part of the kernel's record (None: nothing came back)."""
        tree, arrays = record if record is not None else ({}, {})
        if tree.get("fatal"):
            raise CheckFailed(f"the hidden tests could not run your code: {str(tree['fatal'])[:300]}")
        steps = tree.get("steps") if isinstance(tree.get("steps"), dict) else {}
        for key, out in self.outcomes.items():
            rec = steps.get(key)
            out._fill(rec if isinstance(rec, dict) else None, arrays)


# ------------------------------------------------------------------------------------------------
# Trusted checks
# ------------------------------------------------------------------------------------------------
class Session:
    """One trusted check on its way: planned, waiting for the kernel, then judged."""

    def __init__(self, check: "TrustedCheck", assignment: str, question: str, seed: int):
        self.probe = Probe(assignment, question, seed)
        self.question = question
        self._gen: Iterator = check.fn(self.probe)
        try:
            next(self._gen)
        except StopIteration:
            raise RuntimeError(f"trusted check {question} has no yield") from None
        self.probe.frozen = True

    def plan(self) -> tuple[dict, dict]:
        return self.probe.plan()

    def resume(self, record: tuple[dict, dict] | None) -> None:
        """Give the check the kernel's record and let it judge (raises its :class:`CheckFailed`)."""
        self.probe.fill(record)
        try:
            self._gen.send(None)
        except StopIteration:
            return
        raise RuntimeError(f"trusted check {self.question} yields more than once")

    def judge(self, record: tuple[dict, dict] | None) -> None:
        """Raise :class:`CheckFailed` with the student's message (question first) unless the record passes."""
        try:
            self.resume(record)
        except CheckFailed as exc:
            raise CheckFailed(f"{self.question}: {exc}") from None
        except WireError as exc:
            raise CheckFailed(f"{self.question}: the hidden tests got an unreadable result from the "
                              f"kernel ({exc}).") from None


class TrustedCheck:
    """A check in the trusted form; calling it on a namespace runs it locally (see :func:`run_local`)."""

    def __init__(self, fn: Callable[[Probe], Iterator[None]]):
        self.fn = fn
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__

    def start(self, assignment: str, question: str, seed: int) -> Session:
        return Session(self, assignment, question, seed)

    def __call__(self, ns: dict, assignment: str = "", question: str | None = None,
                 seed: int = LOCAL_SEED) -> None:
        """Plan, execute on ``ns`` in this process, judge; messages without the question prefix (the
        mistake tests call checks this way)."""
        session = self.start(assignment, question or self.__name__, seed)
        session.resume(_through_the_wire(session, ns))


def trusted(fn: Callable[[Probe], Iterator[None]]) -> TrustedCheck:
    """Mark a generator function as a trusted check (see the module docstring)."""
    return TrustedCheck(fn)


def checks_module(assignment: str):
    parts = assignment.split("_", 1)
    if len(parts) != 2 or not parts[0].isdigit():
        raise ValueError(f"assignment ids look like '01_forward_process', got {assignment!r}")
    return importlib.import_module(f"grading.checks.{parts[1]}")


def load_check(assignment: str, question: str) -> TrustedCheck:
    check = checks_module(assignment).CHECKS.get(question)
    if not isinstance(check, TrustedCheck):
        raise RuntimeError(f"no trusted check {question!r} for {assignment}")
    return check


def _through_the_wire(session: Session, ns: dict) -> tuple[dict, dict]:
    """Execute a session's plan on ``ns`` in this process; the plan and the record pass through the
    wire format exactly as plan and record files would."""
    from gradeprobe.executor import execute

    return unpack(*pack(*execute(unpack(*pack(*session.plan())), ns)))


def run_local(assignment: str, question: str, ns: dict, seed: int = LOCAL_SEED) -> None:
    """Plan, execute and judge one check in this process (no grading run: the instructor's own
    notebooks and tests). Raises :class:`CheckFailed` with the student's message on failure."""
    session = load_check(assignment, question).start(assignment, question, seed)
    session.judge(_through_the_wire(session, ns))


# ------------------------------------------------------------------------------------------------
# Grading runs: plan before the kernel starts, judge after it finished
# ------------------------------------------------------------------------------------------------
def probe_questions(nb: dict) -> dict[str, tuple[str, str]]:
    """``{test grade_id: (assignment, question)}`` of the trusted test cells of a source notebook."""
    out = {}
    for cell in nb.get("cells", []):
        meta = (cell.get("metadata") or {}).get("nbgrader") or {}
        if cell.get("cell_type") != "code" or not meta.get("grade") or meta.get("solution"):
            continue
        src = "".join(cell["source"]) if isinstance(cell.get("source"), list) else cell.get("source", "")
        m = PROBE_LINE.search(src)
        if m:
            out[meta["grade_id"]] = (m.group(1), m.group(2))
    return out


def plan_checks(nb: dict, plan_dir: str, seed: int) -> dict[str, Session]:
    """Plan every trusted test cell of source notebook ``nb``; write the plans into ``plan_dir``.
    Returns ``{grade_id: session}`` to judge later."""
    sessions = {}
    for gid, (assignment, question) in probe_questions(nb).items():
        session = load_check(assignment, question).start(assignment, question, seed)
        write_file(plan_dir, question, *session.plan())
        sessions[gid] = session
    return sessions


@dataclass(frozen=True)
class Verdict:
    passed: bool
    message: str = ""
    ran: bool = True    # whether the kernel sent a record at all


def judge_checks(sessions: dict[str, Session], base: str, records_dir: str) -> dict[str, Verdict]:
    """Read each session's record from ``base/records_dir`` (walked without following links: the
    folder belongs to the student's uid) and judge it."""
    out = {}
    for gid, session in sessions.items():
        try:
            record = read_file(records_dir, session.question, base=base)
        except (OSError, WireError):
            record = None
        try:
            if record is None:
                raise CheckFailed(f"{session.question}: the hidden tests of this cell did not run (the "
                                  f"cell did not reach them, or the kernel stopped).")
            session.judge(record)
        except CheckFailed as exc:
            out[gid] = Verdict(False, str(exc), ran=record is not None)
        except Exception as exc:  # noqa: BLE001 - a check's own bug: never a pass
            out[gid] = Verdict(False, f"{session.question}: the hidden tests could not judge this "
                                      f"answer ({type(exc).__name__}: {exc}).")
        else:
            out[gid] = Verdict(True)
    return out


__all__ = ["CheckFailed", "ObjectRecord", "Outcome", "Probe", "Spec", "TensorRecord", "TrustedCheck",
           "Verdict", "WrappedCall", "expect_unchanged", "judge_checks", "plan_checks", "probe_questions", "run_local",
           "trusted", "type_name"]
