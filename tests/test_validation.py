"""dlcourse.validation, the shared argument checks: any real finite number, seeds, choices, timestep tensors."""
import numpy as np
import pytest
import torch

from dlcourse.validation import check_bool, check_choice, check_int, check_real, check_seed, check_timesteps, costs_no_sync


@pytest.mark.parametrize("v", [1, 0.5, np.float32(0.5), np.float16(0.5), np.int8(1), torch.tensor(0.5),
                               torch.tensor([0.5]), torch.tensor(1, dtype=torch.int64)])
def test_check_real_accepts_every_real_scalar_and_returns_a_float(v):
    out = check_real(v, "v", low=0, high=1)
    assert type(out) is float and out == float(v)


@pytest.mark.parametrize("v", [float("nan"), float("inf"), np.float64("-inf"), True, np.bool_(True), "1", None,
                               torch.tensor([1.0, 2.0]), torch.tensor(True), 1j])
def test_check_real_refuses_what_is_not_a_finite_real_number(v):
    with pytest.raises(ValueError, match="v: expected a finite real number"):
        check_real(v, "v")


def test_check_real_bounds_open_and_closed():
    assert check_real(0, "d", low=0) == 0.0
    for bad in (0, 1):
        with pytest.raises(ValueError, match=r"d: expected a finite real number in \(0, 1\)"):
            check_real(bad, "d", low=0, high=1, low_open=True, high_open=True)


def test_check_seed_and_check_int():
    assert check_seed(np.int64(3)) == 3 and type(check_seed(np.int64(3))) is int
    for bad in (-1, 2**63, 1.0, True):
        with pytest.raises(ValueError, match="seed: expected an int seed"):
            check_seed(bad)
    with pytest.raises(ValueError, match="n: expected an int >= 2"):
        check_int(1, "n", low=2)


def test_check_choice_compares_type_and_value():
    assert check_choice("ddim", "sampler", ("ddpm", "ddim")) == "ddim"
    with pytest.raises(ValueError, match="flag: expected 1 or 2, got bool True"):
        check_choice(True, "flag", (1, 2))  # True == 1, but it is not the int 1


def test_check_timesteps_dtype_shape_and_range():
    t = torch.tensor([0, 9])
    assert check_timesteps(t, "t", T=10, batch=2) is t
    with pytest.raises(ValueError, match=r"t: expected timesteps in \[0, 9\] \(0-based, T = 10\), got values in \[0, 10\]"):
        check_timesteps(torch.tensor([0, 10]), "t", T=10)
    with pytest.raises(ValueError, match="t: expected an integer tensor"):
        check_timesteps(torch.tensor([0.0]), "t", T=10)
    with pytest.raises(ValueError, match="t: expected a 1-D tensor of 3 timesteps"):
        check_timesteps(t, "t", T=10, batch=3)


def test_step_functions_read_t_values_only_where_no_device_sync():
    """Per-step checks never read a device tensor's values (that would sync every step on a GPU).

    A meta-device t has no values at all: reading them would raise, so passing proves the range is
    not read; a CPU t still gets its range checked.
    """
    from dlcourse.models import TimeUNet
    from dlcourse.schedules import Schedule, linear_betas

    t_meta = torch.tensor([3, 99], device="meta")
    assert not costs_no_sync(t_meta) and costs_no_sync(torch.tensor([3]))
    assert check_timesteps(t_meta, "t", T=10, batch=2) is t_meta
    with pytest.raises(ValueError, match="dtype torch.float32"):
        check_timesteps(t_meta.float(), "t", T=10)
    sched = Schedule(linear_betas(10))
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"values in \[3, 99\]"):
        sched.ddim_step(x, torch.tensor([3, 99]), 1, x)
    model = TimeUNet(channels=(8,), image_size=4, T=10).to("meta")
    assert model(torch.randn(2, 3, 4, 4, device="meta"), t_meta).shape == (2, 3, 4, 4)


def test_eta_and_bool_helpers_accept_numpy_and_refuse_the_rest():
    from dlcourse.sampling import ddim_timesteps
    from dlcourse.schedules import check_eta

    assert check_eta(np.float32(0.5)) == 0.5 and check_eta(torch.tensor(1.0)) == 1.0
    for bad in (float("inf"), -1e-9, "0", None):
        with pytest.raises(ValueError, match="^eta: expected a finite real number >= 0"):
            check_eta(bad)
    assert check_bool(np.bool_(True), "flag") is True
    with pytest.raises(ValueError, match="flag: expected True or False, got int 1"):
        check_bool(1, "flag")
    assert ddim_timesteps(10, np.int64(5)) == [9, 7, 5, 3, 1]
    with pytest.raises(ValueError, match=r"steps: expected an int in \[1, T = 10\]"):
        ddim_timesteps(10, 11)
    assert check_int(5, "n", low=1, high=5) == 5
    with pytest.raises(ValueError, match=r"n: expected an int in \[1, 4\]"):
        check_int(5, "n", low=1, high=4)
