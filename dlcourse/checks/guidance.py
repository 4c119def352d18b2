"""Self-checks for classifier-free guidance (lesson 04): the Bernoulli context mask, the CFG training loss,
the CFG combination and the batched guided ε.

The loss and guided-ε checks hand the learner's code a stand-in ε-model that records every call, so they can
say *what* went wrong (which half got which context, how many calls, which rows were dropped) whatever order
the learner draws random numbers in. Each check is a ladder of :class:`~dlcourse.checks.core.Rung`\\ s.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from dlcourse.guidance import cfg_eps, guided_eps_fn, one_hot
from dlcourse.schedules import Schedule, scaled_linear_betas
from dlcourse.validation import describe, fail

from .core import CheckResult, Rung, Slip, Stop, climb, compare, name_slip, run_student

__all__ = ["check_context_mask", "check_cfg_loss", "check_cfg_eps", "check_guided_eps_fn", "mask_rungs",
           "cfg_eps_slips", "RecordingEps"]

ONCE_PER_BATCH = ("draw one uniform number PER SAMPLE (torch.rand(batch_size, ...)), not one for the whole batch: "
                  "each sample keeps or drops its own context.")
# (drop_prob, number of samples) where the dropped share is measured: not only the default 0.1
_RATES = ((0.1, 20_000), (0.5, 20_000), (0.25, 20_000))


def _rate_rung(dropped: float, p: float, n: int, what: str = "contexts") -> Rung:
    """The dropped share of n samples must be p within 4 standard errors; an inverted mask is named."""
    tolerance = 4 * math.sqrt(p * (1 - p) / n)
    evidence = f"with drop_prob = {p}, {dropped:.1%} of {n} {what} were dropped (expected {p:.0%} ± {tolerance:.1%})"
    gaussian = (1 + math.erf(p / math.sqrt(2))) / 2  # the share a N(0, 1) draw falls below p
    if abs(dropped - (1 - p)) <= tolerance:
        hint = "the mask is inverted: 1 must KEEP the context (probability 1 − drop_prob)."
    elif abs(dropped - gaussian) <= 4 * math.sqrt(gaussian * (1 - gaussian) / n):
        hint = "torch.randn draws Gaussian numbers; compare a UNIFORM draw, torch.rand(...), with drop_prob."
    elif abs(dropped - 0.1) <= 4 * math.sqrt(0.09 / n):
        hint = "the drop rate is always 0.1: use the drop_prob you are given, not the default."
    else:
        hint = "draw one uniform number per sample and keep the context where it is ≥ drop_prob."
    return Rung(lambda: abs(dropped - p) > tolerance, evidence, hint)


def mask_rungs(draw: Callable[..., torch.Tensor], what: str = "contexts") -> list[Rung]:
    """The ladder of a Bernoulli(1 − p) keep-mask; ``draw(n, p, seed, global_seed=0)`` returns it as floats (n,).

    In order: drawn per sample, not once per batch; drawn with the generator (same seed → same mask, another
    seed → another mask); the dropped share at several drop_prob; drop_prob 0 and 1 exactly.
    """
    masks = [draw(64, 0.5, seed) for seed in range(8)]
    rungs = [Rung(lambda: all(bool((m == m[0]).all()) for m in masks),
                  "with drop_prob = 0.5 every batch of 64 was kept or dropped as a whole (8 batches)", ONCE_PER_BATCH),
             Rung(lambda: not torch.equal(draw(64, 0.5, 1, 1), draw(64, 0.5, 1, 2)),
                  "the same generator seed gave different masks (the global random state decided)",
                  "draw with the generator you are given: torch.rand(batch_size, generator=generator, device=...)."),
             Rung(lambda: torch.equal(draw(64, 0.5, 1), draw(64, 0.5, 2)),
                  "two generators with different seeds gave the same mask",
                  "draw with the generator you are given, not a fresh torch.Generator of your own.")]
    rungs += [_rate_rung(1 - draw(n, p, int(p * 1000)).mean().item(), p, n, what) for p, n in _RATES]
    for p, everything in ((0.0, "kept (all ones)"), (1.0, "dropped (all zeros)")):
        mask = draw(1000, p, 3)
        rungs.append(Rung(lambda mask=mask, p=p: not torch.equal(mask, torch.full_like(mask, 1 - p)),
                          f"with drop_prob = {p:g}, {int((mask == 0).sum())} of 1000 {what} were dropped",
                          f"with drop_prob = {p:g} every context must be {everything}; keep a context where a "
                          "uniform draw in [0, 1) is ≥ drop_prob."))
    return rungs


def check_context_mask(fn: Callable) -> CheckResult:
    """``fn(batch_size, drop_prob, generator=None, device=None) -> float (B,)``: 1 keeps a sample's context
    (probability 1 − drop_prob), 0 drops the whole context of that sample.

    In order: one 0/1 float per sample; then :func:`mask_rungs`.
    """
    if not callable(fn):
        raise fail("fn", "your context_mask function", describe(fn))
    name = "context_mask"

    def draw(n, p, seed, global_seed=0):
        mask = run_student(fn, (n, p, torch.Generator().manual_seed(seed)), name, seed=global_seed)
        is_tensor = isinstance(mask, torch.Tensor)
        climb(name, [
            Rung(lambda: not is_tensor, f"fn({n}, {p}) returned {describe(mask)}, expected a float tensor ({n},)",
                 "return the mask as a tensor: (torch.rand(batch_size, generator=generator) >= drop_prob).float()."),
            Rung(lambda: mask.dim() > 1, lambda: f"fn({n}, {p}) returned shape {tuple(mask.shape)}, expected ({n},)",
                 "return ONE value per sample (shape (B,)): a mask drops a sample's whole context, not single entries."),
            Rung(lambda: mask.dtype == torch.bool, f"fn({n}, {p}) returned a bool tensor",
                 "convert the boolean mask to float (e.g. .float()) so it can multiply the context."),
            Rung(lambda: tuple(mask.shape) != (n,) or not mask.is_floating_point(),
                 lambda: f"fn({n}, {p}) returned {describe(mask)}, expected a float tensor of shape ({n},)",
                 "one float per sample: torch.rand(batch_size, ...) compared with drop_prob, then .float()."),
            Rung(lambda: not bool(((mask == 0) | (mask == 1)).all()), f"fn({n}, {p}) returned values other than 0 and 1",
                 lambda: "the mask is rescaled like nn.Dropout's; it is 0 or 1 only: (u >= drop_prob).float()."
                 if bool(((mask == 0) | ((mask - 1 / (1 - p)).abs() < 1e-6)).all()) else
                 "compare a uniform draw with drop_prob (e.g. torch.rand(B) >= drop_prob)."),
        ])
        return mask.detach().float().cpu()

    climb(name, mask_rungs(draw))
    result = CheckResult(name, 8 + 2 + len(_RATES) + 2, 0.0, ["cpu"], unit="batches")
    print(f"✅ {name}: drawn per sample with your generator; dropped fractions match drop_prob "
          f"{', '.join(str(p) for p, _ in _RATES)} ({_RATES[0][1]} draws each), and drop_prob 0 and 1 are exact")
    return result


class RecordingEps(nn.Module):
    """Stand-in ε-model ε(x, t, c, c_mask) = a_t·x + (m·c) W that records the inputs of every call.

    Like ``ConditionalUNet``: ``c=None`` is the null context, ``c_mask`` (B,) multiplies the rows of c.
    """

    def __init__(self, T: int, context_dim: int, channels: int):
        super().__init__()
        g = torch.Generator().manual_seed(12)
        self.a = nn.Parameter(torch.linspace(0.3, 0.9, T))
        self.weight = nn.Parameter(torch.randn(context_dim, channels, generator=g))
        self.calls: list[dict[str, torch.Tensor]] = []

    def forward(self, x, t, c=None, c_mask=None):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise Stop(f"the model got x = {describe(x)}", "give the model one batch of images (N, C, H, W): join "
                       "batches with torch.cat([x_t, x_t]) (torch.stack adds a dimension).")
        n = x.shape[0]
        if c is None:
            c = x.new_zeros(n, self.weight.shape[0])
        rows = [len(v) for v in (t, c) if isinstance(v, torch.Tensor) and v.dim() > 0]
        if rows and all(r == 2 * n for r in rows):
            raise Stop(f"the model got {n} images but {2 * n} steps and contexts",
                       "double the images too: torch.cat([x_t, x_t]) goes with torch.cat([t, t]) and [c; 0].")
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n,):
            raise Stop(f"the model got {n} images but t = {describe(t)}",
                       "one step per image: when the images are [x_t; x_t], the steps are torch.cat([t, t]).")
        if not isinstance(c, torch.Tensor) or tuple(c.shape) != (n, self.weight.shape[0]):
            raise Stop(f"the model got {n} images but c = {describe(c)}",
                       f"one context row per image, shape ({n}, {self.weight.shape[0]}): with [x_t; x_t] the contexts "
                       "are torch.cat([c, torch.zeros_like(c)]); a mask multiplies c as c * mask[:, None].")
        if c_mask is not None:
            if not isinstance(c_mask, torch.Tensor) or tuple(c_mask.shape) != (n,):
                raise Stop(f"the model got {n} images but c_mask = {describe(c_mask)}",
                           f"c_mask has one 1/0 per image, shape ({n},).")
            c = c * c_mask.to(c.dtype)[:, None]
        self.calls.append({"x": x.detach().clone(), "t": t.detach().clone(), "c": c.detach().clone()})
        return self.a[t].view(-1, 1, 1, 1) * x + (c @ self.weight)[:, :, None, None]

    def predict(self, x, t, c):
        """What the model answers, without recording the call."""
        with torch.no_grad():
            return self.a[t].view(-1, 1, 1, 1) * x + (c @ self.weight)[:, :, None, None]


_T, _CLASSES, _SHAPE = 10, 5, (3, 4, 4)


def _kept_rows(c_seen: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: kept whole (equal to c), dropped whole (all zero)."""
    return (c_seen == c).all(1), (c_seen == 0).all(1)


def _cfg_loss_error_hint(error: Exception) -> str | None:
    if "must match the size" in str(error):
        return "c has shape (N, context_dim) and the mask (N,): multiply row by row, c * mask[:, None]."
    return None


def _run_cfg_loss(fn, schedule, n: int, p: float, seed: int, global_seed: int = 0):
    """One call of the learner's cfg_loss on a recording model: (loss, x0, c, the model's one call, model)."""
    name = "cfg_loss"
    g = torch.Generator().manual_seed(100 + seed)
    x0 = torch.rand(n, *_SHAPE, generator=g) * 2 - 1
    c = one_hot(torch.arange(n) % _CLASSES, _CLASSES)
    model = RecordingEps(_T, _CLASSES, _SHAPE[0])
    loss = run_student(fn, (model, x0, c, schedule, p, torch.Generator().manual_seed(seed)), name, seed=global_seed,
                       error_hint=_cfg_loss_error_hint)
    climb(name, [
        Rung(lambda: not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad,
             f"returned {describe(loss)}, expected the loss as a one-element tensor with a gradient",
             "return the loss tensor itself (not loss.item() or a detached copy): training calls .backward() on it."),
        Rung(lambda: len(model.calls) != 1, f"the model was called {len(model.calls)} times for one batch",
             "call the model once, on the whole noisy batch: model(x_t, t, c, c_mask)."),
    ])
    return loss, x0, c, model.calls[0], model


def _context_rungs(batches, p: float) -> list[Rung]:
    """Whole contexts dropped, per sample, at the rate p (over the recorded batches)."""
    rows = [_kept_rows(call["c"], c) for _, _, c, call, _ in batches]

    def mixed():
        for (_, _, c, call, _), (kept, dropped) in zip(batches, rows):
            if not bool((kept | dropped).all()):
                row = int((~(kept | dropped)).nonzero()[0])
                return call["c"][row].tolist(), c[row].tolist()
        return None

    found = mixed()
    kept = torch.cat([k for k, _ in rows])
    return [
        Rung(lambda: found is not None,
             lambda: f"a row of the context the model received is {found[0]}, neither the sample's context "
                     f"{found[1]} nor all zeros",
             "drop a sample's WHOLE context (c * mask[:, None], or pass the mask as the model's c_mask); "
             "this is not nn.Dropout: no single features, no rescaling."),
        Rung(lambda: bool(kept.all()),
             f"with drop_prob = {p} the model received every sample's context unchanged ({len(batches)} batches)",
             "apply the mask to the CONTEXT c (c * c_mask[:, None], or model(x_t, t, c, c_mask)), "
             "not to the image or the noise."),
        Rung(lambda: all(bool((k == k[0]).all()) for k, _ in rows),
             f"with drop_prob = {p} each batch kept or dropped its contexts all together",
             ONCE_PER_BATCH + " Use your context_mask(n, drop_prob, generator, x0.device)."),
        _rate_rung(1 - kept.float().mean().item(), p, len(kept)),
    ]


def _step_rungs(call, x0, schedule) -> list[Rung]:
    """The steps t the model received and the x_t built from them."""
    t, x = call["t"], call["x"]
    shaped = t.dtype == torch.long and tuple(t.shape) == (len(x0),) and tuple(x.shape) == tuple(x0.shape)
    noise = schedule.predict_eps(x, t, x0) if shaped else None  # the ε that x_t implies
    return [
        Rung(lambda: t.dtype != torch.long or tuple(t.shape) != (len(x0),),
             f"the model received t = {describe(t)}", "one integer step per sample: a long tensor (B,)."),
        Rung(lambda: bool((t == t[0]).all()), "every sample of the batch got the same t",
             "draw one t per sample: torch.randint(0, schedule.T, (n,), ...)."),
        Rung(lambda: int(t.min()) != 0 or int(t.max()) != _T - 1,
             f"over {len(t)} samples t ran from {int(t.min())} to {int(t.max())}, expected 0 … T−1 = {_T - 1}",
             "t is 0-based: torch.randint(0, schedule.T, (n,)) (the upper bound is excluded)."),
        Rung(lambda: tuple(x.shape) != tuple(x0.shape), f"the model received x of shape {tuple(x.shape)}",
             "pass x_t, shaped like x0."),
        Rung(lambda: bool(noise.min() >= 0) and bool(noise.max() < 1),
             "the ε that x_t implies lies in [0, 1): uniform noise",
             "the noise is Gaussian: torch.randn(x0.shape, generator=generator), not torch.rand."),
        Rung(lambda: abs(noise.std().item() - 1) > 0.1 or abs(noise.mean().item()) > 0.1,
             lambda: f"the x_t the model received does not look like q_sample(x0, t, ε) with ε ~ N(0, I) "
                     f"(implied ε has mean {noise.mean():.2f}, std {noise.std():.2f})",
             lambda: _noise_scale_hint(x, t, x0, schedule)),
    ]


def _noise_scale_hint(x: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, schedule: Schedule) -> str:
    """Which scale of the noise makes x_t = √ᾱ_t·x0 + scale·ε hold with ε ~ N(0, I)."""
    ab, beta = schedule.alpha_bars[t].view(-1, 1, 1, 1), schedule.betas[t].view(-1, 1, 1, 1)
    rest = x - ab.sqrt() * x0
    for scale, hint in ((beta.sqrt(), "the noise is scaled by √β_t; q_sample scales it by √(1 − ᾱ_t)."),
                        (1 - ab, "the noise is scaled by 1 − ᾱ_t; q_sample scales it by its square root √(1 − ᾱ_t)."),
                        (torch.ones_like(ab), "the noise is added unscaled; q_sample scales it by √(1 − ᾱ_t).")):
        implied = rest / scale
        if abs(implied.std().item() - 1) < 0.1 and abs(implied.mean().item()) < 0.1:
            return hint
    return "x_t = schedule.q_sample(x0, t, noise) = √ᾱ_t·x0 + √(1 − ᾱ_t)·noise, noise = torch.randn(...)."


def _loss_rungs(loss, call, x0, schedule, model) -> tuple[list[Rung], float]:
    """The loss value for what the model received: ‖ε − ε_θ‖², with the x0-target slip named."""
    out = model.predict(call["x"], call["t"], call["c"])
    noise = schedule.predict_eps(call["x"], call["t"], x0)
    expected, got = (out - noise).square().mean().item(), loss.item()
    if math.isclose(got, (out - x0).square().mean().item(), rel_tol=1e-4):
        hint = "the target is the noise ε, not x0."
    elif math.isclose(got, (out - noise).abs().mean().item(), rel_tol=1e-4):
        hint = "that is the mean absolute error; the loss is the mean SQUARED error, F.mse_loss(eps_pred, noise)."
    else:
        hint = "the loss is the mean squared error between the model's output and the noise: F.mse_loss(eps_pred, noise)."
    return [Rung(lambda: not math.isclose(got, expected, rel_tol=1e-4, abs_tol=1e-6),
                 f"loss {got:.6g}, expected {expected:.6g} for what the model received", hint)], abs(got - expected)


def check_cfg_loss(fn: Callable) -> CheckResult:
    """``fn(model, x0, c, schedule, drop_prob, generator=None) -> ‖ε − ε_θ(x_t, t, m·c)‖²`` with a fresh
    Bernoulli(1 − drop_prob) mask m_i, t_i ~ U{0, …, T−1} and ε_i ~ N(0, I) per sample.

    A recording stand-in model shows what reached the network; checked in order: one call per batch;
    whole contexts dropped (not features, not the image); a mask per sample, not per batch; the dropped
    share at drop_prob 0.5 and 0.1; t's range; x_t = q_sample(x0, t, ε); the loss value; the generator.
    """
    if not callable(fn):
        raise fail("fn", "your cfg_loss function", describe(fn))
    name = "cfg_loss"
    schedule = Schedule(scaled_linear_betas(_T))
    climb(name, _context_rungs([_run_cfg_loss(fn, schedule, 32, 0.5, seed) for seed in range(8)], 0.5))
    loss, x0, c, call, model = _run_cfg_loss(fn, schedule, 400, 0.1, seed=11)
    climb(name, _context_rungs([(loss, x0, c, call, model)], 0.1) + _step_rungs(call, x0, schedule))
    loss_rungs, loss_diff = _loss_rungs(loss, call, x0, schedule, model)
    first, second = (_run_cfg_loss(fn, schedule, 32, 0.5, seed=5, global_seed=k)[3] for k in (1, 2))
    climb(name, loss_rungs + [Rung(lambda: not all(torch.equal(first[k], second[k]) for k in ("x", "t", "c")),
                                   "the same generator seed gave different masks, steps or noise",
                                   "pass generator= to every random draw: the mask, torch.randint for t and "
                                   "torch.randn for the noise.")])
    print(f"✅ {name}: whole contexts dropped per sample at the rate drop_prob (0.5 and 0.1), t in 0…T−1 per sample, "
          f"x_t from q_sample, loss = ‖ε − ε_θ‖², reproducible with the generator (checked on 11 batches)")
    return CheckResult(name, 11, loss_diff, ["cpu"], unit="batches")


def cfg_eps_slips(ec: torch.Tensor, eu: torch.Tensor, w: float) -> list[Slip]:
    """ε̃ = (1 + w)·ε_c − w·ε_u as the usual mistakes compute it."""
    return [
        Slip("this is diffusers' form ε_u + s·(ε_c − ε_u) with guidance_scale s = w; in the lectures' convention "
             "guidance_scale = 1 + w, so use (1 + w)·ε_c − w·ε_u.", lambda: eu + w * (ec - eu)),
        Slip("conditional and unconditional are swapped: (1 + w) multiplies eps_cond.", lambda: (1 + w) * eu - w * ec),
        Slip("the sign of the second term: subtract w·eps_uncond.", lambda: (1 + w) * ec + w * eu),
        Slip("eps_cond is weighted by w; it should be (1 + w).", lambda: w * ec - w * eu),
        Slip("eps_uncond is weighted by (1 + w); it should be w: (1 + w)·ε_c − w·ε_u.", lambda: (1 + w) * (ec - eu)),
        Slip("w is ignored: you returned eps_cond alone; return (1 + w)·ε_c − w·ε_u.", lambda: ec),
        Slip("w is ignored: you returned eps_uncond alone; return (1 + w)·ε_c − w·ε_u.", lambda: eu),
        Slip("the brackets: w multiplies only ε_c; (1 + w)·ε_c − w·ε_u, not 1 + w·ε_c − w·ε_u.",
             lambda: 1 + w * ec - w * eu),
    ]


def check_cfg_eps(fn: Callable) -> CheckResult:
    """``fn(eps_cond, eps_uncond, w) -> ε̃ = (1 + w)·eps_cond − w·eps_uncond`` for a number w
    (lecture convention: w = 0 conditional, w = −1 unconditional)."""
    if not callable(fn):
        raise fail("fn", "your cfg_eps function", describe(fn))
    gen = torch.Generator().manual_seed(2)
    inputs = []
    for shape, dtype, w in (((4, 3, 8, 8), torch.float32, 2.0), ((2, 1, 5, 5), torch.float64, 7.5),
                            ((3, 3, 4, 4), torch.float32, 0.5), ((2, 4), torch.float32, 0.0),
                            ((2, 3, 4, 4), torch.float64, -1.0), ((1, 3, 4, 4), torch.float32, -2.0)):
        inputs.append((torch.randn(shape, generator=gen, dtype=dtype), torch.randn(shape, generator=gen, dtype=dtype), w))
    return compare(fn, cfg_eps, inputs, name="cfg_eps", slips=lambda args: cfg_eps_slips(*args))


def guided_call_rungs(calls, x, t, c, where: str) -> list[Rung]:
    """One model call on [x_t; x_t], [t; t] and contexts [c; 0] (either order)."""
    n, zero = len(x), torch.zeros_like(c)
    call = calls[0] if len(calls) == 1 else None
    ok_x = call is not None and call["x"].shape[0] == 2 * n and torch.equal(call["x"], torch.cat([x, x]))
    halves = (call["c"][:n], call["c"][n:]) if ok_x else (None, None)

    def halves_are(a, b):
        return torch.equal(halves[0], a) and torch.equal(halves[1], b)

    return [
        Rung(lambda: len(calls) == 2, where + "eps_fn called the model twice (two passes of N images)",
             "call it ONCE on a batch of 2N: model(torch.cat([x_t, x_t]), torch.cat([t, t]), "
             "torch.cat([c, torch.zeros_like(c)])), then split the output with .chunk(2)."),
        Rung(lambda: len(calls) != 1, where + f"eps_fn called the model {len(calls)} times",
             "one call on [x_t; x_t] with contexts [c; 0] per eps_fn call."),
        Rung(lambda: not ok_x, lambda: where + f"the model received x of shape {tuple(call['x'].shape)}, not "
                                              f"[x_t; x_t] of shape {(2 * n, *x.shape[1:])}",
             "stack the batch with itself: torch.cat([x_t, x_t])."),
        Rung(lambda: not torch.equal(call["t"], torch.cat([t, t])), where + "the model did not receive [t; t]",
             "repeat the steps too: torch.cat([t, t])."),
        Rung(lambda: halves_are(c, c), where + "the unconditional half received the real context c",
             "the second half must get the null context: torch.zeros_like(c) (or a c_mask of 0s)."),
        Rung(lambda: halves_are(zero, zero), where + "both halves received the null context",
             "the first half keeps c: contexts torch.cat([c, torch.zeros_like(c)])."),
        Rung(lambda: not (halves_are(c, zero) or halves_are(zero, c)),
             where + "the contexts the model received are neither c nor all zeros in each half",
             "contexts torch.cat([c, torch.zeros_like(c)]): N copies of the context, then N null contexts."),
    ]


def guided_value_rungs(out, want, eps_cond, eps_uncond, w: float, where: str, what: str = "eps_fn") -> list[Rung]:
    """ε̃ of shape (N, …) equal to (1 + w)·ε_c − w·ε_u, with the usual wrong combinations named."""
    n = len(want)
    shaped = isinstance(out, torch.Tensor) and out.shape == want.shape
    diff = (out - want).abs().max().item() if shaped else float("inf")
    slips = [Slip("w is applied to the wrong half: (1 + w) multiplies the CONDITIONAL prediction (the half with c).",
                  lambda: (1 + w) * eps_uncond - w * eps_cond),
             Slip("this is diffusers' form with guidance_scale = w; here guidance_scale = 1 + w: (1 + w)·ε_c − w·ε_u.",
                  lambda: eps_uncond + w * (eps_cond - eps_uncond)),
             Slip("your ε̃ is the conditional prediction ε_θ(x_t, c) alone, so w has no effect (one half returned, or "
                  "the same half taken twice): eps_cond, eps_uncond = eps.chunk(2), then (1 + w)·eps_cond − "
                  "w·eps_uncond.", lambda: eps_cond),
             Slip("your ε̃ is the unconditional prediction alone (the second half): eps_cond, eps_uncond = "
                  "eps.chunk(2), then (1 + w)·eps_cond − w·eps_uncond.", lambda: eps_uncond)]
    return [
        Rung(lambda: isinstance(out, torch.Tensor) and out.dim() == want.dim() and out.shape[0] == 2 * n,
             where + f"{what} returned {describe(out)}: all 2N outputs",
             "split the 2N outputs into the conditional and the unconditional half, eps.chunk(2), "
             "and combine them: (1 + w)·eps_cond − w·eps_uncond."),
        Rung(lambda: not shaped, where + f"{what} returned {describe(out)}, expected shape {tuple(want.shape)}",
             "return one ε̃ per image: (1 + w)·eps_cond − w·eps_uncond, shaped like x_t."),
        Rung(lambda: diff > 1e-5, where + f"ε̃ differs from (1 + w)·ε(x_t, c) − w·ε(x_t) by up to {diff:.3g}",
             lambda: name_slip(out, slips) or "split the output with eps_cond, eps_uncond = eps.chunk(2) and "
                                                "return (1 + w)·eps_cond − w·eps_uncond."),
    ], (diff if shaped else 0.0)


def check_guided_eps_fn(fn: Callable) -> CheckResult:
    """``fn(model, c, w) -> eps_fn(x_t, t)``: ε̃ = (1 + w)·ε_θ(x_t, t, c) − w·ε_θ(x_t, t, 0) from ONE call
    ``model([x_t; x_t], [t; t], [c; 0], …)`` on a batch of 2N, split into its conditional and null halves.

    A recording stand-in model counts the calls and shows which half got which context; w = 2, 0.5, 0, −1.
    """
    if not callable(fn):
        raise fail("fn", "your guided_eps_fn function", describe(fn))
    name = "guided_eps_fn"
    g = torch.Generator().manual_seed(13)
    x = torch.randn(4, *_SHAPE, generator=g)
    t = torch.randint(0, _T, (4,), generator=g)
    c = one_hot(torch.tensor([0, 3, 1, 4]), _CLASSES)
    worst = 0.0
    for w in (2.0, 0.5, 0.0, -1.0):
        model = RecordingEps(_T, _CLASSES, _SHAPE[0])
        with torch.no_grad():
            eps_fn = run_student(fn, (model, c, w), name)
            climb(name, [Rung(lambda: not callable(eps_fn), f"returned {describe(eps_fn)}",
                              "return a function eps_fn(x_t, t) (define it inside guided_eps_fn and return it).")])
            out = run_student(eps_fn, (x, t), f"{name}(model, c, w={w:g})")
        calls, where = list(model.calls), f"with w = {w:g}, "
        want = guided_eps_fn(model, c, w)(x, t)
        value_rungs, diff = guided_value_rungs(out, want, model.predict(x, t, c), model.predict(x, t, 0 * c), w, where)
        climb(name, guided_call_rungs(calls, x, t, c, where) + value_rungs)
        worst = max(worst, diff)
    print(f"✅ {name}: one model call on [x_t; x_t] with contexts [c; 0], and ε̃ = (1 + w)·ε_c − w·ε_u "
          f"on 4 guidance weights (max |diff| = {worst:.1e})")
    return CheckResult(name, 4, worst, ["cpu"], unit="guidance weights")
