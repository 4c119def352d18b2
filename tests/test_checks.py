"""dlcourse.checks: compare/check_module behaviour, and each model check on right and wrong answers."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlcourse.checks import (
    CheckResult,
    check_down_block,
    check_module,
    check_rearrange_pool,
    check_residual_block,
    check_sinusoidal_embedding,
    check_up_block,
    compare,
)
from dlcourse.models import SinusoidalEmbedding

CPU = ["cpu"]


def square(x):
    return x * x


# ---- compare --------------------------------------------------------------------------------

def test_compare_passes_and_prints(capsys):
    result = compare(lambda x: x ** 2, square, [(torch.randn(3),), (torch.randn(2, 4),)], name="square", devices=CPU)
    assert isinstance(result, CheckResult) and result.passed and result.n_inputs == 2
    assert result.max_abs_diff < 1e-6
    assert capsys.readouterr().out.startswith("✅ square: matches the reference on 2 inputs (max |diff| = ")


def test_compare_reports_shape_dtype_and_values():
    x = torch.arange(6.0).reshape(2, 3)
    with pytest.raises(AssertionError, match=r"❌ square: .*output has shape \(3, 2\), expected \(2, 3\)"):
        compare(lambda x: square(x).T, square, [(x,)], name="square", devices=CPU)
    with pytest.raises(AssertionError, match=r"output has dtype torch.float64, expected torch.float32"):
        compare(lambda x: square(x).double(), square, [(x,)], name="square", devices=CPU)
    off_by_one = lambda x: square(x) + (x == 4).float()  # noqa: E731 - one wrong value, at index (1, 1)
    with pytest.raises(AssertionError, match=r"max \|diff\| = 1.000e\+00 at index \(1, 1\) \(yours 17, reference 16; "
                                             r"1 of 6 values"):
        compare(off_by_one, square, [(x,)], name="square", devices=CPU)
    with pytest.raises(AssertionError, match="returned 1 output"):
        compare(square, lambda x: (x, x), [(x,)], name="pair", devices=CPU)


def test_compare_tolerance_and_multiple_outputs():
    x = torch.ones(3)
    compare(lambda x: x.sum(), lambda x: float(x.sum()) + 1e-7, [(x,)], name="total", devices=CPU)
    with pytest.raises(AssertionError, match="output is 3.0, expected 4.0"):
        compare(lambda x: float(x.sum()), lambda x: 4.0, [(x,)], name="total", devices=CPU)
    compare(lambda x: (x + 1e-6, 2 * x), lambda x: (x, 2 * x), [(x,)], name="pair", devices=CPU)
    with pytest.raises(AssertionError, match="output 1 differs"):
        compare(lambda x: (x, 2 * x + 1e-3), lambda x: (x, 2 * x), [(x,)], name="pair", devices=CPU)


def test_compare_kwargs_inputs_and_diagnose():
    calls = []

    def diagnose(student_out, reference_out, args):
        calls.append(args)
        return "multiply, do not add" if torch.allclose(student_out, args["a"] + args["b"]) else None

    inputs = [{"a": torch.full((2,), 3.0), "b": torch.full((2,), 2.0)}]
    compare(lambda a, b: a * b, lambda a, b: b * a, inputs, name="mul", devices=CPU, diagnose=diagnose)
    assert calls == []  # only asked on failure
    with pytest.raises(AssertionError, match=r"❌ mul: multiply, do not add\n   evidence: on input "
                                             r"\(a=tensor \[3.0, 3.0\], b=tensor \[2.0, 2.0\]\)"):
        compare(lambda a, b: a + b, lambda a, b: b * a, inputs, name="mul", devices=CPU, diagnose=diagnose)


def test_compare_wraps_student_errors():
    def broken(x):
        return x @ x  # 1-D @ 1-D is a scalar, 2-D needs square

    with pytest.raises(AssertionError, match=r"❌ square: your code raised RuntimeError on input \(tensor of shape "
                                             r"\(2, 3\), float32\)") as info:
        compare(broken, square, [(torch.ones(2, 3),)], name="square", devices=CPU)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_compare_placeholder_asks_to_fill_in():
    def placeholder(x):
        raise NotImplementedError

    with pytest.raises(AssertionError, match="❌ square: fill in the exercise first") as info:
        compare(placeholder, square, [(torch.ones(2),)], name="square", devices=CPU)
    assert isinstance(info.value.__cause__, NotImplementedError)


def test_compare_protects_inputs_from_in_place_edits():
    x = torch.ones(3)
    compare(lambda x: x.mul_(2), lambda x: x * 2, [(x,)], name="double", devices=CPU)
    assert torch.equal(x, torch.ones(3))


def test_compare_validates_arguments():
    with pytest.raises(ValueError, match="inputs: expected a non-empty list"):
        compare(square, square, [], name="square")
    with pytest.raises(ValueError, match="inputs: expected a non-empty list"):
        compare(square, square, torch.ones(3), name="square")


# ---- check_module -----------------------------------------------------------------------------

class FlatLinear(nn.Module):
    """Same function family and parameter count as nn.Linear(4, 6), different parameter shapes."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.flat = nn.Parameter(torch.randn(out_features * in_features + out_features))
        self.shape = (out_features, in_features)

    def forward(self, x):
        n = self.shape[0] * self.shape[1]
        return F.linear(x, self.flat[:n].view(self.shape), self.flat[n:])


def test_check_module_shapes_only_when_weights_cannot_be_copied(capsys):
    result = check_module(FlatLinear, nn.Linear, [(4, 6)], lambda a: (torch.randn(2, a[0]),), name="Linear",
                          devices=CPU)
    assert any("only output shapes and parameter counts" in note for note in result.notes)
    assert "note: parameter names/shapes differ" in capsys.readouterr().out


def test_check_module_compares_values_when_weights_line_up():
    class Renamed(nn.Module):
        def __init__(self, a, b):
            super().__init__()
            self.inner = nn.Linear(a, b)

        def forward(self, x):
            return self.inner(x) + 1e-2  # wrong by a constant

    with pytest.raises(AssertionError, match=r"❌ Linear\(4, 6\): .*output differs"):
        check_module(Renamed, nn.Linear, [(4, 6)], lambda a: (torch.randn(2, a[0]),), name="Linear", devices=CPU)


def test_check_module_parameter_count_and_rng():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with pytest.raises(AssertionError, match=r"❌ Linear\(4, 6\): your module has 24 parameters, the reference 30 \(difference -6\)"):
        check_module(lambda a, b: nn.Linear(a, b, bias=False), nn.Linear, [(4, 6)],
                     lambda a: (torch.randn(2, a[0]),), name="Linear", devices=CPU)
    assert torch.equal(torch.rand(3), expected)  # the check left the global random state alone


# ---- model checks: the reference passes, typical mistakes get their hint -----------------------

class Down(nn.Module):
    """A correct lesson-01 DownBlock written differently from the reference."""

    def __init__(self, in_ch, out_ch, relu_first=False, pool=True, norms=True):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.n1 = nn.BatchNorm2d(out_ch) if norms else nn.Identity()
        self.n2 = nn.BatchNorm2d(out_ch) if norms else nn.Identity()
        self.relu_first, self.pool = relu_first, pool

    def step(self, conv, norm, x):
        return norm(F.relu(conv(x))) if self.relu_first else F.relu(norm(conv(x)))

    def forward(self, x):
        h = self.step(self.c2, self.n2, self.step(self.c1, self.n1, x))
        return F.max_pool2d(h, 2) if self.pool else h


def test_check_down_block():
    result = check_down_block(Down)
    assert any("copied layer by layer" in note for note in result.notes)  # values compared, not just shapes
    assert not any("only output shapes" in note for note in result.notes)
    with pytest.raises(AssertionError, match="Add nn.MaxPool2d"):
        check_down_block(lambda a, b: Down(a, b, pool=False))
    with pytest.raises(AssertionError, match="both nn.BatchNorm2d"):
        check_down_block(lambda a, b: Down(a, b, norms=False))
    with pytest.raises(AssertionError, match="conv → BatchNorm → ReLU"):
        check_down_block(lambda a, b: Down(a, b, relu_first=True))


class Up(nn.Module):
    def __init__(self, in_ch, out_ch, mistake=None):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
        self.convs = nn.Sequential(
            nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(),
        )
        self.mistake = mistake

    def forward(self, x, skip):
        if self.mistake == "no skip":
            h = x
        elif self.mistake == "skip first":
            h = torch.cat([skip, x], dim=1)
        else:
            h = torch.cat([x, skip], dim=1)
        return self.convs(self.up(h))


def test_check_up_block():
    check_up_block(Up)
    with pytest.raises(AssertionError, match="did you concatenate the skip connection along dim=1"):
        check_up_block(lambda a, b: Up(a, b, mistake="no skip"))
    with pytest.raises(AssertionError, match=r"x first"):
        check_up_block(lambda a, b: Up(a, b, mistake="skip first"))


def sinusoidal(t, dim, mistake=None):
    d = dim // 2
    k = torch.arange(d)
    omegas = 10000.0 ** (-k / d)
    if mistake == "reversed":
        omegas = omegas.flip(0)
    angles = t.float()[:, None] * omegas
    if mistake == "swapped":
        return torch.cat([angles.cos(), angles.sin()], dim=1)
    if mistake == "interleaved":
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


@pytest.mark.parametrize("mistake, hint", [
    ("swapped", "sin and cos are swapped"),
    ("reversed", "frequencies are reversed"),
    ("interleaved", "interleaved"),
])
def test_check_sinusoidal_embedding_mistakes(mistake, hint):
    with pytest.raises(AssertionError, match=hint):
        check_sinusoidal_embedding(lambda t, dim: sinusoidal(t, dim, mistake))


def test_check_sinusoidal_embedding_accepts_functions_and_classes():
    check_sinusoidal_embedding(sinusoidal)
    check_sinusoidal_embedding(SinusoidalEmbedding)


class Residual(nn.Module):
    def __init__(self, in_ch, out_ch, mistake=None):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.norm1, self.norm2 = nn.GroupNorm(8, out_ch), nn.GroupNorm(8, out_ch)
        project = in_ch != out_ch or mistake == "always project"
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if project and mistake != "no projection" else nn.Identity()
        self.mistake = mistake

    def forward(self, x):
        h = F.gelu(self.norm2(self.conv2(F.gelu(self.norm1(self.conv1(x))))))
        return h if self.mistake == "no skip" else h + self.skip(x)


def test_check_residual_block():
    check_residual_block(Residual)
    with pytest.raises(AssertionError, match="you forgot the skip connection"):
        check_residual_block(lambda a, b: Residual(a, b, mistake="no skip"))
    with pytest.raises(AssertionError, match="the skip is the identity"):
        check_residual_block(lambda a, b: Residual(a, b, mistake="always project"))
    with pytest.raises(AssertionError, match=r"(?s)ResidualBlock\(8, 16\): .*project it with nn.Conv2d\(in_ch, out_ch, kernel_size=1\)"):
        check_residual_block(lambda a, b: Residual(a, b, mistake="no projection"))


class Pool(nn.Module):
    def __init__(self, in_ch, out_ch, mistake=None):
        super().__init__()
        k = 3 if mistake == "3x3" else 1
        self.conv = nn.Conv2d(in_ch if mistake == "max" else 4 * in_ch, out_ch, k, padding=k // 2)
        self.mistake = mistake

    def forward(self, x):
        if self.mistake == "max":
            return self.conv(F.max_pool2d(x, 2))
        return self.conv(F.pixel_unshuffle(x, 2))


def test_check_rearrange_pool():
    check_rearrange_pool(Pool)
    with pytest.raises(AssertionError, match="is 1×1"):
        check_rearrange_pool(lambda a, b: Pool(a, b, mistake="3x3"))
    with pytest.raises(AssertionError, match="build the conv with 4 \\* in_ch inputs"):
        check_rearrange_pool(lambda a, b: Pool(a, b, mistake="max"))


class Placeholder(nn.Module):
    def __init__(self, in_ch, out_ch):
        super().__init__()

    def forward(self, x):
        raise NotImplementedError("TODO")


class PlaceholderInit(nn.Module):
    def __init__(self, in_ch, out_ch):
        raise NotImplementedError


@pytest.mark.parametrize("check", [check_down_block, check_residual_block, check_rearrange_pool])
@pytest.mark.parametrize("cls", [Placeholder, PlaceholderInit])
def test_placeholders_ask_to_fill_in(check, cls):
    with pytest.raises(AssertionError, match="fill in the exercise first"):
        check(cls)
