"""dlcourse.models: block and U-Net shapes, parameter counts, teaching errors, registry round trip."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from dlcourse.models import registry
from dlcourse.models import (
    ConditionalUNet,
    DownBlock,
    EmbedMLP,
    RearrangePool,
    ResidualBlock,
    SinusoidalEmbedding,
    TimeUNet,
    UNet,
    UNetDenoiser,
    UpBlock,
    build,
    count_parameters,
    load_model,
    register,
    registered,
    save_model,
)

TINY = (8, 16)


def conv_params(in_ch: int, out_ch: int, k: int) -> int:
    return in_ch * out_ch * k * k + out_ch


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def call(model, x):
    t = torch.randint(0, 50, (x.shape[0],))
    return model(x) if isinstance(model, UNetDenoiser) else model(x, t)


def make(cls, **kwargs):
    return cls(**kwargs) if cls is UNetDenoiser else cls(T=50, **kwargs)


# ---- blocks -------------------------------------------------------------------------------

@pytest.mark.parametrize("pool", ["max", "rearrange"])
@pytest.mark.parametrize("residual", [False, True])
def test_down_block_halves_size(pool, residual):
    block = DownBlock(3, 8, pool=pool, residual=residual)
    assert block(torch.randn(2, 3, 12, 10)).shape == (2, 8, 6, 5)


@pytest.mark.parametrize("upsample", ["transpose", "nearest"])
def test_up_block_concatenates_and_doubles(upsample):
    block = UpBlock(12, 4, upsample=upsample)  # 8 channels of x + 4 of skip
    assert block(torch.randn(2, 8, 5, 3), torch.randn(2, 4, 5, 3)).shape == (2, 4, 10, 6)


def test_up_block_uses_the_skip():
    block = UpBlock(8, 4).eval()
    x = torch.randn(1, 4, 4, 4)
    assert not torch.allclose(block(x, torch.zeros(1, 4, 4, 4)), block(x, torch.ones(1, 4, 4, 4)))


def test_lesson01_block_parameter_counts():
    # two 3x3 convs with bias, two BatchNorms (weight + bias)
    assert count_parameters(DownBlock(3, 8)) == conv_params(3, 8, 3) + conv_params(8, 8, 3) + 2 * 2 * 8
    # ConvTranspose 2x2 in_ch -> out_ch, then two convs out_ch -> out_ch with BatchNorm
    assert count_parameters(UpBlock(16, 8)) == conv_params(16, 8, 2) + 2 * conv_params(8, 8, 3) + 2 * 2 * 8


def test_up_block_teaching_error_on_wrong_channels():
    block = UpBlock(128, 64)
    with pytest.raises(ValueError, match=r"UpBlock\(in_ch=128\).*128 channels.*96.*dim=1"):
        block(torch.randn(1, 64, 4, 4), torch.randn(1, 32, 4, 4))
    with pytest.raises(ValueError, match=r"UpBlock\(in_ch=128\): skip.*\(1, 64, 2, 2\)"):
        block(torch.randn(1, 64, 4, 4), torch.randn(1, 64, 2, 2))


def test_down_block_teaching_errors():
    with pytest.raises(ValueError, match=r"DownBlock\(in_ch=3\): x.*3 channels.*\(2, 1, 8, 8\)"):
        DownBlock(3, 8)(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"DownBlock\(in_ch=3\): x.*even.*\(2, 3, 7, 8\)"):
        DownBlock(3, 8)(torch.randn(2, 3, 7, 8))


def test_sinusoidal_embedding_known_values():
    emb = SinusoidalEmbedding(8)
    out = emb(torch.tensor([0, 1, 100]))
    assert out.shape == (3, 8)
    assert torch.equal(out[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    omegas = [10000 ** (-k / 4) for k in range(4)]  # 1, 0.1, 0.01, 0.001
    for row, t in ((1, 1), (2, 100)):
        expected = [math.sin(t * w) for w in omegas] + [math.cos(t * w) for w in omegas]
        assert torch.allclose(out[row], torch.tensor(expected), atol=1e-5)
    assert torch.allclose(out.pow(2)[:, :4] + out.pow(2)[:, 4:], torch.ones(3, 4), atol=1e-6)


def test_sinusoidal_embedding_validates():
    with pytest.raises(ValueError, match="dim: expected an even int"):
        SinusoidalEmbedding(7)
    with pytest.raises(ValueError, match=r"SinusoidalEmbedding\(dim=8\): t.*\(2, 1\)"):
        SinusoidalEmbedding(8)(torch.zeros(2, 1))


def test_residual_block_skip_and_film():
    same = ResidualBlock(16, 16)
    assert isinstance(same.skip, torch.nn.Identity)
    wider = ResidualBlock(8, 16)
    # two 3x3 convs, two GroupNorms, and the 1x1 skip conv because the channels differ
    assert count_parameters(wider) == (conv_params(8, 16, 3) + conv_params(16, 16, 3) + 2 * 2 * 16
                                       + conv_params(8, 16, 1))
    x = torch.randn(2, 8, 6, 6)
    assert wider(x).shape == (2, 16, 6, 6)
    film = ResidualBlock(8, 16, emb_dim=4)
    assert film(x, torch.randn(2, 4)).shape == (2, 16, 6, 6)
    with torch.no_grad():  # zero FiLM weights: scale = shift = 0, the block ignores emb
        film.film.weight.zero_()
        film.film.bias.zero_()
    assert torch.allclose(film(x, torch.randn(2, 4)), film(x, torch.randn(2, 4)))
    with pytest.raises(ValueError, match=r"ResidualBlock\(in_ch=8\): emb"):
        film(x)
    with pytest.raises(ValueError, match=r"ResidualBlock\(in_ch=8\): emb"):
        wider(x, torch.randn(2, 4))


def test_residual_block_is_identity_plus_branch():
    block = ResidualBlock(4, 4)
    with torch.no_grad():  # zero the branch's last norm: out = act(0) + x = x
        block.norm2.weight.zero_()
        block.norm2.bias.zero_()
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(block(x), x)


def test_rearrange_pool_keeps_every_value():
    pool = RearrangePool(2, 8)
    assert count_parameters(pool) == conv_params(4 * 2, 8, 1)
    x = torch.randn(1, 2, 4, 6)
    assert pool(x).shape == (1, 8, 2, 3)
    # with an identity 1x1 conv the output is a permutation of the input
    identity = RearrangePool(2, 8)
    with torch.no_grad():
        identity.conv.weight.copy_(torch.eye(8)[:, :, None, None])
        identity.conv.bias.zero_()
    assert torch.equal(identity(x).flatten().sort().values, x.flatten().sort().values)


def test_embed_mlp_zero_input_is_distinct():
    mlp = EmbedMLP(5, 6)
    assert mlp(torch.zeros(1, 5)).abs().sum() > 0
    with pytest.raises(ValueError, match=r"EmbedMLP\(in_dim=5\).*\(3, 4\)"):
        mlp(torch.zeros(3, 4))


# ---- U-Nets -------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [UNetDenoiser, TimeUNet, UNet, ConditionalUNet])
@pytest.mark.parametrize("image_channels,image_size,channels", [(1, 16, (8, 16)), (3, 32, (8, 16, 16))])
def test_unet_shapes(cls, image_channels, image_size, channels):
    model = make(cls, image_channels=image_channels, channels=channels, image_size=image_size)
    x = torch.randn(2, image_channels, image_size, image_size)
    out = call(model, x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert count_parameters(model) > 0


@pytest.mark.parametrize("switches", [
    dict(norm="batch"), dict(activation="relu"), dict(pool="max"), dict(time_embedding="mlp"),
    dict(residual=False), dict(upsample="transpose"),
])
def test_unet_switches(switches):
    model = UNet(image_channels=1, channels=TINY, image_size=16, T=50, **switches)
    assert call(model, torch.randn(2, 1, 16, 16)).shape == (2, 1, 16, 16)


def test_unet_with_lesson02_switches_is_time_unet():
    lesson02 = dict(norm="batch", activation="relu", pool="max", time_embedding="mlp", residual=False,
                    upsample="transpose")
    a = UNet(channels=TINY, image_size=16, T=50, **lesson02)
    b = TimeUNet(channels=TINY, image_size=16, T=50)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 49])
    assert torch.equal(a.eval()(x, t), b.eval()(x, t))


def test_rearrange_pool_adds_exactly_its_convs():
    channels = (8, 16, 32)
    max_pool = UNet(channels=channels, image_size=16, pool="max")
    rearrange = UNet(channels=channels, image_size=16, pool="rearrange")
    assert count_parameters(rearrange) - count_parameters(max_pool) == sum(conv_params(4 * c, c, 1) for c in channels)


def test_time_changes_the_prediction():
    for model in (TimeUNet(channels=TINY, image_size=16, T=50), UNet(channels=TINY, image_size=16, T=50)):
        x = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
        out = model.eval()(x, torch.tensor([0, 49]))
        assert not torch.allclose(out[0], out[1])


def test_unet_denoiser_validates():
    with pytest.raises(ValueError, match=r"image_size: expected a multiple of 2\*\*len\(channels\) = 8"):
        UNetDenoiser(channels=(8, 16, 32), image_size=20)
    model = UNetDenoiser(image_channels=3, channels=TINY, image_size=16)
    with pytest.raises(ValueError, match=r"UNetDenoiser\(image_channels=3, image_size=16\): x.*\(2, 1, 16, 16\)"):
        model(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"UNetDenoiser.*16×16.*\(2, 3, 32, 32\)"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="channels: expected a non-empty list"):
        UNetDenoiser(channels=())


@pytest.mark.parametrize("bad_t, got", [
    (torch.tensor([0.5, 1.0]), "torch.float32"),
    (torch.tensor([1, 2, 3]), r"\(3,\)"),
    (torch.tensor([0, 50]), r"values in \[0, 50\]"),
    (torch.tensor([-1, 3]), r"values in \[-1, 3\]"),
])
def test_time_unet_validates_t(bad_t, got):
    model = TimeUNet(channels=TINY, image_size=16, T=50)
    with pytest.raises(ValueError, match=rf"TimeUNet\(T=50\): t: expected .*timesteps.*{got}"):
        model(torch.randn(2, 3, 16, 16), bad_t)


def test_switch_values_are_validated():
    with pytest.raises(ValueError, match=r"norm: expected one of \('batch', 'group'\), got str 'layer'"):
        UNet(channels=TINY, image_size=16, norm="layer")
    with pytest.raises(ValueError, match="time_embedding: expected one of"):
        UNet(channels=TINY, image_size=16, time_embedding="learned")


class TestConditionalUNet:
    @pytest.fixture
    def model(self):
        return ConditionalUNet(channels=TINY, image_size=16, T=50, context_dim=5).eval()

    @pytest.fixture
    def inputs(self):
        return torch.randn(3, 3, 16, 16), torch.tensor([0, 10, 49]), torch.eye(5)[[0, 2, 4]]

    def test_zero_mask_is_the_null_context(self, model, inputs):
        x, t, c = inputs
        assert torch.equal(model(x, t, c, c_mask=torch.zeros(3)), model(x, t))
        assert torch.equal(model(x, t, c, c_mask=torch.ones(3)), model(x, t, c))

    def test_mask_drops_rows(self, model, inputs):
        x, t, c = inputs
        mixed = model(x, t, c, c_mask=torch.tensor([1.0, 0.0, 1.0]))
        assert torch.allclose(mixed[1], model(x, t)[1], atol=1e-6)
        assert torch.allclose(mixed[0], model(x, t, c)[0], atol=1e-6)

    def test_context_changes_the_output(self, model, inputs):
        x, t, c = inputs
        assert not torch.allclose(model(x, t, c), model(x, t))
        assert not torch.allclose(model(x, t, c), model(x, t, torch.eye(5)[[1, 3, 0]]))

    def test_validates_context(self, model, inputs):
        x, t, c = inputs
        with pytest.raises(ValueError, match=r"ConditionalUNet\(context_dim=5\): c: expected shape .* \(3, 5\).*\(3, 4\)"):
            model(x, t, torch.zeros(3, 4))
        with pytest.raises(ValueError, match=r"ConditionalUNet\(context_dim=5\): c_mask: expected shape \(N,\) = \(3,\).*\(3, 1\)"):
            model(x, t, c, torch.ones(3, 1))
        with pytest.raises(ValueError, match=r"c: expected a floating-point tensor.*torch.int64"):
            model(x, t, torch.zeros(3, 5, dtype=torch.long))


# ---- registry -----------------------------------------------------------------------------

def test_registered_names():
    assert {"unet_denoiser", "time_unet", "unet", "cond_unet"} <= set(registered())
    assert registered() == sorted(registered())


def test_config_includes_defaults_and_rebuilds():
    model = UNet(channels=(8, 16), image_size=16)
    assert model.config == {
        "name": "unet", "image_channels": 3, "channels": [8, 16], "image_size": 16, "T": 1000, "norm": "group",
        "activation": "gelu", "pool": "rearrange", "time_embedding": "sinusoidal", "residual": True,
        "upsample": "nearest", "attention_heads": 0,
    }
    assert TimeUNet(channels=TINY, image_size=16).config["name"] == "time_unet"  # subclass keeps its own name
    rebuilt = build(model.config)
    assert type(rebuilt) is UNet and rebuilt.config == model.config


@pytest.mark.parametrize("cls", [UNetDenoiser, TimeUNet, UNet, ConditionalUNet])
def test_save_load_round_trip(cls, tmp_path):
    model = make(cls, image_channels=1, channels=TINY, image_size=16)
    call(model, torch.randn(4, 1, 16, 16))  # train-mode pass: BatchNorm statistics move away from their init
    model.eval()
    folder = save_model(model, tmp_path / "run")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text()) == model.config
    assert set(load_file(str(folder / "model.safetensors"))) == set(model.state_dict())
    assert (folder / "model.safetensors").read_bytes()[:2] != b"\x80\x04"  # not a pickle
    loaded = load_model(folder)
    assert type(loaded) is cls and not loaded.training
    x = torch.randn(2, 1, 16, 16)
    torch.manual_seed(1)
    expected = call(model, x)
    torch.manual_seed(1)
    assert torch.equal(call(loaded, x), expected)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    save_model(UNetDenoiser(channels=TINY, image_size=16), tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"name": "transformer"}))
    with pytest.raises(ValueError, match=r"config\['name'\]: expected one of the registered.*cond_unet.*'transformer'"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"name": "unet_denoiser", "channels": [8, 32], "image_size": 16}))
    with pytest.raises(ValueError, match="model.safetensors: expected weights matching"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)


def test_build_rejects_unknown_kwargs():
    with pytest.raises(ValueError, match="config: expected keyword arguments accepted by UNetDenoiser"):
        build({"name": "unet_denoiser", "depth": 3})


def test_register_requires_json_arguments(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # keep the real registry clean

    @register("test_only_linear")
    class Linear(torch.nn.Module):
        def __init__(self, shape=(2, 3)):
            super().__init__()
            self.layer = torch.nn.Linear(*shape)

    assert Linear().config == {"name": "test_only_linear", "shape": [2, 3]}
    assert "test_only_linear" in registered()
    with pytest.raises(ValueError, match="Linear arguments: expected JSON-able values"):
        Linear(shape={2, 3})
    with pytest.raises(ValueError, match="model: expected a module of a registered architecture"):
        save_model(torch.nn.Linear(2, 3), "unused")


def test_optimised_defaults_are_lesson_03s_switches():
    """UNet and ConditionalUNet default to every lesson-03 optimisation, nearest upsampling included."""
    from dlcourse.config import OPTIMISED

    for cls in (UNet, ConditionalUNet):
        config = cls(channels=TINY, image_size=16, T=50).config
        assert {k: config[k] for k in OPTIMISED} == OPTIMISED, cls.__name__


def test_conditional_unet_can_condition_the_encoder_too():
    torch.manual_seed(0)
    model = ConditionalUNet(channels=TINY, image_size=16, T=50, context_dim=5, condition_encoder=True).eval()
    plain = ConditionalUNet(channels=TINY, image_size=16, T=50, context_dim=5)
    assert model.config["condition_encoder"] is True and plain.config["condition_encoder"] is False
    extra = count_parameters(model) - count_parameters(plain)
    assert len(model.encoder_context_mlps) == len(model.encoder_time_mlps) == len(TINY) and extra > 0
    # the encoder modulation is used: perturbing one encoder context MLP changes the output
    x, t, c = torch.randn(2, 3, 16, 16), torch.tensor([3, 40]), torch.eye(5)[:2]
    with torch.no_grad():
        before = model(x, t, c)
        for p in model.encoder_context_mlps[0].parameters():
            p.add_(0.5)
        assert not torch.allclose(before, model(x, t, c))
    with pytest.raises(ValueError, match="condition_encoder: expected True or False"):
        ConditionalUNet(channels=TINY, image_size=16, condition_encoder="yes")
