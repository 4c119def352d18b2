"""Self-checks for classifier-free guidance (lesson 04): the Bernoulli context mask, the CFG training loss,
the CFG combination and the batched guided ε.

The loss and guided-ε checks hand the learner's code a stand-in ε-model that records every call, so they can
say *what* went wrong (which half got which context, how many calls, which rows were dropped) whatever order
the learner draws random numbers in.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from dlcourse.guidance import cfg_eps, context_mask, guided_eps_fn, one_hot
from dlcourse.schedules import Schedule, scaled_linear_betas
from dlcourse.validation import describe, fail

from .core import CheckResult, _run_student, compare

__all__ = ["check_context_mask", "check_cfg_loss", "check_cfg_eps", "check_guided_eps_fn"]


def _fail(name: str, problem: str, hint: str) -> AssertionError:
    return AssertionError(f"❌ {name}: {problem}\n   Hint: {hint}")


def _seeded(fn, args, seed: int, name: str):
    """fn(*args) with the global RNG seeded by ``seed`` (restored afterwards); learner errors become ❌."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _run_student(fn, args, name, "", None, None)


ONCE_PER_BATCH = ("draw one uniform number PER SAMPLE (torch.rand(batch_size, ...)), not one for the whole batch: "
                  "each sample keeps or drops its own context.")


def check_context_mask(fn: Callable) -> CheckResult:
    """``fn(batch_size, drop_prob, generator=None, device=None) -> float (B,)``: 1 keeps a sample's context
    (probability 1 − drop_prob), 0 drops the whole context of that sample.

    In order: one 0/1 float per sample; drawn per sample, not once per batch; drawn with ``generator``;
    the dropped fraction of 20 000 draws within 4 standard errors of p; drop_prob 0 and 1 exactly.
    """
    if not callable(fn):
        raise fail("fn", "your context_mask function", describe(fn))
    name = "context_mask"

    def draw(n, p, seed, global_seed=0):
        mask = _seeded(fn, (n, p, torch.Generator().manual_seed(seed)), global_seed, name)
        if not isinstance(mask, torch.Tensor):
            raise AssertionError(f"❌ {name}: fn({n}, {p}) returned {describe(mask)}, expected a float tensor of shape ({n},)")
        if mask.dim() > 1:
            raise _fail(name, f"fn({n}, {p}) returned shape {tuple(mask.shape)}, expected ({n},)",
                        "return ONE value per sample (shape (B,)): a mask drops a sample's whole context, not single entries.")
        if mask.dtype == torch.bool:
            raise _fail(name, f"fn({n}, {p}) returned a bool tensor",
                        "convert the boolean mask to float (e.g. .float()) so it can multiply the context.")
        if tuple(mask.shape) != (n,) or not mask.is_floating_point():
            raise AssertionError(f"❌ {name}: fn({n}, {p}) returned {describe(mask)}, expected a float tensor of shape ({n},)")
        mask = mask.detach().float().cpu()
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise _fail(name, f"fn({n}, {p}) returned values other than 0 and 1",
                        "compare a uniform draw with drop_prob (e.g. torch.rand(B) >= drop_prob).")
        return mask

    masks = [draw(64, 0.5, seed) for seed in range(8)]
    if all(bool((m == m[0]).all()) for m in masks):
        raise _fail(name, "with drop_prob = 0.5 every batch of 64 was kept or dropped as a whole (8 batches)",
                    ONCE_PER_BATCH)
    if not torch.equal(draw(64, 0.5, seed=1, global_seed=1), draw(64, 0.5, seed=1, global_seed=2)):
        raise _fail(name, "the same generator seed gave different masks",
                    "draw with the generator you are given: torch.rand(batch_size, generator=generator, device=device).")
    n, worst = 20_000, 0.0
    for p in (0.1, 0.5, 0.25):
        dropped = 1 - draw(n, p, seed=int(p * 1000)).mean().item()
        tolerance = 4 * math.sqrt(p * (1 - p) / n)
        worst = max(worst, abs(dropped - p))
        if abs(dropped - p) > tolerance:
            hint = ("the mask is inverted: 1 must KEEP the context (probability 1 − drop_prob)."
                    if abs(dropped - (1 - p)) <= tolerance else
                    "draw one uniform number per sample and keep the context where it is ≥ drop_prob.")
            raise _fail(name, f"with drop_prob = {p}, {dropped:.1%} of {n} contexts were dropped "
                        f"(expected {p:.0%} ± {tolerance:.1%})", hint)

    def diagnose(student_out, reference_out, args):
        if not isinstance(student_out, torch.Tensor):
            return None
        everything = "kept (all ones)" if args[1] == 0 else "dropped (all zeros)"
        return (f"with drop_prob = {args[1]:g} every context must be {everything}; "
                "keep a context where a uniform draw in [0, 1) is ≥ drop_prob.")

    result = compare(fn, lambda b, p: context_mask(b, p), [(1000, 0.0), (1000, 1.0), (7, 0.0)], name=name,
                     diagnose=diagnose, devices=["cpu"])
    print(f"✅ {name}: drawn per sample with your generator; dropped fractions match drop_prob "
          f"(max |fraction − p| = {worst:.4f} over {n} draws)")
    return result


class _RecordingEps(nn.Module):
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
        n = x.shape[0]
        if c is None:
            c = x.new_zeros(n, self.weight.shape[0])
        if not isinstance(c, torch.Tensor) or tuple(c.shape) != (n, self.weight.shape[0]):
            raise fail("model: c", f"one context row per image, shape ({n}, {self.weight.shape[0]})", describe(c))
        if c_mask is not None:
            if not isinstance(c_mask, torch.Tensor) or tuple(c_mask.shape) != (n,):
                raise fail("model: c_mask", f"shape ({n},): one 1/0 per image", describe(c_mask))
            c = c * c_mask.to(c.dtype)[:, None]
        self.calls.append({"x": x.detach().clone(), "t": t.detach().clone(), "c": c.detach().clone()})
        return self.a[t].view(-1, 1, 1, 1) * x + (c @ self.weight)[:, :, None, None]


_T, _CLASSES, _SHAPE = 10, 5, (3, 4, 4)


def _kept_rows(c_seen: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: kept whole (equal to c), dropped whole (all zero)."""
    kept = (c_seen == c).all(1)
    dropped = (c_seen == 0).all(1)
    return kept, dropped


def check_cfg_loss(fn: Callable) -> CheckResult:
    """``fn(model, x0, c, schedule, drop_prob, generator=None) -> ‖ε − ε_θ(x_t, t, m·c)‖²`` with a fresh
    Bernoulli(1 − drop_prob) mask m_i, t_i ~ U{0, …, T−1} and ε_i ~ N(0, I) per sample.

    A recording stand-in model shows what reached the network; checked in order: one call per batch;
    whole contexts dropped (not features, not the image); a mask per sample, not per batch; the dropped
    share; t's range; x_t = q_sample(x0, t, ε); the loss value; the generator.
    """
    if not callable(fn):
        raise fail("fn", "your cfg_loss function", describe(fn))
    name = "cfg_loss"
    schedule = Schedule(scaled_linear_betas(_T))

    def run(n: int, p: float, seed: int, global_seed: int = 0):
        g = torch.Generator().manual_seed(100 + seed)
        x0 = torch.rand(n, *_SHAPE, generator=g) * 2 - 1
        c = one_hot(torch.arange(n) % _CLASSES, _CLASSES)
        model = _RecordingEps(_T, _CLASSES, _SHAPE[0])
        loss = _seeded(fn, (model, x0, c, schedule, p, torch.Generator().manual_seed(seed)), global_seed, name)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            raise _fail(name, f"returned {describe(loss)}, expected the loss as a one-element tensor with a gradient",
                        "return the loss tensor itself (not loss.item() or a detached copy): training calls "
                        ".backward() on it.")
        if len(model.calls) != 1:
            raise _fail(name, f"the model was called {len(model.calls)} times for one batch",
                        "call the model once, on the whole noisy batch: model(x_t, t, c, c_mask).")
        return loss, x0, c, model.calls[0], model

    batches = [run(32, 0.5, seed) for seed in range(8)]
    status = []
    for _, _, c, call, _ in batches:
        kept, dropped = _kept_rows(call["c"], c)
        if not bool((kept | dropped).all()):
            row = int((~(kept | dropped)).nonzero()[0])
            raise _fail(name, f"row {row} of the context the model received is {call['c'][row].tolist()}, "
                        f"neither the sample's context {c[row].tolist()} nor all zeros",
                        "drop a sample's WHOLE context (c * mask[:, None], or pass the mask as the model's c_mask); "
                        "this is not nn.Dropout: no single features, no rescaling.")
        status.append(kept)
    if all(bool(k.all()) for k in status):
        raise _fail(name, "with drop_prob = 0.5 the model received every sample's context unchanged (8 batches)",
                    "apply the mask to the CONTEXT c (c * c_mask[:, None], or model(x_t, t, c, c_mask)), "
                    "not to the image or the noise.")
    if all(bool((k == k[0]).all()) for k in status):
        raise _fail(name, "with drop_prob = 0.5 each batch of 32 kept or dropped its contexts all together",
                    ONCE_PER_BATCH + " Use your context_mask(n, drop_prob, generator, x0.device).")

    loss, x0, c, call, model = run(400, 0.1, seed=11)
    kept, _ = _kept_rows(call["c"], c)
    dropped_share = 1 - kept.float().mean().item()
    if not 0.04 <= dropped_share <= 0.16:
        hint = ("the mask is inverted: 1 must KEEP the context (probability 1 − drop_prob)." if dropped_share > 0.5
                else "drop each sample's context with probability drop_prob: context_mask(n, drop_prob, ...).")
        raise _fail(name, f"with drop_prob = 0.1, {dropped_share:.0%} of 400 contexts were dropped", hint)
    t = call["t"]
    if t.dtype != torch.long or t.shape != (400,):
        raise _fail(name, f"the model received t = {describe(t)}", "one integer step per sample: a long tensor (B,).")
    if bool((t == t[0]).all()):
        raise _fail(name, "every sample of the batch got the same t",
                    "draw one t per sample: torch.randint(0, schedule.T, (n,), ...).")
    if int(t.min()) != 0 or int(t.max()) != _T - 1:
        raise _fail(name, f"over 400 samples t ran from {int(t.min())} to {int(t.max())}, expected 0 … T−1 = {_T - 1}",
                    "t is 0-based: torch.randint(0, schedule.T, (n,)) (the upper bound is excluded).")
    if tuple(call["x"].shape) != tuple(x0.shape):
        raise _fail(name, f"the model received x of shape {tuple(call['x'].shape)}", "pass x_t, shaped like x0.")
    ab = schedule.alpha_bars[t].view(-1, 1, 1, 1)
    noise = (call["x"] - ab.sqrt() * x0) / (1 - ab).sqrt()  # the ε that x_t implies
    if abs(noise.std().item() - 1) > 0.1 or abs(noise.mean().item()) > 0.1:
        raise _fail(name, f"the x_t the model received does not look like q_sample(x0, t, ε) with ε ~ N(0, I) "
                    f"(implied ε has mean {noise.mean():.2f}, std {noise.std():.2f})",
                    "x_t = schedule.q_sample(x0, t, noise) = √ᾱ_t·x0 + √(1 − ᾱ_t)·noise, noise = torch.randn(...).")
    with torch.no_grad():
        out = model.a[t].view(-1, 1, 1, 1) * call["x"] + (call["c"] @ model.weight)[:, :, None, None]
        expected = (out - noise).square().mean().item()
        loss_diff = abs(loss.item() - expected)
        if not math.isclose(loss.item(), expected, rel_tol=1e-4, abs_tol=1e-6):
            hint = ("the target is the noise ε, not x0." if math.isclose(loss.item(), (out - x0).square().mean().item(),
                                                                          rel_tol=1e-4)
                    else "the loss is the mean squared error between the model's output and the noise: "
                         "F.mse_loss(eps_pred, noise).")
            raise _fail(name, f"loss {loss.item():.6g}, expected {expected:.6g} for what the model received", hint)
    first, second = run(32, 0.5, seed=5, global_seed=1)[3], run(32, 0.5, seed=5, global_seed=2)[3]
    if not all(torch.equal(first[k], second[k]) for k in ("x", "t", "c")):
        raise _fail(name, "the same generator seed gave different masks, steps or noise",
                    "pass generator= to every random draw: the mask, torch.randint for t and torch.randn for the noise.")
    result = CheckResult(name, 10, loss_diff, ["cpu"], unit="batches")
    print(f"✅ {name}: whole contexts dropped per sample at the rate drop_prob, t in 0…T−1 per sample, "
          f"x_t from q_sample, loss = ‖ε − ε_θ‖², reproducible with the generator (checked on 10 batches)")
    return result


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

    def diagnose(student_out, reference_out, args):
        if not isinstance(student_out, torch.Tensor):
            return None
        ec, eu, w = args
        candidates = [
            ("this is diffusers' form ε_u + s·(ε_c − ε_u) with guidance_scale s = w; in the lectures' convention "
             "guidance_scale = 1 + w, so use (1 + w)·ε_c − w·ε_u.", eu + w * (ec - eu)),
            ("conditional and unconditional are swapped: (1 + w) multiplies eps_cond.", (1 + w) * eu - w * ec),
            ("the sign of the second term: subtract w·eps_uncond.", (1 + w) * ec + w * eu),
            ("eps_cond is weighted by w; it should be (1 + w).", w * ec - w * eu),
        ]
        for hint, wrong in candidates:
            if wrong.shape == student_out.shape and torch.allclose(student_out.double(), wrong.double(), atol=1e-5):
                return hint
        return None

    return compare(fn, cfg_eps, inputs, name="cfg_eps", diagnose=diagnose)


def check_guided_eps_fn(fn: Callable) -> CheckResult:
    """``fn(model, c, w) -> eps_fn(x_t, t)``: ε̃ = (1 + w)·ε_θ(x_t, t, c) − w·ε_θ(x_t, t, 0) from ONE call
    ``model([x_t; x_t], [t; t], [c; 0], …)`` on a batch of 2N, split into its conditional and null halves.

    A recording stand-in model counts the calls and shows which half got which context.
    """
    if not callable(fn):
        raise fail("fn", "your guided_eps_fn function", describe(fn))
    name = "guided_eps_fn"
    g = torch.Generator().manual_seed(13)
    n = 4
    x = torch.randn(n, *_SHAPE, generator=g)
    t = torch.randint(0, _T, (n,), generator=g)
    c = one_hot(torch.tensor([0, 3, 1, 4]), _CLASSES)
    worst = 0.0
    for w in (2.0, 0.5, 0.0, -1.0):
        model = _RecordingEps(_T, _CLASSES, _SHAPE[0])
        with torch.no_grad():
            eps_fn = _run_student(fn, (model, c, w), name, "", None, None)
            if not callable(eps_fn):
                raise AssertionError(f"❌ {name}: returned {describe(eps_fn)}, expected a function eps_fn(x_t, t)")
            out = _run_student(eps_fn, (x, t), f"{name}(model, c, w={w:g})", "", None, None)
            calls = model.calls
            model.calls = []
            want = guided_eps_fn(model, c, w)(x, t)
            eps_cond, eps_uncond = model(x, t, c), model(x, t)
        where = f"with w = {w:g}, "
        if len(calls) == 2:
            raise _fail(name, where + "eps_fn called the model twice (two passes of N images)",
                        "call it ONCE on a batch of 2N: model(torch.cat([x_t, x_t]), torch.cat([t, t]), "
                        "torch.cat([c, torch.zeros_like(c)])), then split the output with .chunk(2).")
        if len(calls) != 1:
            raise _fail(name, where + f"eps_fn called the model {len(calls)} times",
                        "one call on [x_t; x_t] with contexts [c; 0] per eps_fn call.")
        call = calls[0]
        if call["x"].shape[0] != 2 * n or not torch.equal(call["x"], torch.cat([x, x])):
            raise _fail(name, where + f"the model received x of shape {tuple(call['x'].shape)}, not [x_t; x_t] "
                        f"of shape {(2 * n, *_SHAPE)}", "stack the batch with itself: torch.cat([x_t, x_t]).")
        if not torch.equal(call["t"], torch.cat([t, t])):
            raise _fail(name, where + "the model did not receive [t; t]", "repeat the steps too: torch.cat([t, t]).")
        first, second = call["c"][:n], call["c"][n:]
        zero = torch.zeros_like(c)
        if torch.equal(first, c) and torch.equal(second, c):
            raise _fail(name, where + "the unconditional half received the real context c",
                        "the second half must get the null context: torch.zeros_like(c) (or a c_mask of 0s).")
        if torch.equal(first, zero) and torch.equal(second, zero):
            raise _fail(name, where + "both halves received the null context",
                        "the first half keeps c: contexts torch.cat([c, torch.zeros_like(c)]).")
        in_order = torch.equal(first, c) and torch.equal(second, zero)
        if not in_order and not (torch.equal(first, zero) and torch.equal(second, c)):
            raise _fail(name, where + "the contexts the model received are neither c nor all zeros in each half",
                        "contexts torch.cat([c, torch.zeros_like(c)]): N copies of the context, then N null contexts.")
        if not isinstance(out, torch.Tensor) or out.shape != want.shape:
            raise _fail(name, where + f"eps_fn returned {describe(out)}, expected shape {tuple(want.shape)}",
                        "split the 2N outputs into the conditional and the unconditional half (.chunk(2)) "
                        "and combine them with cfg_eps.")
        diff = (out - want).abs().max().item()
        if diff > 1e-5:
            candidates = [
                ("w is applied to the wrong half: (1 + w) multiplies the CONDITIONAL prediction (the half with c).",
                 (1 + w) * eps_uncond - w * eps_cond),
                ("this is diffusers' form with guidance_scale = w; here guidance_scale = 1 + w: (1 + w)·ε_c − w·ε_u.",
                 eps_uncond + w * (eps_cond - eps_uncond)),
                ("both halves of the output were taken from the conditional part: split with eps.chunk(2).",
                 eps_cond),
            ]
            hint = next((h for h, wrong in candidates if torch.allclose(out, wrong, atol=1e-5)),
                        "split the output with eps_cond, eps_uncond = eps.chunk(2) and return "
                        "cfg_eps(eps_cond, eps_uncond, w).")
            raise _fail(name, where + f"ε̃ differs from (1 + w)·ε(x_t, c) − w·ε(x_t) by up to {diff:.3g}", hint)
        worst = max(worst, diff)
    result = CheckResult(name, 4, worst, ["cpu"], unit="guidance weights")
    print(f"✅ {name}: one model call on [x_t; x_t] with contexts [c; 0], and ε̃ = (1 + w)·ε_c − w·ε_u "
          f"on 4 guidance weights (max |diff| = {worst:.1e})")
    return result
