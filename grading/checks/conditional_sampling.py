"""Hidden checks of notebook 04's sampling answers: ``sample_digit`` (n samples of one requested
digit) and ``sample_grid`` (the 10 x N grid, row k asking for digit k, column j sharing its x_T).

Trusted: planned and judged in the grader's process (``grading.verdict``); the kernel only runs the
calls and records them.

Oracle: with the exact noise predictor of data whose class k is the single image ``centers[k]``
(``gradeprobe.stubs_conditional_sampling.FirstInputDeltaModel``), Algorithm 2 returns
``centers[y]`` for every example, whatever the noise, so a right answer is known without a
reference run. The stub also records the labels of every network call and the starting noise of
the first, which is how the checks see the labels asked for and how the columns share x_T.

The samplers here call the student's own ``p_sample_loop_conditional``; when that function is
itself wrong (the plan calls it directly on the same kind of input to find out), these checks
judge only what is their own (labels, shapes, the starting noise, the generator), so one mistake
loses its points once, in its own cell.
"""
from __future__ import annotations

import numpy as np
import torch

from grading.hidden import CheckFailed, as_array, expect
from grading.records import TensorRecord
from grading.verdict import Outcome, Probe, trusted

N_CLASSES = 10
SIZE = (1, 32, 32)
#: float32 images through T = 37 steps of the exact delta model: the sampler lands within this
TOL = 2e-3


def _schedule(T: int = 37) -> torch.Tensor:
    """A short linear schedule (float32, as the notebook's), T deliberately not 1000 or 50."""
    return torch.linspace(1e-3, 0.2, T, dtype=torch.float32)  # (T,)


def _centers(g: torch.Generator) -> torch.Tensor:
    """One image per class, values in [-0.8, 0.8]: (10, 1, 32, 32) float64."""
    return torch.rand(N_CLASSES, *SIZE, generator=g, dtype=torch.float64) * 1.6 - 0.8


def _tensor(v) -> np.ndarray | None:
    return v.array if isinstance(v, TensorRecord) else None


def _sampler_inputs(out: Outcome, model, loop_ok: bool) -> tuple[str, object, list]:
    """What the answer asked the sampler for: ``(where, x_T, [y of every call])``.

    From its call of the student's ``p_sample_loop_conditional`` when that loop is wrong (the loop's
    own mistakes are not this answer's); else from the network calls the stub model saw."""
    loops = out.wrapped("p_sample_loop_conditional") or []
    if loops and not loop_ok:
        c = loops[0]
        names = ("model", "x_T", "y", "beta")
        args = list(c.args) + [c.kwargs.get(k) for k in names[len(c.args):]]
        return "p_sample_loop_conditional", args[1], [args[2]]
    calls = out.model_calls(model)
    return "the model", (calls[0].get("x") if calls else None), [c.get("y") for c in calls]


def _judge_labels(where: str, ys: list, want_y: np.ndarray, label: str) -> None:
    """Every call (of the sampler or of the network) got the requested labels: a long (B,) tensor
    equal to ``want_y``."""
    expect(len(ys) > 0, f"{label} never called the model.",
           hint="sample with p_sample_loop_conditional(model, x_T, y, beta, generator=generator).")
    for i, y in enumerate(ys):
        which = f"call {i + 1} of {where}" if len(ys) > 1 else where
        expect(y is not None, f"{label}: {which} got no labels.",
               hint="pass the labels y to the sampler, which passes them to the model: model(x, t, y).")
        arr = _tensor(y)
        expect(arr is not None, f"{label}: the labels given to {where} are not a tensor.",
               hint="make them a torch.long tensor (torch.full or torch.arange).")
        expect(y.dtype == "torch.int64", f"{label}: the labels given to {where} have dtype {y.dtype}, "
               f"expected torch.long.", hint="build them with dtype=torch.long (labels index an embedding).")
        got = arr.reshape(-1)
        if got.shape != want_y.shape or not np.array_equal(got, want_y):
            shown = got[:12].tolist()
            hint = None
            if got.size == want_y.size and np.all(got == 3) and not np.all(want_y == 3):
                hint = "the digit is hard-coded to 3: use the argument `digit`."
            elif got.size == want_y.size and np.array_equal(np.sort(got), np.sort(want_y)):
                hint = ("the labels are in another order: row k of the grid (examples k*N ... k*N + N - 1) "
                        "asks for digit k, which is torch.arange(10).repeat_interleave(N), not .repeat(N).")
            elif got.size != want_y.size:
                hint = "one label per example: y has as many entries as x_T has images."
            raise CheckFailed(f"{label}: {which} got the labels {shown}"
                              f"{' ...' if got.size > 12 else ''}, expected {want_y[:12].tolist()}"
                              f"{' ...' if want_y.size > 12 else ''}."
                              + (f"\nLikely cause: {hint}" if hint else ""))


def _judge_steps(where: str, ys: list, T: int, label: str) -> None:
    """One network call per step of the schedule it was given (not of a global one)."""
    if where == "the model":
        expect(len(ys) == T, f"{label} called the model {len(ys)} times with a {T}-step schedule, "
               f"expected {T} (one call per step).",
               hint="sample with the schedule you are given (T = len(beta)), not a global one.")


def _judge_start(x_T, n: int, label: str) -> np.ndarray:
    """The starting noise the sampler got: (n, 1, 32, 32) standard normal draws."""
    x = _tensor(x_T)
    expect(x is not None and x.shape == (n, *SIZE),
           f"{label}: the sampler started from x_T of shape {None if x is None else x.shape}, "
           f"expected {(n, *SIZE)}.", hint="x_T holds one (1, 32, 32) image per requested sample.")
    x = x.astype(np.float64)
    mean, std = float(x.mean()), float(x.std())
    expect(abs(mean) < 0.15 and abs(std - 1) < 0.15,
           f"{label}: the starting noise x_T has mean {mean:.3f} and standard deviation {std:.3f}; "
           f"x_T ~ N(0, I) has 0 and 1.",
           hint="draw x_T with torch.randn (or gaussian_like), not torch.rand or zeros.")
    return x


def _loop_ok(loop: Outcome, want: np.ndarray) -> bool:
    """Whether the student's own p_sample_loop_conditional lands on the oracle's images."""
    try:
        return float(np.abs(as_array(loop.value, "the loop's output") - want).max()) <= TOL
    except (CheckFailed, ValueError):
        return False


def _judge_output(out: Outcome, loop: Outcome, want: np.ndarray, label: str) -> None:
    """The result is the sampler's: ``centers[y]`` for the delta data, float32 like the images.
    Judged against the oracle only when the student's own p_sample_loop_conditional is right."""
    rec = out.value
    got = as_array(rec, f"the samples of {label}", shape=want.shape, dtype="float")
    if isinstance(rec, TensorRecord):
        expect(rec.dtype == "torch.float32", f"the samples of {label} have dtype {rec.dtype}, expected "
               f"torch.float32 (the images' dtype).", hint="draw x_T as float32 (the default dtype).")
        expect(not rec.requires_grad and not rec.grad_fn,
               f"the samples of {label} carry an autograd graph.",
               hint="sample under torch.no_grad() or return x.detach().")
    if _loop_ok(loop, want):
        err = float(np.abs(got - want).max())
        expect(err <= TOL, f"{label}: with the exact noise predictor of data fixed at one image per class, "
               f"the samples should equal each requested class's image; they differ by up to {err:.3g}.",
               hint="return what p_sample_loop_conditional returns for your x_T and labels.")


def _judge_generator(runs: list[Outcome], pair: tuple[Outcome, Outcome], label: str) -> None:
    """Every draw comes from ``generator``: the global random state never moves, the same seed
    reproduces under another global seed, another seed differs, and one generator used for two
    calls continues its stream."""
    for run in runs + list(pair):
        moved = [k for k, v in run.rng_changed.items() if v]
        expect(not moved, f"{label} changed the global random state ({', '.join(moved)}).",
               hint="draw x_T from `generator` and pass generator=generator on to "
                    "p_sample_loop_conditional; never reseed (torch.manual_seed) inside.")
    a, b, c = (as_array(r.value, f"the samples of {label}") for r in runs)
    expect(np.array_equal(a, b), f"{label} gave different samples for the same generator seed "
           f"(only the global random state differed).",
           hint="every random draw (x_T and the noise of every step) must come from `generator`.")
    expect(not np.array_equal(a, c), f"{label} gave the same samples for two generator seeds.",
           hint="draw x_T from `generator`; do not reseed it (generator.manual_seed) or make one "
                "inside from a fixed seed.")
    first, second = (as_array(r.value, f"the samples of {label}") for r in pair)
    expect(not np.array_equal(first, second),
           f"two calls of {label} with one generator gave the same samples: the second call should "
           f"continue the generator's stream.",
           hint="do not reseed the generator (generator.manual_seed(...)) inside the function.")


# ------------------------------------------------------------------------------------------------
# sample_digit


@trusted
def check_sample_digit(p: Probe):
    label = "sample_digit(model, digit, n, beta)"
    beta = _schedule()
    T = len(beta)
    alpha_bar = torch.cumprod(1 - beta.double(), dim=0)
    centers = _centers(p.gen(1))
    digit = int(torch.randint(0, N_CLASSES, (1,), generator=p.gen(2)))
    digit = digit if digit != 3 else 7  # never the notebook's 3: a hard-coded 3 must show
    n = 5
    model = p.stub("conditional_sampling.FirstInputDeltaModel", centers=centers, alpha_bar=alpha_bar)
    out = p.call("sample_digit", model, digit, n, beta, generator=p.generator(0), what=label,
                 wrap=("p_sample_loop_conditional",))
    # the student's own loop on the same kind of input: is it right? (then the oracle value judges)
    x_T = torch.randn(n, *SIZE, generator=p.gen(3))
    loop_model = p.stub("conditional_sampling.FirstInputDeltaModel", centers=centers, alpha_bar=alpha_bar)
    loop = p.call("p_sample_loop_conditional", loop_model, x_T, torch.full((n,), digit, dtype=torch.long),
                  beta, generator=p.generator(1), what="p_sample_loop_conditional")
    gmodel = p.stub("conditional.ClassGaussianModel", centers=centers, alpha_bar=alpha_bar)
    runs = [p.call("sample_digit", gmodel, digit, 2, beta, generator=p.generator(s), global_seed=gs, what=label)
            for s, gs in ((7, 1), (7, 2), (8, 3))]
    shared = p.generator(9)
    pair = tuple(p.call("sample_digit", gmodel, digit, 2, beta, generator=shared, what=label) for _ in range(2))
    yield

    out.value  # noqa: B018 - a call that raised fails here with its own message
    want = centers[[digit] * n].numpy()
    where, x_start, ys = _sampler_inputs(out, model, _loop_ok(loop, want))
    _judge_labels(where, ys, np.full(n, digit, dtype=np.int64), label)
    _judge_steps(where, ys, T, label)
    _judge_start(x_start, n, label)
    _judge_output(out, loop, want, label)
    _judge_generator(runs, pair, label)


# ------------------------------------------------------------------------------------------------
# sample_grid


@trusted
def check_sample_grid(p: Probe):
    label = "sample_grid(model, n_per_class, beta)"
    beta = _schedule(29)
    T = len(beta)
    alpha_bar = torch.cumprod(1 - beta.double(), dim=0)
    centers = _centers(p.gen(1))
    n = 3
    want_y = np.repeat(np.arange(N_CLASSES), n)  # (10 n,): row k asks for digit k
    model = p.stub("conditional_sampling.FirstInputDeltaModel", centers=centers, alpha_bar=alpha_bar)
    out = p.call("sample_grid", model, n, beta, generator=p.generator(0), what=label,
                 wrap=("p_sample_loop_conditional",))
    x_T = torch.randn(N_CLASSES * n, *SIZE, generator=p.gen(3))
    loop_model = p.stub("conditional_sampling.FirstInputDeltaModel", centers=centers, alpha_bar=alpha_bar)
    loop = p.call("p_sample_loop_conditional", loop_model, x_T, torch.as_tensor(want_y), beta,
                  generator=p.generator(1), what="p_sample_loop_conditional")
    gmodel = p.stub("conditional.ClassGaussianModel", centers=centers, alpha_bar=alpha_bar)
    runs = [p.call("sample_grid", gmodel, 1, beta, generator=p.generator(s), global_seed=gs, what=label)
            for s, gs in ((7, 1), (7, 2), (8, 3))]
    shared = p.generator(9)
    pair = tuple(p.call("sample_grid", gmodel, 1, beta, generator=shared, what=label) for _ in range(2))
    yield

    result = out.value
    expect(isinstance(result, tuple) and len(result) == 2,
           f"{label} should return a pair (x_0, y), got {type(result).__name__}"
           f"{f' of length {len(result)}' if isinstance(result, (tuple, list)) else ''}.",
           hint="return samples, y.")
    samples, y = result
    y_arr = as_array(y, f"the labels returned by {label}", shape=(N_CLASSES * n,), dtype="long")
    if not np.array_equal(y_arr, want_y):
        hint = None
        if np.array_equal(np.sort(y_arr), want_y):
            hint = ("row k of the grid (examples k*N ... k*N + N - 1) asks for digit k: "
                    "torch.arange(10).repeat_interleave(N), not .repeat(N).")
        raise CheckFailed(f"{label} returned the labels {y_arr[:12].tolist()} ..., expected "
                          f"{want_y[:12].tolist()} ... (N = {n})." + (f"\nLikely cause: {hint}" if hint else ""))
    want = centers[want_y].numpy()
    where, x_start, ys = _sampler_inputs(out, model, _loop_ok(loop, want))
    _judge_labels(where, ys, want_y, label)
    _judge_steps(where, ys, T, label)
    x = _judge_start(x_start, N_CLASSES * n, label).reshape(N_CLASSES, n, -1)  # (row, column, pixels)
    same_column = all(np.array_equal(x[k], x[0]) for k in range(N_CLASSES))
    if not same_column:
        distinct = len(np.unique(x.reshape(N_CLASSES * n, -1), axis=0))
        if distinct == n:
            hint = ("the N starting noises are there but in another order: repeat_interleave repeats each "
                    "noise 10 times in a row; x.repeat(10, 1, 1, 1) gives column j noise j in every row.")
        elif distinct == N_CLASSES * n:
            hint = ("every example draws its own x_T; draw N_per_class noises once and repeat them for "
                    "the 10 rows (x.repeat(10, 1, 1, 1)).")
        else:
            hint = "draw N_per_class noises once and repeat them for the 10 rows (x.repeat(10, 1, 1, 1))."
        raise CheckFailed(f"{label}: the images of one column do not start from the same x_T "
                          f"({distinct} different starting images for {n} columns).\nLikely cause: {hint}")
    _judge_output(_Pair(out, samples), loop, want, label)
    _judge_generator([_Pair(r, r.value[0] if isinstance(r.value, tuple) else r.value) for r in runs],
                     tuple(_Pair(r, r.value[0] if isinstance(r.value, tuple) else r.value) for r in pair),
                     label)


class _Pair:
    """An outcome seen through the samples of the pair it returned (for the shared judges)."""

    def __init__(self, out: Outcome, samples):
        self._out, self.value = out, samples

    @property
    def rng_changed(self) -> dict:
        return self._out.rng_changed


CHECKS = {
    "sample_digit": check_sample_digit,
    "sample_grid": check_sample_grid,
}
