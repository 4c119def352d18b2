"""`ImageDataset` (images in [−1, 1] with labels, captions, attributes) and display conversions."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..validation import check_float_tensor, check_images, describe, fail


class ImageDataset(torch.utils.data.Dataset):
    """Images x ∈ [−1, 1] (N × 3 × H × W) with class labels, captions and per-image attributes.

    ``ds[i]`` is ``(image, label)``; captions and attributes are read from ``ds.captions[i]`` and
    ``ds.attributes[i]``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes, captions=None, attributes=None):
        check_images(images, "images", channels=3)
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long or labels.shape != (len(images),):
            raise fail("labels", f"a torch.long tensor of shape ({len(images)},)", describe(labels))
        classes = tuple(classes)
        if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < len(classes)):
            raise fail("labels", f"class indices in 0..{len(classes) - 1}",
                       f"values from {int(labels.min())} to {int(labels.max())}")
        captions = list(captions) if captions is not None else [f"a photo of a {classes[i]}" for i in labels.tolist()]
        attributes = list(attributes) if attributes is not None else [{"class": classes[i]} for i in labels.tolist()]
        for name, values in (("captions", captions), ("attributes", attributes)):
            if len(values) != len(images):
                raise fail(name, f"one entry per image ({len(images)})", f"{len(values)} entries")
        self.images, self.labels, self.classes = images, labels, classes
        self.captions, self.attributes = captions, attributes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"ImageDataset({n} images {c}×{h}×{w} in [-1, 1], classes={self.classes})"


def uint8_to_images(images: np.ndarray) -> torch.Tensor:
    """uint8 N × H × W × 3 in 0…255 → float N × 3 × H × W in [−1, 1]: x = 2·v/255 − 1."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0).contiguous()


def to_display(x: torch.Tensor) -> torch.Tensor:
    """Map [−1, 1] to [0, 1] for showing: (x + 1) / 2, clamped to [0, 1]."""
    check_float_tensor(x, "x")
    return ((x + 1) / 2).clamp(0, 1)


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """Images in [−1, 1] (N × C × H × W or one C × H × W, C = 1 or 3) → list of PIL images."""
    check_float_tensor(x, "x")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    check_images(x, "x")
    if x.shape[1] not in (1, 3):
        raise fail("x", "1 or 3 channels (N, C, H, W)", describe(x))
    pixels = (to_display(x.detach().float().cpu()) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if pixels.shape[-1] == 1:
        return [Image.fromarray(p[..., 0], mode="L") for p in pixels]
    return [Image.fromarray(p, mode="RGB") for p in pixels]
