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
