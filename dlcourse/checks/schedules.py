"""Self-checks for the forward process and the reverse steps (lessons 02 and 03).

Each check runs the learner's function next to :class:`dlcourse.schedules.Schedule` on inputs that
include the edge steps t = 0, 1 and T − 1 and, on a mismatch, looks the learner's output up among the
wrong variants generated from the formula (``variants.neighbours``) to name the slip.
"""
from __future__ import annotations

from typing import Callable

import torch

from dlcourse.schedules import Schedule, cosine_betas, scaled_linear_betas
from dlcourse.validation import describe, fail

from .core import CheckResult, Rung, Slip, Stop, climb, compare, run_student
from .variants import Factor, Formula, Term, evaluate, formula_slips, neighbours, schedule_coefficients

__all__ = ["check_q_sample", "check_ddpm_step", "check_ddpm_loss", "check_ddim_step",
           "Q_SAMPLE", "ddpm_step_formula", "q_sample_slips", "ddpm_step_slips"]

Q_SAMPLE = Formula("x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε", (
    Term("the x0 term", (Factor("ᾱ_t", 0.5),), "x0"),
    Term("the noise term", (Factor("1 − ᾱ_t", 0.5),), "ε"),
))


def ddpm_step_formula(variance: str) -> Formula:
    """x_{t−1} = 1/√α_t·(x_t − β_t/√(1 − ᾱ_t)·ε_θ) + [t > 0]·σ_t·z with σ_t² = β_t or β̃_t."""
    sigma2 = "β_t" if variance == "beta" else "β̃_t"
    mean = Formula("x_t − β_t/√(1 − ᾱ_t)·ε_θ", (
        Term("the x_t term", (), "x_t"),
        Term("the ε_θ term", (Factor("β_t"), Factor("1 − ᾱ_t", -0.5)), "ε", sign=-1),
    ))
    return Formula(f"x_(t−1) = 1/√α_t·(x_t − β_t/√(1 − ᾱ_t)·ε_θ) + σ_t·z (σ_t = √{sigma2}, no noise at t = 0)", (
        Term("the mean", (Factor("α_t", -0.5),), mean),
        Term("the noise term", (Factor("[t > 0]"),), Formula("σ_t·z", (
            Term("the noise term", (Factor(sigma2, 0.5),), "z"),))),
    ))


def _shape_hint(error) -> str | None:
    if isinstance(error, Exception) and any(word in str(error) for word in ("size", "shape", "broadcast")):
        return ("schedule.alpha_bars[t] has shape (N,); reshape it to (N, 1, 1, 1) (e.g. .view(-1, 1, 1, 1)) "
                "so that each image gets its own coefficient.")
    return None


def _schedules() -> list[Schedule]:
    """The schedules the checks run on: scaled linear in float32, cosine in float64."""
    return [Schedule(scaled_linear_betas(50)), Schedule(cosine_betas(40), dtype=torch.float64)]


def q_sample_slips(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> list[Slip]:
    """The neighbours of x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε on these inputs."""
    return neighbours(Q_SAMPLE, lambda steps: schedule_coefficients(schedule, steps), t, {"x0": x0, "ε": noise},
                      x0, T=schedule.T)


def check_q_sample(fn: Callable) -> CheckResult:
    """``fn(schedule, x0, t, noise) -> x_t`` with x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε.

    The signature of :meth:`Schedule.q_sample` with the schedule as first argument
    (``schedule.q_sample(x0, t, noise)`` is ``Schedule.q_sample(schedule, x0, t, noise)``):
    x0 and noise are N×C×H×W, t a long tensor (N,), ᾱ is ``schedule.alpha_bars``.
    """
    if not callable(fn):
        raise fail("fn", "your q_sample function", describe(fn))
    gen = torch.Generator().manual_seed(0)
    inputs = []
    for (n, c, size), schedule in zip(((4, 3, 8), (1, 1, 5), (6, 3, 4)), [*_schedules(), _schedules()[1]]):
        t = torch.randint(2, schedule.T - 1, (n,), generator=gen)
        t[:3] = torch.tensor([schedule.T - 1, 0, 1])[:n]  # the edges: the last step, the first two
        x0 = torch.rand(n, c, size, size, generator=gen, dtype=schedule.dtype) * 2 - 1
        inputs.append((schedule, x0, t, torch.randn(n, c, size, size, generator=gen, dtype=schedule.dtype)))

    def reference(schedule, x0, t, noise):
        return schedule.q_sample(x0, t, noise)

    def diagnose(student_out, reference_out, args):
        return _shape_hint(student_out)

    return compare(fn, reference, inputs, name="q_sample", atol=1e-5, diagnose=diagnose,
                   slips=lambda args: q_sample_slips(*args))


def ddpm_step_slips(schedule: Schedule, x_t, t, eps, z, variance: str) -> list[Slip]:
    """The neighbours of the DDPM step on these inputs, and the mean masked at t = 0 with the noise."""
    formula = ddpm_step_formula(variance)

    def coefficients(steps):
        return schedule_coefficients(schedule, steps)

    operands = {"x_t": x_t, "ε": eps, "z": z}
    masked = Formula(formula.text, (Term("", (Factor("[t > 0]"),), formula),))
    return [Slip("only the noise term is masked at t = 0; the mean is needed for every image: "
                 f"{formula.text}.", lambda: evaluate(masked, coefficients(t), operands).to(x_t.dtype)),
            *neighbours(formula, coefficients, t, operands, x_t, T=schedule.T)]


def check_ddpm_step(fn: Callable) -> CheckResult:
    """``fn(schedule, x_t, t, eps_pred, z, variance="beta") -> x_{t−1}``:

    x_{t−1} = 1/√α_t·(x_t − β_t/√(1 − ᾱ_t)·ε_θ) + σ_t z, σ_t² = β_t ("beta") or β̃_t
    ("beta_tilde"), z the fresh noise, and no noise where t == 0. The signature of :meth:`Schedule.ddpm_step`
    with the schedule as first argument; the check runs it on two schedules (float32, float64),
    with t = 0, 1 and T − 1 among the steps.
    """
    if not callable(fn):
        raise fail("fn", "your ddpm_step function", describe(fn))
    gen = torch.Generator().manual_seed(1)
    float32, float64 = _schedules()
    inputs = []
    for n, c, size, schedule, variance in ((4, 3, 8, float32, "beta"), (4, 1, 4, float64, "beta_tilde"),
                                           (3, 3, 6, float32, "beta_tilde"), (3, 3, 4, float64, "beta")):
        t = torch.randint(2, schedule.T - 1, (n,), generator=gen)
        t[-3:] = torch.tensor([schedule.T - 1, 1, 0])  # the first step, and the last two of the chain
        x_t, eps, z = (torch.randn(n, c, size, size, generator=gen, dtype=schedule.dtype) for _ in range(3))
        inputs.append((schedule, x_t, t, eps, z, variance))

    def reference(schedule, x_t, t, eps_pred, z, variance):
        return schedule.ddpm_step(x_t, t, eps_pred, z=z, variance=variance)

    def diagnose(student_out, reference_out, args):
        return _shape_hint(student_out)

    return compare(fn, reference, inputs, name="ddpm_step", atol=1e-5, diagnose=diagnose,
                   slips=lambda args: ddpm_step_slips(*args))


_X0_HAT = Formula("x̂0 = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t", (
    Term("x̂0", (Factor("ᾱ_t", -0.5),), Formula("x_t − √(1 − ᾱ_t)·ε", (
        Term("x̂0's x_t term", (), "x_t"),
        Term("x̂0's ε term", (Factor("1 − ᾱ_t", 0.5),), "ε", sign=-1),
    ))),
))
DDIM_STEP = Formula("x_prev = √ᾱ_prev·x̂0 + √(1 − ᾱ_prev − σ²)·ε + σ·z with x̂0 = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t", (
    Term("the x̂0 term", (Factor("ᾱ_prev", 0.5),), _X0_HAT),
    Term("the ε term", (Factor("1 − ᾱ_prev − σ²", 0.5),), "ε"),
    Term("the noise term", (Factor("σ"),), "z"),
))
DDIM_SIGMA = Formula("σ = η·√((1 − ᾱ_prev)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev)", (
    Term("σ", (Factor("η"), Factor("(1 − ᾱ_prev)/(1 − ᾱ_t)", 0.5), Factor("1 − ᾱ_t/ᾱ_prev", 0.5)), "1"),
))


def _ddim_coefficients(schedule: Schedule, t: torch.Tensor, t_prev, eta: float, *, sigma_formula: Formula = DDIM_SIGMA,
                       prev_of_minus_one: float = 1.0, prev_shift: int = 0) -> dict[str, torch.Tensor]:
    """The DDIM coefficients per sample; ``sigma_formula``, ᾱ at t_prev = −1 and the index of ᾱ_prev
    (``prev_shift``) can be swapped for a slip's."""
    c = schedule_coefficients(schedule, t)
    ab_all = schedule.alpha_bars.detach().cpu().double()
    t_prev = torch.as_tensor(t_prev).long().cpu().expand(len(t))
    t_prev = torch.where(t_prev >= 0, (t_prev + prev_shift).clamp(0, schedule.T - 1), t_prev)
    ab, ab_prev = c["ᾱ_t"], torch.where(t_prev >= 0, ab_all[t_prev.clamp(min=0)],
                                        torch.full((len(t),), prev_of_minus_one, dtype=torch.float64))
    c.update({"ᾱ_prev": ab_prev, "1 − ᾱ_prev": 1 - ab_prev, "η": torch.full((len(t),), float(eta), dtype=torch.float64),
              "(1 − ᾱ_prev)/(1 − ᾱ_t)": (1 - ab_prev) / (1 - ab), "1 − ᾱ_t/ᾱ_prev": 1 - ab / ab_prev,
              "1 − ᾱ_prev/ᾱ_t": 1 - ab_prev / ab, "ᾱ_t/ᾱ_prev": ab / ab_prev})
    sigma = evaluate(sigma_formula, c, {"1": torch.ones(len(t), dtype=torch.float64)})
    c.update({"σ": sigma, "σ²": sigma ** 2, "1 − ᾱ_prev − σ²": (1 - ab_prev - sigma ** 2).clamp(min=0),
              "1 − ᾱ_prev − σ": (1 - ab_prev - sigma).clamp(min=0), "1 − ᾱ_prev + σ²": 1 - ab_prev + sigma ** 2,
              "1 − ᾱ_t − σ²": (1 - ab - sigma ** 2).clamp(min=0)})
    return c


def ddim_step_slips(schedule: Schedule, x_t, t, t_prev, eps, eta, z) -> list[Slip]:
    """The neighbours of the DDIM step, of its σ, and ᾱ_prev = alpha_bars[−1] at t_prev = −1, on these inputs."""
    operands = {"x_t": x_t, "ε": eps, "z": z if eta > 0 else torch.zeros_like(x_t)}

    def output(formula=DDIM_STEP, **options):
        return lambda: evaluate(formula, _ddim_coefficients(schedule, t, t_prev, eta, **options), operands).to(x_t.dtype)

    slips = [Slip("for t_prev = −1 use ᾱ_prev = 1 (the clean image): alpha_bars[-1] is the LAST entry, "
                  "ᾱ_(T−1), so the last step must not index alpha_bars.",
                  output(prev_of_minus_one=float(schedule.alpha_bars[-1]))),
             Slip("ᾱ_prev is looked up one step too late: ᾱ_prev = alpha_bars[t_prev] (not t_prev + 1).",
                  output(prev_shift=1)),
             Slip("ᾱ_prev is looked up one step too early: ᾱ_prev = alpha_bars[t_prev] (not t_prev − 1, not "
                  "alpha_bars_prev[t_prev]).", output(prev_shift=-1))]
    slips += [Slip(hint, output(sigma_formula=wrong)) for wrong, hint in formula_slips(DDIM_SIGMA, DDIM_SIGMA)]
    slips += neighbours(DDIM_STEP, lambda steps: _ddim_coefficients(schedule, steps, t_prev, eta), t, operands, x_t)
    return slips


def _ddim_hint(student_out, reference_out, args) -> str | None:
    """NaN (a square root of a negative number) names its cause; else the broadcasting hint."""
    if isinstance(student_out, torch.Tensor) and not bool(torch.isfinite(student_out).all()):
        if not isinstance(args[2], torch.Tensor) and args[2] == -1:
            return ("your output has NaN at t_prev = −1: use ᾱ_prev = 1 there (the clean image); alpha_bars[-1] is the "
                    "LAST entry, ᾱ_(T−1), which makes 1 − ᾱ_t/ᾱ_prev negative.")
        return ("your output has NaN: a square root of a negative number. In σ, 1 − ᾱ_t/ᾱ_prev ≥ 0 because ᾱ_t ≤ "
                "ᾱ_prev (not ᾱ_prev/ᾱ_t).")
    return _shape_hint(student_out)


def check_ddim_step(fn: Callable, schedule: Schedule) -> CheckResult:
    """``fn(x_t, t, t_prev, eps_pred, eta=0.0, z=None) -> x_prev`` for ``schedule`` (lesson 03):

    x̂0 = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t, x_prev = √ᾱ_prev·x̂0 + √(1 − ᾱ_prev − σ²)·ε + σ·z,
    σ = η·√((1 − ᾱ_prev)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev), ᾱ_prev = 1 at t_prev = −1; compared with
    ``schedule.ddim_step`` for η = 0, 0.5 and 1, long and short jumps, and the last step t_prev = −1.
    """
    if not callable(fn):
        raise fail("fn", "your ddim_step function", describe(fn))
    if not isinstance(schedule, Schedule):
        raise fail("schedule", "the lesson's Schedule", describe(schedule))
    schedule = schedule.to("cpu")  # the lesson's may live on the GPU; the check runs on the cpu
    gen = torch.Generator().manual_seed(7)
    T = schedule.T

    def case(n: int, t: int, t_prev: int, eta: float):
        x_t, eps, z = (torch.randn(n, 3, 4, 4, generator=gen) for _ in range(3))
        return x_t, torch.full((n,), t), t_prev, eps, eta, z

    inputs = [case(2, T - 1, T // 2, 0.0), case(3, T // 2, T // 10, 1.0), case(2, T - 1, T - 2, 0.5),
              case(2, T // 3, 1, 0.5), case(2, 5, -1, 0.0)]
    return compare(fn, schedule.ddim_step, inputs, name="ddim_step", atol=1e-4, devices=["cpu"],
                   diagnose=_ddim_hint, slips=lambda args: ddim_step_slips(schedule, *args))


class _Oracle:
    """An ε-model that knows x_0: it recovers ε from x_t exactly (loss 0) and records every t it is asked about.

    Called with a t that is not (N,) long steps in 0 … T − 1 it stops the learner's loss with a :class:`Stop`.
    """

    def __init__(self, schedule: Schedule, x0: torch.Tensor):
        self.schedule, self.x0, self.seen = schedule, x0, []

    def __call__(self, x_t, t):
        n, T = len(self.x0), self.schedule.T
        if not isinstance(t, torch.Tensor) or t.dtype != torch.long:
            raise Stop(f"model(x_t, t) got t = {describe(t)}", "pass t as the torch.long tensor of step indices.")
        if tuple(t.shape) != (n,):
            raise Stop(f"model(x_t, t) got t of shape {tuple(t.shape)}",
                       f"draw one t per image, shape (N,) = ({n},): torch.randint(0, schedule.T, (x0.shape[0],)).")
        if int(t.max()) > T - 1 or int(t.min()) < 0:
            raise Stop(f"t went up to {int(t.max())} with T = {T}",
                       "t is 0-based, t ∈ {0, …, T−1}: torch.randint(0, schedule.T, ...) excludes its upper bound.")
        if torch.equal(x_t, self.x0):
            raise Stop("the model received the clean x0", "pass the noisy x_t = q_sample(schedule, x0, t, noise) to "
                       "the model, not x0.")
        self.seen.append(t.detach().cpu())
        return self.schedule.predict_eps(x_t, t, self.x0)


def _index_hint(error: Exception) -> str | None:
    """Name the slip behind an error raised while indexing the schedule or validating t."""
    text = str(error)
    if isinstance(error, IndexError) or "timesteps in [0" in text:
        return ("t must stay in 0 … T−1 (0-based): draw it with torch.randint(0, schedule.T, (N,)), whose upper "
                "bound is excluded.")
    if "timesteps (one per image)" in text:
        return "draw one t per image, shape (N,): torch.randint(0, schedule.T, (x0.shape[0],))."
    if "integer tensor of timesteps" in text:
        return "t must be a torch.long tensor of step indices: torch.randint(0, schedule.T, (N,))."
    return None


def _zero_model_rungs(zero: float, x0: torch.Tensor) -> list[Rung]:
    """What the score of the model that always answers 0 tells: the target, the noise, the reduction."""
    evidence = f"a model that always answers 0 scores {zero:.4g}, expected E[ε²] ≈ 1"
    x0_score, pixels = float(x0.pow(2).mean()), x0[0].numel()
    return [
        Rung(lambda: abs(zero - x0_score) < 0.02, evidence + f" — it scores mean(x0²) = {x0_score:.4g}",
             "the target is the noise ε you mixed in, not the clean image x0: F.mse_loss(model(x_t, t), noise)."),
        Rung(lambda: abs(zero - 1 / 3) < 0.03, evidence + " — it scores 1/3 = E[u²] for u uniform in [0, 1)",
             "the noise is uniform (torch.rand_like); ε is Gaussian: noise = torch.randn_like(x0)."),
        Rung(lambda: abs(zero - (2 / torch.pi) ** 0.5) < 0.05, evidence + " — it scores E|ε| ≈ 0.80",
             "that is the mean absolute error; the loss is the mean SQUARED error, F.mse_loss(model(x_t, t), noise)."),
        Rung(lambda: abs(zero / len(x0) - 1) < 0.15, evidence + f" — it scores about N = {len(x0)}",
             "each image's mean squared error is summed over the batch; take the mean over everything, F.mse_loss."),
        Rung(lambda: abs(zero / pixels - 1) < 0.15, evidence + f" — it scores about C·H·W = {pixels}",
             "the squared error is summed over each image's pixels; take the mean over everything, F.mse_loss(...)."),
        Rung(lambda: abs(zero / x0.numel() - 1) < 0.15, evidence + f" — it scores about N·C·H·W = {x0.numel()}",
             "that is the sum of the squared errors; the loss is their mean, F.mse_loss(model(x_t, t), noise)."),
        Rung(lambda: abs(zero - 1) > 0.15, evidence,
             "compare model(x_t, t) with noise = torch.randn_like(x0) by F.mse_loss."),
    ]


def _t_rungs(seen: list[torch.Tensor], T: int) -> list[Rung]:
    """The steps the oracle was asked about: one per image, covering 0 … T − 1."""
    drawn = torch.cat(seen)
    missing = sorted(set(range(T)) - set(drawn.tolist()))
    evidence = f"over {len(drawn)} draws with T = {T}, t never took the values {missing}"
    return [
        Rung(lambda: all(bool((t == t[0]).all()) for t in seen),
             f"every image of a batch got the same t ({[int(t[0]) for t in seen]})",
             "draw one t per image, torch.randint(0, schedule.T, (x0.shape[0],)), so each batch trains the network "
             "at many noise levels at once."),
        Rung(lambda: 0 in missing, evidence,
             "t = 0 is never drawn: t is 0-based, t ∈ {0, …, T−1}; use torch.randint(0, schedule.T, (N,))."),
        Rung(lambda: bool(missing), evidence,
             "t = T − 1 is never drawn: torch.randint excludes its upper bound, so use torch.randint(0, schedule.T, (N,))."),
    ]


def check_ddpm_loss(fn: Callable) -> CheckResult:
    """``fn(model, batch, schedule) -> L_simple``: t ~ U{0, …, T−1} one per image, ε ~ N(0, I),
    x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, and the mean of (ε − model(x_t, t))².

    Deterministic: the global random state is seeded (and restored). Two models with a known loss
    are fed to ``fn``: the zero model scores E[ε²] ≈ 1 (x_0 is drawn so that E[x_0²] ≈ 1/12 and uniform noise,
    1/3, stand apart); an oracle that knows x_0 recovers ε from x_t exactly (loss 0) and records
    every t it is asked about. The recorded t's must cover 0 … T−1 (T = 4, 64 images per batch) and differ
    between the images of a batch.
    """
    if not callable(fn):
        raise fail("fn", "your ddpm_loss function", describe(fn))
    name = "ddpm_loss"
    schedule = Schedule(scaled_linear_betas(4))
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(64, 3, 4, 4, generator=gen) - 0.5
    batch = (x0, torch.zeros(64, dtype=torch.long))

    def run(model, seed):
        loss = run_student(fn, (model, batch, schedule), name, seed=seed, error_hint=_index_hint)
        climb(name, [Rung(lambda: not isinstance(loss, torch.Tensor) or loss.dim() != 0,
                          lambda: f"returned {describe(loss)}, expected a 0-dim tensor",
                          "return the mean squared error itself, F.mse_loss(model(x_t, t), noise): a tensor (not "
                          ".item()), so that training can call .backward() on it.")])
        return float(loss)

    zero = run(lambda x_t, t: torch.zeros_like(x_t), 0)
    climb(name, _zero_model_rungs(zero, x0))
    oracle = _Oracle(schedule, x0)
    losses = [run(oracle, seed) for seed in range(4)]
    worst = max(abs(loss) for loss in losses)
    climb(name, [Rung(lambda: worst > 1e-4,
                      f"a model that predicts the noise exactly must score 0; it scored up to {worst:.4f}",
                      "build x_t = q_sample(schedule, x0, t, noise) with the same t and noise you pass on, and "
                      "compare model(x_t, t) with that noise."),
                 *_t_rungs(oracle.seen, schedule.T)])
    drawn = sum(len(t) for t in oracle.seen)
    print(f"✅ {name}: a model that knows the noise scores 0 (max {worst:.1e}), the zero model {zero:.3f} ≈ 1, "
          f"and t covers 0 … T−1, one per image ({drawn} draws)")
    return CheckResult(name, len(oracle.seen), worst, ["cpu"], unit="batches")
