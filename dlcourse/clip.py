"""Contrastive text–image encoders (CLIP, Radford et al. 2021) and text-prompt guidance.

A CLIP model maps an image x and a caption y to unit vectors f(x), g(y) ∈ R^D. For a batch of N
matching pairs the similarity matrix is S_ij = s · f(x_i)·g(y_j), with s = exp(learned log-scale)
(s = 1/τ, τ the temperature). Training makes each row and each column of S a softmax classifier
whose right answer is the diagonal (the symmetric InfoNCE loss, :func:`contrastive_loss`).

- :class:`Tokenizer` — a word-level tokenizer over a caption vocabulary; unknown words become
  ``<unk>`` and are reported.
- :class:`TinyCLIP` — a small CNN image encoder and a small Transformer text encoder, registered
  as ``"tiny_clip"`` (saved through ``dlcourse.models.save_model``; the vocabulary is in config.json).
- :func:`load_pretrained` — an OpenAI/LAION CLIP through ``open_clip`` (optional extra
  ``pip install -e ".[clip]"``), with the same ``encode_text`` / ``encode_image`` interface.
- Conditioning helpers: :func:`drop_embeddings` (the whole embedding, as CFG needs),
  :func:`drop_features` (single coordinates, for contrast), :func:`prompt_guided_eps_fn` (CFG with
  an optional negative prompt), held-out attribute combinations for the compositional test.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlcourse.guidance import apply_context_mask, cfg_eps, context_mask
from dlcourse.models.registry import register
from dlcourse.validation import check_float_tensor, check_images, check_positive_int, check_probability, describe, fail

__all__ = [
    "PAD",
    "UNK",
    "HELD_OUT",
    "Tokenizer",
    "TinyCLIP",
    "PretrainedCLIP",
    "load_pretrained",
    "contrastive_loss",
    "similarity",
    "retrieval_accuracy",
    "zero_shot_predict",
    "random_caption",
    "combination_mask",
    "without_combinations",
    "drop_embeddings",
    "drop_features",
    "prompt_guided_eps_fn",
]

PAD, UNK = "<pad>", "<unk>"
# (class, petal colour) pairs left out of lesson 05's training split: the compositional test.
HELD_OUT: tuple[tuple[str, str], ...] = (("rose", "white"), ("tulip", "yellow"))
_WORD = re.compile(r"[a-z]+")


def _check_texts(texts, name: str = "texts") -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise fail(name, "a list of strings (one caption or prompt each; wrap a single one in a list)",
                   describe(texts))
    return list(texts)


# ---- the loss ------------------------------------------------------------------------------------

def similarity(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarities f̂_i · ĝ_j (N_images, N_texts) of two sets of embeddings (normalised here)."""
    for value, name in ((image_emb, "image_emb"), (text_emb, "text_emb")):
        check_float_tensor(value, name)
        if value.dim() != 2:
            raise fail(name, "a 2-D tensor of embeddings (N, D)", describe(value))
    if image_emb.shape[1] != text_emb.shape[1]:
        raise fail("text_emb", f"embeddings of the image embeddings' size D = {image_emb.shape[1]}", describe(text_emb))
    return F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale) -> torch.Tensor:
    """Symmetric InfoNCE: with S = s · f̂ ĝᵀ (rows and columns L2-normalised, s = 1/τ) and labels 0…N−1,

        L = ½ [CE(S, labels) + CE(Sᵀ, labels)]   (image → text and text → image).
    """
    if image_features.shape[0] != text_features.shape[0]:
        raise fail("text_features", f"one row per image ({image_features.shape[0]} matching pairs)",
                   describe(text_features))
    logits = logit_scale * similarity(image_features, text_features)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def retrieval_accuracy(sim: torch.Tensor, k: int = 1) -> float:
    """Text → image retrieval: the share of texts j whose own image j is among the k images most
    similar to it. ``sim`` is (N_images, N_texts) with pair i ↔ i."""
    check_float_tensor(sim, "sim")
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise fail("sim", "a square (N, N) similarity matrix with matching pairs on the diagonal", describe(sim))
    check_positive_int(k, "k")
    top = sim.T.topk(min(k, sim.shape[0]), dim=1).indices  # (N_texts, k) image indices
    return float((top == torch.arange(sim.shape[0], device=sim.device)[:, None]).any(dim=1).float().mean())


def zero_shot_predict(clip, images: torch.Tensor, prompts: Sequence[str], batch_size: int = 512) -> torch.Tensor:
    """argmax_j f̂(x)·ĝ(prompt_j) for every image: (N,) indices into ``prompts``."""
    prompts = _check_texts(prompts, "prompts")
    with torch.no_grad():
        text = clip.encode_text(prompts)
        scores = [clip.encode_image(images[i:i + batch_size]) @ text.T for i in range(0, len(images), batch_size)]
    return torch.cat(scores).argmax(dim=1).cpu()


# ---- tokenizer -----------------------------------------------------------------------------------

class Tokenizer:
    """Lower-case words (``[a-z]+``) → ids; id 0 is ``<pad>``, id 1 ``<unk>``, then the vocabulary."""

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        if vocab[:2] != [PAD, UNK] or len(set(vocab)) != len(vocab):
            raise fail("vocab", f"distinct words starting with {PAD!r}, {UNK!r}", describe(vocab))
        self.vocab = vocab
        self.ids = {word: i for i, word in enumerate(vocab)}

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> "Tokenizer":
        """The sorted set of words in ``texts``, after the two special tokens."""
        words = sorted({w for text in _check_texts(texts) for w in _WORD.findall(text.lower())})
        return cls([PAD, UNK, *words])

    def __len__(self) -> int:
        return len(self.vocab)

    def unknown_words(self, texts: Sequence[str]) -> list[str]:
        """Words of ``texts`` outside the vocabulary (sorted, each once)."""
        return sorted({w for text in _check_texts(texts) for w in _WORD.findall(text.lower()) if w not in self.ids})

    def encode(self, texts: Sequence[str], context_length: int) -> torch.Tensor:
        """(N, context_length) long ids, padded with 0; unknown words → 1. A text longer than
        ``context_length`` words is an error (nothing is cut silently)."""
        check_positive_int(context_length, "context_length")
        rows = []
        for text in _check_texts(texts):
            words = _WORD.findall(text.lower())
            if len(words) > context_length:
                raise fail("texts", f"at most context_length = {context_length} words per text",
                           f"{len(words)} words in {text!r}")
            ids = [self.ids.get(w, 1) for w in words]
            rows.append(ids + [0] * (context_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), context_length)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Ids (N, L) → texts, padding removed."""
        return [" ".join(self.vocab[i] for i in row if i != 0) for row in ids.tolist()]


# ---- the small CLIP --------------------------------------------------------------------------------

@register("tiny_clip")
class TinyCLIP(nn.Module):
    """f(x): conv stages (3×3 conv → GroupNorm → GELU, ×2, then 2× average pool) → global mean →
    linear; g(y): token + position embeddings → Transformer encoder → mean over the words → linear.
    Both end L2-normalised in R^embed_dim; ``logit_scale`` is log s, initialised to log(1/0.07).
    :meth:`token_features` keeps one vector per token instead of the mean (lesson 06's cross-attention);
    :meth:`word_features` is each word's embedding alone, before the Transformer."""

    def __init__(self, vocab: list, embed_dim: int = 64, image_size: int = 32, widths=(32, 64, 128),
                 text_width: int = 64, text_layers: int = 2, heads: int = 4, context_length: int = 16):
        super().__init__()
        self.tokenizer = Tokenizer(vocab)
        self.embed_dim = check_positive_int(embed_dim, "embed_dim")
        self.image_size = check_positive_int(image_size, "image_size")
        self.context_length = check_positive_int(context_length, "context_length")
        self.text_width = check_positive_int(text_width, "text_width")
        layers, in_ch = [], 3
        for i, width in enumerate(widths):
            if i > 0:
                layers.append(nn.AvgPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.GroupNorm(min(8, width), width), nn.GELU()]
                in_ch = width
        self.image_body = nn.Sequential(*layers)
        self.image_proj = nn.Linear(in_ch, embed_dim)
        self.token_embedding = nn.Embedding(len(vocab), text_width)
        self.position_embedding = nn.Parameter(0.02 * torch.randn(context_length, text_width))
        layer = nn.TransformerEncoderLayer(text_width, heads, 4 * text_width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.text_body = nn.TransformerEncoder(layer, text_layers, enable_nested_tensor=False)
        self.text_norm = nn.LayerNorm(text_width)
        self.text_proj = nn.Linear(text_width, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def scale(self) -> torch.Tensor:
        """s = exp(logit_scale), capped at 100 as in CLIP."""
        return self.logit_scale.clamp(max=math.log(100)).exp()

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised f(x) (N, embed_dim); images N×3×H×W in [−1, 1], resized to image_size if needed."""
        check_images(images, "images", channels=3)
        x = images.to(self.device, torch.float32)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return self.image_proj(self.image_body(x).mean(dim=(2, 3)))

    def _ids(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked ids (N, L) on the model's device and keep = ids != 0 (N, L) bool."""
        if (not isinstance(token_ids, torch.Tensor) or token_ids.dtype != torch.long
                or token_ids.dim() != 2 or token_ids.shape[1] != self.context_length):
            raise fail("token_ids", f"a long tensor (N, context_length = {self.context_length}) from "
                       "tokenizer.encode", describe(token_ids))
        ids = token_ids.to(self.device)
        return ids, ids != 0

    def _text_body(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Transformer's outputs h (N, L, text_width) and keep = ids != 0 (N, L) bool, from ids (N, L)."""
        ids, keep = self._ids(token_ids)
        h = self.token_embedding(ids) + self.position_embedding
        return self.text_body(h, src_key_padding_mask=~keep), keep

    def text_features(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Unnormalised g(y) (N, embed_dim) from ids (N, context_length) (0 = padding, ignored)."""
        h, keep = self._text_body(token_ids)
        weights = keep.float()[:, :, None]
        pooled = (h * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.text_proj(self.text_norm(pooled))

    def token_features(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token features for cross-attention: (y (N, L, text_width), mask (N, L) bool).

        y_i = LayerNorm(h_i) · m_i for each token's Transformer output h_i (the encoder's ``text_norm``,
        applied per token as CLIP applies its final norm before picking a token), m_i = [id_i ≠ 0]:
        True for a word, False for padding, whose rows are zero. Position i is the i-th word of the prompt."""
        h, keep = self._text_body(token_ids)
        return self.text_norm(h) * keep[:, :, None], keep

    def word_features(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-word features that ignore the other words: (y (N, L, text_width), mask (N, L) bool).

        y_i = LN(E[id_i]) · m_i: the token embedding E of each word alone, before position embeddings and the
        Transformer, normalised over its width (LN without learned scale), m_i = [id_i ≠ 0]. A word means the
        same in every prompt, so a held-out pair of words is a new set of known vectors (lesson 06 measures what
        that does to composition against :meth:`token_features`)."""
        ids, keep = self._ids(token_ids)
        e = self.token_embedding(ids)
        return F.layer_norm(e, e.shape[-1:]) * keep[:, :, None], keep

    def encode_tokens(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`token_features` of ``texts``: (y (N, context_length, text_width), mask (N, context_length))."""
        return self.token_features(self.tokenize(texts))

    def encode_words(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`word_features` of ``texts``: (y (N, context_length, text_width), mask (N, context_length))."""
        return self.word_features(self.tokenize(texts))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Ids for ``texts``; warns (UserWarning) naming the words that become ``<unk>``."""
        unknown = self.tokenizer.unknown_words(texts)
        if unknown:
            warnings.warn(f"TinyCLIP: words outside the vocabulary become {UNK}: {unknown} "
                          f"(the vocabulary holds {len(self.tokenizer) - 2} words of the training captions)",
                          stacklevel=3)
        return self.tokenizer.encode(texts, self.context_length)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """ĝ(y) = g(y)/‖g(y)‖ for each text: (N, embed_dim)."""
        return F.normalize(self.text_features(self.tokenize(texts)), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """f̂(x) = f(x)/‖f(x)‖ for each image: (N, embed_dim)."""
        return F.normalize(self.image_features(images), dim=-1)

    def forward(self, images: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """The scaled similarity matrix s · f̂ ĝᵀ (N_images, N_texts)."""
        return self.scale() * similarity(self.image_features(images), self.text_features(token_ids))


# ---- a pretrained CLIP through open_clip -----------------------------------------------------------

class PretrainedCLIP:
    """An open_clip model with TinyCLIP's interface: ``encode_text(list[str])``, ``encode_image(images
    in [−1, 1])`` (resized to the model's input size and normalised with its mean and std), both
    returning L2-normalised embeddings, and ``embed_dim``."""

    def __init__(self, model, tokenizer, image_size: int, mean, std, device):
        self.model, self.tokenizer, self.image_size = model.eval(), tokenizer, int(image_size)
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)[None, :, None, None]
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)[None, :, None, None]
        self.embed_dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else None

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(_check_texts(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, "images", channels=3)
        x = (images.to(self.device, torch.float32) + 1) / 2  # [−1, 1] → [0, 1]
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        x = (x.clamp(0, 1) - self.mean) / self.std
        return F.normalize(self.model.encode_image(x).float(), dim=-1)


def _missing_weights(model_name: str, pretrained: str, open_clip, reason: str) -> FileNotFoundError:
    source = ""
    try:
        cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
        if cfg.get("hf_hub"):
            source = f"the Hugging Face repository {cfg['hf_hub'].rstrip('/')}"
        elif cfg.get("url"):
            source = cfg["url"]
    except Exception:  # noqa: BLE001 - only for the message
        pass
    known = ", ".join(f"{m}/{p}" for m, p in open_clip.list_pretrained()[:6])
    where = (f"download {source} on a machine with internet (e.g. `python -c \"import open_clip; "
             f"open_clip.create_model_and_transforms('{model_name}', pretrained='{pretrained}')\"` fills the "
             f"Hugging Face cache, {os.environ.get('HF_HOME', '~/.cache/huggingface')}), then copy that cache here, "
             "or pass the path of the downloaded weights file as `pretrained`"
             if source else
             f"`pretrained` is neither a file nor a tag open_clip knows for {model_name!r} "
             f"(examples of known pairs: {known}); pass the path of a weights file (.bin, .pt or .safetensors)")
    return FileNotFoundError(f"load_pretrained({model_name!r}, {pretrained!r}): no weights on disk ({reason}). "
                             f"To use it offline, {where}.")


_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # the names open_clip looks for


def _cached_weights(model_name: str, tag: str, open_clip) -> tuple[str, dict]:
    """The local file holding the weights of (model_name, tag) and open_clip's config for them; the
    missing-weights error when they are not on disk. Only looks at the disk (no network request)."""
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        raise _missing_weights(model_name, tag, open_clip, "not a file, and not a tag open_clip knows for this model")
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(cfg["hf_hub"])
        for name in ([filename] if filename else list(_HUB_FILES)):
            found = try_to_load_from_cache(repo_id, name)
            if isinstance(found, str) and os.path.isfile(found):
                return found, cfg
        raise _missing_weights(model_name, tag, open_clip, f"{repo_id} is not in the Hugging Face cache")
    target = Path("~/.cache/clip").expanduser() / os.path.basename(cfg.get("url", ""))
    if not target.is_file():
        raise _missing_weights(model_name, tag, open_clip, f"{target} is not a file")
    return str(target), cfg


def load_pretrained(model_name: str = "ViT-B-32", pretrained: str | os.PathLike = "openai",
                    device=None) -> PretrainedCLIP:
    """A real CLIP through open_clip, offline: ``pretrained`` is a weights file on disk or an open_clip
    tag (e.g. "openai", "laion2b_s34b_b79k") whose weights are already in the local Hugging Face cache.
    Nothing is downloaded; missing weights raise FileNotFoundError saying what to fetch and where.
    (OpenAI's weights given as a file need the "-quickgelu" variant of the name, e.g. "ViT-B-32-quickgelu".)"""
    try:
        import open_clip
    except ImportError as error:
        raise ImportError("load_pretrained needs open_clip: pip install -e \".[clip]\" (or pip install "
                          "open_clip_torch). Lesson 05 runs without it, on its TinyCLIP.") from error
    if not isinstance(model_name, str) or model_name not in open_clip.list_models():
        raise fail("model_name", "an open_clip architecture name (open_clip.list_models(), e.g. 'ViT-B-32')",
                   describe(model_name))
    if not isinstance(pretrained, (str, os.PathLike)):
        raise fail("pretrained", "a weights file path or an open_clip tag such as 'openai'", describe(pretrained))
    device = torch.device(device) if device is not None else torch.device("cpu")
    path = Path(pretrained).expanduser()
    if path.is_file():
        model = open_clip.create_model(model_name, pretrained=str(path), device=device)
    elif os.sep in str(pretrained) or path.suffix in (".bin", ".pt", ".pth", ".safetensors"):
        raise _missing_weights(model_name, str(pretrained), open_clip, f"{path} is not a file")
    else:
        weights, cfg = _cached_weights(model_name, str(pretrained), open_clip)
        model = open_clip.create_model(model_name, pretrained=weights, device=device,
                                       force_quick_gelu=bool(cfg.get("quick_gelu", False)))
        model.visual.image_mean, model.visual.image_std = cfg.get("mean"), cfg.get("std")
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    return PretrainedCLIP(model, open_clip.get_tokenizer(model_name), size, mean, std, device)


# ---- captions and held-out combinations ------------------------------------------------------------

def random_caption(attributes: dict, rng: np.random.Generator, keep: float = 0.5, generic: float = 0.2) -> str:
    """A partial caption of one image: size, petal colour, centre and background each kept with
    probability ``keep``; the class word replaced by "flower" with probability ``generic``.
    With everything kept it is ``dlcourse.data.flowers.caption(attributes)``."""
    from dlcourse.data.flowers import _BACKGROUND_PHRASE

    a = attributes
    words = ["a"]
    if rng.uniform() < keep:
        words.append(a["size"])
    if rng.uniform() < keep:
        words.append(a["petal_colour"])
    words.append("flower" if rng.uniform() < generic else a["class"])
    if a["centre_colour"] not in ("none", a["petal_colour"]) and rng.uniform() < keep:
        words.append(f"with a {a['centre_colour']} centre")
    if rng.uniform() < keep:
        words.append(_BACKGROUND_PHRASE[a["background"]])
    return " ".join(words)


def combination_mask(attributes: Sequence[dict], combinations=HELD_OUT) -> torch.Tensor:
    """Bool (N,): True where (class, petal colour) of an image is one of ``combinations``."""
    pairs = {tuple(c) for c in combinations}
    return torch.tensor([(a["class"], a["petal_colour"]) in pairs for a in attributes], dtype=torch.bool)


def without_combinations(dataset, combinations=HELD_OUT):
    """The ``ImageDataset`` without the images whose (class, petal colour) is in ``combinations``."""
    from dlcourse.data.dataset import ImageDataset

    keep = ~combination_mask(dataset.attributes, combinations)
    index = keep.nonzero().flatten().tolist()
    return ImageDataset(dataset.images[keep], dataset.labels[keep], dataset.classes,
                        [dataset.captions[i] for i in index], [dataset.attributes[i] for i in index])


# ---- conditioning on embeddings --------------------------------------------------------------------

def drop_embeddings(c: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop WHOLE embeddings: m_i ~ Bernoulli(1 − drop_prob) per row, returns (m_i·c_i, m). A dropped row
    is the zero vector, the null context the unconditional ε_θ(x_t, t) is trained on."""
    check_float_tensor(c, "c")
    if c.dim() != 2:
        raise fail("c", "a batch of embeddings (B, D)", describe(c))
    mask = context_mask(c.shape[0], drop_prob, generator=generator, device=c.device)
    return apply_context_mask(c, mask), mask


def drop_features(c: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop SINGLE coordinates (each c_ij zeroed with probability drop_prob), for contrast: a whole row is
    zero only with probability drop_prob^D, so the null context is (almost) never trained."""
    check_float_tensor(c, "c")
    p = check_probability(drop_prob, "drop_prob")
    where = generator.device if generator is not None else c.device
    keep = (torch.rand(c.shape, generator=generator, device=where) >= p).to(c.device, c.dtype)
    return c * keep


def prompt_guided_eps_fn(model, c: torch.Tensor, w, c_neg: torch.Tensor | None = None):
    """eps_fn(x_t, t) for CFG on embeddings, one batched pass: with a negative prompt c_neg

        ε̃ = ε(x_t, c_neg) + (1 + w)·(ε(x_t, c) − ε(x_t, c_neg)) = (1 + w)·ε(x_t, c) − w·ε(x_t, c_neg),

    and without one (c_neg=None) the null context: plain classifier-free guidance."""
    check_float_tensor(c, "c")
    if c_neg is not None:
        check_float_tensor(c_neg, "c_neg")
        if c_neg.shape != c.shape:
            raise fail("c_neg", f"the shape of c {tuple(c.shape)} (one negative embedding per sample)",
                       describe(c_neg))

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if c.shape[0] != n:
            raise fail("c", f"one embedding per image: ({n}, D)", describe(c))
        ctx = c.to(x.device, x.dtype)
        other = torch.zeros_like(ctx) if c_neg is None else c_neg.to(x.device, x.dtype)
        keep = torch.cat([x.new_ones(n), x.new_ones(n) if c_neg is not None else x.new_zeros(n)])
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([ctx, other]), keep)
        return cfg_eps(out[:n], out[n:], w)

    return eps_fn
