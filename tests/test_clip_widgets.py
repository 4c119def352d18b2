"""dlcourse.widgets.prompt_explorer: prompts × w in one run, new prompts sampled once and cached."""
import pytest
import torch

from dlcourse.schedules import Schedule, scaled_linear_betas
from dlcourse.widgets import PromptExplorer, prompt_explorer


class WordCLIP:
    """encode_text: a fixed unit vector per prompt (its index in a word list); counts calls."""

    words = ["a rose", "a tulip", "a daisy", "a red flower"]

    def __init__(self):
        self.calls = []

    def encode_text(self, texts):
        self.calls.append(list(texts))
        return torch.eye(4)[[self.words.index(t) for t in texts]]


class ColourModel(torch.nn.Module):
    """The exact ε for data = one colour per context direction (black for the null context)."""

    def __init__(self, schedule):
        super().__init__()
        self.colour = torch.nn.Parameter(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)))
        self.alpha_bars = schedule.alpha_bars
        self.batch_sizes = []

    def forward(self, x, t, c, c_mask):
        self.batch_sizes.append(x.shape[0])
        x_star = 0.5 * torch.tanh((c * c_mask[:, None]) @ self.colour)[:, :, None, None]
        ab = self.alpha_bars[t][:, None, None, None]
        return (x - ab.sqrt() * x_star) / (1 - ab).sqrt()


@pytest.fixture
def setup():
    schedule = Schedule(scaled_linear_betas(20))
    return schedule, ColourModel(schedule), WordCLIP()


def test_all_prompts_and_weights_in_one_batched_run(setup):
    schedule, model, clip = setup
    explorer = prompt_explorer(model, schedule, clip, ["a rose", "a tulip"], ws=[-1, 0, 2], n_per_prompt=2,
                               steps=4, image_shape=(3, 4, 4), progress=False)
    assert isinstance(explorer, PromptExplorer) and explorer.classes == ("a rose", "a tulip")
    assert set(model.batch_sizes) == {2 * 3 * 2 * 2}  # [cond; null] × 3 w × 2 prompts × 2 samples, every step
    assert all(x.shape == (2, 2, 3, 4, 4) for x in explorer.images.values())
    # w = −1 is unconditional: both prompts give the same image from the same noise
    assert torch.allclose(explorer.images[-1.0][0], explorer.images[-1.0][1], atol=1e-5)
    assert not torch.allclose(explorer.images[2.0][0], explorer.images[2.0][1], atol=1e-3)
    assert explorer.cls == "a rose" and explorer.current_png.startswith(b"\x89PNG")


def test_a_typed_prompt_is_sampled_once_and_cached(setup):
    schedule, model, clip = setup
    explorer = prompt_explorer(model, schedule, clip, ["a rose"], ws=[0, 3], n_per_prompt=2, steps=4,
                               image_shape=(3, 4, 4), progress=False)
    runs = len(clip.calls)
    explorer.add_prompt("a daisy")
    assert explorer.classes == ("a rose", "a daisy") and explorer.cls == "a daisy"
    assert len(clip.calls) == runs + 1 and clip.calls[-1] == ["a daisy"]
    assert explorer.images[3.0].shape == (2, 2, 3, 4, 4)
    # the added row is what an explorer of that prompt alone samples (same seed, so the first prompt's x_T)
    alone = prompt_explorer(model, schedule, WordCLIP(), ["a daisy"], ws=[0, 3], n_per_prompt=2, steps=4,
                            image_shape=(3, 4, 4), progress=False)
    assert torch.equal(explorer.images[3.0][1], alone.images[3.0][0])
    explorer.add_prompt("a daisy")  # cached: no new sampling
    assert len(clip.calls) == runs + 1
    explorer.set(w=2.6)
    assert explorer.w == 3.0
    with pytest.raises(ValueError, match="cls: expected one of the prompts"):
        explorer.set(cls="all")
    with pytest.raises(ValueError, match="text: expected a non-empty prompt"):
        explorer.add_prompt("  ")
    with pytest.raises(ValueError, match="prompts: expected a non-empty list of prompt strings"):
        prompt_explorer(model, schedule, clip, "a rose")


def test_the_caption_writes_guidance_scale_as_1_plus_w_like_lesson_04():
    explorer = PromptExplorer({w: torch.zeros(1, 1, 3, 4, 4) for w in (0.0, 2.0)}, ["a rose"])
    caption = explorer.widget.children[2]
    assert caption.value == "w = 0 (diffusers' guidance_scale = 1 + w = 1) · prompt: 'a rose'"
    explorer.set(w=2.0)
    assert caption.value == "w = 2 (diffusers' guidance_scale = 1 + w = 3) · prompt: 'a rose'"


class TokenCLIP:
    """encode_tokens: a fixed random feature per word, padded with zero rows to 4 tokens (TinyCLIP's layout);
    records the prompts of every call."""

    vocabulary = ["a", "white", "red", "rose", "tulip"]

    def __init__(self, width: int = 6):
        self.features = torch.randn(len(self.vocabulary), width, generator=torch.Generator().manual_seed(1))
        self.calls = []

    def encode_tokens(self, texts):
        self.calls.append(list(texts))
        y = torch.zeros(len(texts), 4, self.features.shape[1])
        for i, text in enumerate(texts):
            words = text.split()
            y[i, :len(words)] = self.features[[self.vocabulary.index(word) for word in words]]
        return y, y.ne(0).any(-1)


def upsample_decode(z):
    """A stand-in decoder: the latent's first 3 channels enlarged 2× (8×8 → 16×16)."""
    return torch.nn.functional.interpolate(z[:, :3], scale_factor=2, mode="nearest")


@pytest.fixture
def cross_attention():
    """A small TextUNet on 4×8×8 latents whose cross-attention is open (its W_o starts at zero)."""
    from dlcourse.models import TextUNet

    torch.manual_seed(0)
    model = TextUNet(channels=(8, 16), image_size=8, T=20, context_dim=6, heads=2)
    for block in model.cross_attentions:
        block.proj.reset_parameters()
    return Schedule(scaled_linear_betas(20)), model.eval(), TokenCLIP()


def test_token_features_through_a_cross_attention_model_decoded(cross_attention):
    """Each (w, prompt) tile is DDIM from the shared x_T with CFG on that prompt's (L, D) token features, decoded."""
    from dlcourse.guidance import guided_eps_fn
    from dlcourse.sampling import ddim_sample

    schedule, model, clip = cross_attention
    prompts, n, ws = ["a white rose", "a red tulip"], 2, [-1.0, 0.0, 3.0]
    encode = lambda p: clip.encode_tokens(p)[0]  # noqa: E731
    explorer = prompt_explorer(model, schedule, None, prompts, ws=ws, n_per_prompt=n, steps=3, progress=False,
                               x0_mode="none", encode=encode, decode=upsample_decode)
    assert clip.calls == [prompts] and explorer.classes == tuple(prompts)
    x_T = torch.randn((len(prompts) * n, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    y = encode(prompts).repeat_interleave(n, 0)  # (prompt × sample, L, D)
    for w in ws:
        z = ddim_sample(guided_eps_fn(model, y, w), schedule, x_T.shape, steps=3, x_T=x_T, progress=False,
                        x0_mode="none")
        expected = upsample_decode(z).clamp(-1, 1).reshape(len(prompts), n, 3, 16, 16)
        assert explorer.images[w].shape == (2, n, 3, 16, 16)
        assert torch.allclose(explorer.images[w], expected, atol=1e-5), w
    # w = −1 is the unconditional model (the null prompt: context None), w = 3 follows the prompt's words
    z_null = ddim_sample(lambda z, t: model(z, t), schedule, x_T.shape, steps=3, x_T=x_T, progress=False,
                         x0_mode="none")
    null = upsample_decode(z_null).clamp(-1, 1).reshape(len(prompts), n, 3, 16, 16)
    assert torch.allclose(explorer.images[-1.0], null, atol=1e-5)
    assert (explorer.images[3.0] - explorer.images[-1.0]).abs().max() > 0.1


def test_a_typed_prompt_goes_through_encode_and_decode(cross_attention):
    schedule, model, clip = cross_attention
    options = dict(ws=[0.0, 2.0], n_per_prompt=2, steps=3, progress=False, x0_mode="none",
                   encode=lambda p: clip.encode_tokens(p)[0], decode=upsample_decode)
    explorer = prompt_explorer(model, schedule, None, ["a rose"], **options)
    explorer.add_prompt("a white tulip")
    assert clip.calls[-1] == ["a white tulip"] and explorer.cls == "a white tulip"
    assert explorer.images[2.0].shape == (2, 2, 3, 16, 16)
    alone = prompt_explorer(model, schedule, None, ["a white tulip"], **options)
    assert torch.allclose(explorer.images[2.0][1], alone.images[2.0][0], atol=1e-5)
    assert explorer.current_png.startswith(b"\x89PNG")


def test_bad_encode_arguments_name_the_fix(setup, cross_attention):
    schedule, model, clip = setup
    with pytest.raises(ValueError, match=r"encode: expected a function list of prompts → context tensor, e.g. "
                                         r"lambda p: clip.encode_tokens\(p\)\[0\]"):
        prompt_explorer(model, schedule, clip, ["a rose"], encode=clip.words, image_shape=(3, 4, 4))
    with pytest.raises(ValueError, match=r"clip: expected a text encoder with .encode_text\(list of prompts\) .*"
                                         r"or pass encode="):
        prompt_explorer(model, schedule, None, ["a rose"], image_shape=(3, 4, 4))
    with pytest.raises(ValueError, match=r"encode\(prompts\): expected a float tensor with one context per "
                                         r"prompt, \(1, D\) or \(1, L, D\), got tuple"):
        prompt_explorer(model, schedule, None, ["a rose"], encode=TokenCLIP().encode_tokens, image_shape=(3, 4, 4))
    latent_schedule, latent_model, tokens = cross_attention
    with pytest.raises(ValueError, match=r"decode: expected a decoder for the model's 4-channel samples"):
        prompt_explorer(latent_model, latent_schedule, None, ["a rose"], encode=lambda p: tokens.encode_tokens(p)[0])
