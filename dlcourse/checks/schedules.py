"""Self-checks for the forward process and the DDPM reverse step (lesson 02).

Each check runs the learner's function next to :class:`dlcourse.schedules.Schedule` on random
inputs (several shapes, float32 and float64) and, on a mismatch, tries the usual slips one by
one to say which formula the learner's output actually matches.
"""
from __future__ import annotations

from typing import Callable

import torch

from dlcourse.schedules import Schedule, cosine_betas, scaled_linear_betas
from dlcourse.validation import describe, fail

from .core import CheckResult, compare

__all__ = ["check_q_sample", "check_ddpm_step", "check_ddpm_loss"]


def _col(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (x.dim() - 1))).to(x.device, x.dtype)


def _matching_slip(student_out, candidates: list[tuple[str, Callable[[], torch.Tensor]]]) -> str | None:
    """The hint of the first candidate formula that reproduces the learner's output."""
    if not isinstance(student_out, torch.Tensor):
        return None
    for hint, formula in candidates:
        wrong = formula()
        if wrong.shape == student_out.shape and torch.allclose(student_out.double(), wrong.double(),
                                                               atol=1e-5, rtol=1e-4):
            return hint
    return None


def _shape_hint(error) -> str | None:
    if isinstance(error, Exception) and ("size" in str(error) or "shape" in str(error) or "broadcast" in str(error)):
        return ("schedule.alpha_bars[t] has shape (N,); reshape it to (N, 1, 1, 1) (e.g. .view(-1, 1, 1, 1)) "
                "so that each image gets its own coefficient.")
    return None


def _schedules() -> list[Schedule]:
    """The schedules the checks run on: scaled linear in float32, cosine in float64."""
    return [Schedule(scaled_linear_betas(50)), Schedule(cosine_betas(40), dtype=torch.float64)]


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
        t = torch.randint(1, schedule.T, (n,), generator=gen)
        t[0] = schedule.T - 1 if n > 1 else t[0]
        x0 = torch.rand(n, c, size, size, generator=gen, dtype=schedule.dtype) * 2 - 1
        inputs.append((schedule, x0, t, torch.randn(n, c, size, size, generator=gen, dtype=schedule.dtype)))

    def reference(schedule, x0, t, noise):
        return schedule.q_sample(x0, t, noise)

    def diagnose(student_out, reference_out, args):
        if isinstance(student_out, Exception):
            return _shape_hint(student_out)
        schedule, x0, t, noise = args
        ab = _col(schedule.alpha_bars[t], x0)
        alpha, beta = _col(schedule.alphas[t], x0), _col(schedule.betas[t], x0)

        def closed_form(t_used):
            return reference(schedule, x0, t_used, noise)

        return _matching_slip(student_out, [
            ("you used √β_t instead of √(1 − ᾱ_t) for the noise: β_t is one step's variance, "
             "1 − ᾱ_t the variance after all steps up to t.",
             lambda: ab.sqrt() * x0 + beta.sqrt() * noise),
            ("x0 is scaled by ᾱ_t; it should be √ᾱ_t (the mean of q(x_t|x0) is √ᾱ_t·x0).",
             lambda: ab * x0 + (1 - ab).sqrt() * noise),
            ("the noise is scaled by (1 − ᾱ_t); it should be √(1 − ᾱ_t) (that is its standard deviation).",
             lambda: ab.sqrt() * x0 + (1 - ab) * noise),
            ("both square roots are missing: x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε.",
             lambda: ab * x0 + (1 - ab) * noise),
            ("the two coefficients are swapped: x0 gets √ᾱ_t and the noise √(1 − ᾱ_t).",
             lambda: (1 - ab).sqrt() * x0 + ab.sqrt() * noise),
            ("the noise is added unscaled; multiply it by √(1 − ᾱ_t) so the variance stays bounded.",
             lambda: ab.sqrt() * x0 + noise),
            ("you used the one-step α_t (schedule.alphas); q(x_t|x0) needs the cumulative product "
             "ᾱ_t = schedule.alpha_bars[t].",
             lambda: alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise),
            ("off by one: t is 0-based here, use alpha_bars[t], not alpha_bars[t − 1] (or alpha_bars_prev).",
             lambda: closed_form((t - 1).clamp(min=0))),
            ("off by one: use alpha_bars[t], not alpha_bars[t + 1].",
             lambda: closed_form((t + 1).clamp(max=schedule.T - 1))),
            ("every image used the first image's ᾱ; index alpha_bars with the whole tensor t (one ᾱ per image).",
             lambda: closed_form(t[:1].expand_as(t))),
        ])

    return compare(fn, reference, inputs, name="q_sample", atol=1e-5, diagnose=diagnose)


def check_ddpm_step(fn: Callable) -> CheckResult:
    """``fn(schedule, x_t, t, eps_pred, noise, variance="beta") -> x_{t−1}``:

    x_{t−1} = 1/√α_t·(x_t − β_t/√(1 − ᾱ_t)·ε_θ) + σ_t z, σ_t² = β_t ("beta") or β̃_t
    ("beta_tilde"), and no noise where t == 0. The signature of :meth:`Schedule.ddpm_step`
    with the schedule as first argument; the check runs it on two schedules (float32, float64).
    """
    if not callable(fn):
        raise fail("fn", "your ddpm_step function", describe(fn))
    gen = torch.Generator().manual_seed(1)
    float32, float64 = _schedules()
    inputs = []
    for n, c, size, schedule, variance in ((4, 3, 8, float32, "beta"), (4, 1, 4, float64, "beta_tilde"),
                                           (3, 3, 6, float32, "beta_tilde"), (2, 3, 4, float64, "beta")):
        t = torch.randint(1, schedule.T, (n,), generator=gen)
        t[-1] = 0  # the last step of the chain: no noise
        x_t, eps, z = (torch.randn(n, c, size, size, generator=gen, dtype=schedule.dtype) for _ in range(3))
        inputs.append((schedule, x_t, t, eps, z, variance))

    def reference(schedule, x_t, t, eps_pred, noise, variance):
        return schedule.ddpm_step(x_t, t, eps_pred, noise=noise, variance=variance)

    def diagnose(student_out, reference_out, args):
        if isinstance(student_out, Exception):
            return _shape_hint(student_out)
        schedule, x_t, t, eps, z, variance = args
        beta, alpha = _col(schedule.betas[t], x_t), _col(schedule.alphas[t], x_t)
        ab, beta_tilde = _col(schedule.alpha_bars[t], x_t), _col(schedule.beta_tildes[t], x_t)
        sigma2 = beta if variance == "beta" else beta_tilde
        other2 = beta_tilde if variance == "beta" else beta
        later = _col((t > 0).float(), x_t)
        noise = later * sigma2.sqrt() * z
        mean = (x_t - beta / (1 - ab).sqrt() * eps) / alpha.sqrt()
        return _matching_slip(student_out, [
            ("noise is added at t = 0 too; the last step (t == 0) must return the mean only.",
             lambda: mean + sigma2.sqrt() * z),
            ("no noise is added at t > 0: add σ_t·noise (σ_t = √β_t or √β̃_t) wherever t > 0.",
             lambda: mean),
            ("the noise is scaled by σ_t² instead of σ_t; take the square root of the variance.",
             lambda: mean + later * sigma2 * z),
            (f"variance='{variance}' was asked for, but your noise has the other variance "
             "(β_t ↔ β̃_t = schedule.beta_tildes[t]).",
             lambda: mean + later * other2.sqrt() * z),
            ("you used √β_t instead of β_t/√(1 − ᾱ_t) as the coefficient of ε_θ.",
             lambda: (x_t - beta.sqrt() * eps) / alpha.sqrt() + noise),
            ("you used √(1 − ᾱ_t) instead of β_t/√(1 − ᾱ_t) as the coefficient of ε_θ "
             "(√(1 − ᾱ_t)·ε is the noise in x_t; one step removes only the part β_t/√(1 − ᾱ_t)·ε).",
             lambda: (x_t - (1 - ab).sqrt() * eps) / alpha.sqrt() + noise),
            ("the ε coefficient divides by (1 − ᾱ_t); it should divide by √(1 − ᾱ_t).",
             lambda: (x_t - beta / (1 - ab) * eps) / alpha.sqrt() + noise),
            ("the bracket is not divided by √α_t.",
             lambda: (x_t - beta / (1 - ab).sqrt() * eps) + noise),
            ("the bracket is divided by √ᾱ_t; the DDPM mean divides by the one-step √α_t.",
             lambda: (x_t - beta / (1 - ab).sqrt() * eps) / ab.sqrt() + noise),
            ("only the noise term should be masked at t = 0; the mean is needed for every image.",
             lambda: later * (mean + sigma2.sqrt() * z)),
        ])

    return compare(fn, reference, inputs, name="ddpm_step", atol=1e-5, diagnose=diagnose)


class _Slip(Exception):
    """A slip spotted while the learner's loss runs, with the hint that names it."""


def check_ddpm_loss(fn: Callable) -> CheckResult:
    """``fn(model, batch, schedule) -> L_simple``: t ~ U{0, …, T−1} one per image, ε ~ N(0, I),
    x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, and the mean of (ε − model(x_t, t))².

    Deterministic: the global random state is seeded (and restored). Two models with a known loss
    are fed to ``fn``: an oracle that knows x_0 recovers ε from x_t exactly (loss 0) and records
    every t it is asked about; the zero model scores E[ε²] ≈ 1. The recorded t's must cover
    0 … T−1 (T = 4 and 64 images per batch) and differ between the images of a batch.
    """
    if not callable(fn):
        raise fail("fn", "your ddpm_loss function", describe(fn))
    name = "ddpm_loss"
    schedule = Schedule(scaled_linear_betas(4))
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(64, 3, 4, 4, generator=gen) * 2 - 1
    batch = (x0, torch.zeros(64, dtype=torch.long))
    seen: list[torch.Tensor] = []

    def oracle(x_t, t):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.long:
            raise _Slip(f"model(x_t, t) got t = {describe(t)}: pass t as the torch.long tensor of step indices.")
        if tuple(t.shape) != (len(x0),):
            raise _Slip(f"model(x_t, t) got t of shape {tuple(t.shape)}: draw one t per image, shape (N,) = ({len(x0)},) "
                        "(torch.randint(0, schedule.T, (x0.shape[0],), ...)).")
        if int(t.max()) > schedule.T - 1 or int(t.min()) < 0:
            raise _Slip(f"t went up to {int(t.max())} with T = {schedule.T}: t is 0-based, t ∈ {{0, …, T−1}}; "
                        "torch.randint(0, schedule.T, ...) excludes its upper bound.")
        seen.append(t.detach().cpu())
        return schedule.predict_eps(x_t, t, x0)

    def run(model, seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                loss = fn(model, batch, schedule)
            except NotImplementedError as error:
                raise AssertionError(f"❌ {name}: fill in the exercise first — the code still raises "
                                     "NotImplementedError (replace the placeholder and run the cell again).") from error
            except _Slip as slip:
                raise AssertionError(f"❌ {name}: {slip}") from None
            except IndexError as error:
                raise AssertionError(
                    f"❌ {name}: your code raised IndexError ({error})\n   Hint: t must stay in 0 … T−1 (0-based): "
                    "draw it with torch.randint(0, schedule.T, (N,)), whose upper bound is excluded.") from error
            except Exception as error:  # noqa: BLE001 - any learner error is reported, with the original chained
                raise AssertionError(f"❌ {name}: your code raised {type(error).__name__}: {error}") from error
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise AssertionError(
                f"❌ {name}: returned {describe(loss)}, expected a 0-dim tensor\n   Hint: return the mean "
                "squared error itself, F.mse_loss(model(x_t, t), noise): a tensor (not .item()), so that "
                "training can call .backward() on it.")
        return float(loss)

    zero = run(lambda x_t, t: torch.zeros_like(x_t), 0)
    if abs(zero - float(x0.pow(2).mean())) < 0.02:
        raise AssertionError(f"❌ {name}: a model that always answers 0 scores {zero:.3f} = mean(x0²)\n"
                             "   Hint: the target is the noise ε you mixed in, not the clean image x0.")
    if abs(zero - 1) > 0.15:
        raise AssertionError(f"❌ {name}: a model that always answers 0 scores {zero:.3f}, expected E[ε²] ≈ 1\n"
                             "   Hint: compare model(x_t, t) with noise = torch.randn_like(x0) by F.mse_loss.")
    worst = 0.0
    for seed in range(4):
        loss = run(oracle, seed)
        worst = max(worst, abs(loss))
        if abs(loss) > 1e-4:
            raise AssertionError(
                f"❌ {name}: a model that predicts the noise exactly must score 0; it scored {loss:.4f}\n"
                "   Hint: build x_t = q_sample(schedule, x0, t, noise) with the same t and noise you pass on, "
                "and compare model(x_t, t) with that noise.")
    if all(bool((t == t[0]).all()) for t in seen):
        raise AssertionError(f"❌ {name}: every image of a batch got the same t ({[int(t[0]) for t in seen]})\n"
                             "   Hint: draw one t per image, torch.randint(0, schedule.T, (x0.shape[0],)), so "
                             "each batch trains the network at many noise levels at once.")
    drawn = torch.cat(seen)
    missing = sorted(set(range(schedule.T)) - set(drawn.tolist()))
    if missing:
        hint = ("t = 0 is never drawn: t is 0-based, t ∈ {0, …, T−1}; use torch.randint(0, schedule.T, (N,))."
                if 0 in missing else
                "t = T − 1 is never drawn: torch.randint excludes its upper bound, so use torch.randint(0, schedule.T, (N,)).")
        raise AssertionError(f"❌ {name}: over {len(drawn)} draws with T = {schedule.T}, t never took the values "
                             f"{missing}\n   Hint: {hint}")
    print(f"✅ {name}: a model that knows the noise scores 0 (max {worst:.1e}), the zero model {zero:.3f} ≈ 1, "
          f"and t covers 0 … T−1, one per image ({len(drawn)} draws)")
    return CheckResult(name, len(seen), worst, ["cpu"], unit="batches")
