"""The embedded procedural flower dataset: five TF-Flowers classes drawn by code.

Every image is drawn at ``SUPERSAMPLE`` times its final size with PIL's
``ImageDraw`` and then box-filtered down, which anti-aliases the edges. Each
image has its own random generator seeded by ``(seed, split, index)``, so the
first 100 images of a 1000-image set are exactly the 100-image set, and the
train and test splits come from different seed streams.

Classes differ by shape as well as colour:
- daisy: many thin white (sometimes pink-tinged) petals around a small yellow centre;
- dandelion: a dense pom-pom of very thin yellow petals, or a pale fluffy seed head;
- rose: round layered petals with dark edges, curling inwards;
- sunflower: a ring of broad yellow/orange petals around a large dark-brown centre;
- tulip: a cup seen from the side, on a green stem with long leaves.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

# Bump when the drawing changes: it is part of every cache fingerprint.
GENERATOR_VERSION = "1"
SUPERSAMPLE = 4

CLASSES = ("daisy", "dandelion", "rose", "sunflower", "tulip")

# Base RGB of each petal colour name; every drawn shade stays close to its base.
_PETAL_RGB = {
    "white": (246, 246, 240),
    "yellow": (250, 212, 25),
    "orange": (246, 120, 18),
    "red": (205, 18, 30),
    "pink": (242, 118, 176),
    "purple": (128, 48, 170),
}
PETAL_COLOURS = tuple(_PETAL_RGB)

_CENTRE_RGB = {
    "yellow": (245, 190, 20),
    "brown": (110, 60, 20),
    "dark brown": (62, 34, 14),
}

# Petal colours each class may take, with their probabilities.
_CLASS_PETALS = {
    "daisy": {"white": 0.8, "pink": 0.2},
    "dandelion": {"yellow": 0.75, "white": 0.25},
    "rose": {"red": 0.3, "pink": 0.25, "white": 0.2, "yellow": 0.25},
    "sunflower": {"yellow": 0.7, "orange": 0.3},
    "tulip": {"red": 0.25, "pink": 0.2, "yellow": 0.2, "orange": 0.15, "purple": 0.2},
}

BACKGROUNDS = ("grass", "dark grass", "sky", "soil")
_BACKGROUND_PHRASE = {
    "grass": "on green grass",
    "dark grass": "on dark grass",
    "sky": "against a blue sky",
    "soil": "on brown soil",
}

SIZES = ("small", "medium", "large")
# Flower-head radius as a fraction of the image side, per size.
_SIZE_RADIUS = {"small": (0.17, 0.22), "medium": (0.23, 0.29), "large": (0.30, 0.38)}

_STEM = (58, 128, 40)
_LEAF = (70, 150, 48)

# Unit circle polygon reused for every petal (an ellipse after scaling).
_ANGLES = np.linspace(0.0, 2.0 * math.pi, 14, endpoint=False)
_UNIT = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1)


def _jitter(rgb, rng: np.random.Generator, brightness=(0.9, 1.05), spread=8.0) -> tuple:
    """A random shade near ``rgb``: scaled brightness plus small per-channel noise."""
    c = np.asarray(rgb, float) * rng.uniform(*brightness) + rng.normal(0.0, spread, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _shade(rgb, f: float) -> tuple:
    """Multiply a colour by ``f`` (f < 1 darker)."""
    return tuple(int(min(255, max(0, v * f))) for v in rgb)


def _mix(a, b, f: float) -> tuple:
    """(1 − f)·a + f·b."""
    return tuple(int((1 - f) * x + f * y) for x, y in zip(a, b))


def _ellipses(cx, cy, dist, length, width, angles) -> np.ndarray:
    """Polygons (k × 14 × 2) of ellipses with semi-axes length/2, width/2, centred ``dist`` from (cx, cy)
    along each angle and pointing outwards."""
    angles = np.asarray(angles, float)[:, None]
    dist = np.broadcast_to(np.asarray(dist, float), angles.shape[:1])[:, None]
    length = np.broadcast_to(np.asarray(length, float), angles.shape[:1])[:, None]
    width = np.broadcast_to(np.asarray(width, float), angles.shape[:1])[:, None]
    u = _UNIT[None, :, 0] * length / 2 + dist  # along the petal
    v = _UNIT[None, :, 1] * width / 2  # across it
    c, s = np.cos(angles), np.sin(angles)
    return np.stack([cx + u * c - v * s, cy + u * s + v * c], axis=2)


def _polygon(draw: ImageDraw.ImageDraw, pts: np.ndarray, fill, outline=None, width: int = 0) -> None:
    draw.polygon(pts.ravel().tolist(), fill=fill, outline=outline, width=width)


def _disc(draw: ImageDraw.ImageDraw, cx, cy, r, fill, outline=None, width: int = 0) -> None:
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=width)


# ----------------------------------------------------------------------------- backgrounds

def _background(kind: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple]:
    """A textured background at the final resolution (uint8 size × size × 3) and its mean colour."""
    y = np.linspace(0.0, 1.0, size)[:, None, None]
    coarse = rng.normal(0.0, 1.0, (4, 4))
    patches = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((size, size), Image.BILINEAR))[..., None]
    if kind in ("grass", "dark grass"):
        base = np.array([78, 140, 48] if kind == "grass" else [30, 78, 30], float) * rng.uniform(0.85, 1.1)
        streaks = np.repeat(rng.normal(0.0, 1.0, (size // 3 + 1, size)), 3, axis=0)[:size, :, None]
        img = base * (1 + 0.16 * streaks + 0.08 * patches) + rng.normal(0, 4, (size, size, 3))
    elif kind == "sky":
        top = np.array([60, 120, 210], float) * rng.uniform(0.85, 1.05)
        bottom = np.array([165, 205, 240], float) * rng.uniform(0.9, 1.05)
        img = top + (bottom - top) * y + 6 * patches + rng.normal(0, 2, (size, size, 3))
    else:  # soil
        base = np.array([112, 76, 46], float) * rng.uniform(0.8, 1.1)
        speckle = rng.normal(0.0, 1.0, (size, size, 1))
        img = base * (1 + 0.14 * speckle + 0.1 * patches) + rng.normal(0, 5, (size, size, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img, tuple(int(v) for v in img.reshape(-1, 3).mean(0))


def _clouds(draw: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> None:
    for _ in range(rng.integers(0, 3)):
        cx, cy = rng.uniform(0, S), rng.uniform(0, 0.6 * S)
        colour = _jitter((235, 240, 248), rng, (0.95, 1.0), 4)
        for _ in range(4):
            r = rng.uniform(0.05, 0.11) * S
            _disc(draw, cx + rng.uniform(-0.12, 0.12) * S, cy + rng.uniform(-0.03, 0.03) * S, r, colour)


# ----------------------------------------------------------------------------- flowers

def _stem_and_leaf(draw, cx, cy, R, S, rng) -> None:
    """A stem from the head towards the bottom edge, with a leaf on one side."""
    angle = math.pi / 2 + rng.uniform(-0.5, 0.5)
    end = (cx + 2 * S * math.cos(angle), cy + 2 * S * math.sin(angle))
    stem = _jitter(_STEM, rng)
    draw.line((cx, cy, *end), fill=stem, width=max(2, int(0.14 * R)))
    t = rng.uniform(1.4, 2.2) * R
    side = rng.choice([-1.0, 1.0])
    bx, by = cx + t * math.cos(angle), cy + t * math.sin(angle)
    leaf_angle = angle + side * rng.uniform(0.6, 1.1) + math.pi
    _polygon(draw, _ellipses(bx, by, 0.5 * R, R, 0.35 * R, [leaf_angle])[0], _jitter(_LEAF, rng))


def _daisy(draw, cx, cy, R, phi, petal, centre, rng) -> None:
    k = int(rng.integers(16, 25))
    angles = phi + np.arange(k) * 2 * math.pi / k + rng.normal(0, 0.05, k)
    length = R * rng.uniform(0.72, 0.86, k)
    width = R * rng.uniform(0.16, 0.22)
    edge = _shade(petal, 0.78)
    for pts in _ellipses(cx, cy, 0.16 * R + length / 2, length, width, angles):
        _polygon(draw, pts, petal, edge, max(1, int(0.025 * R)))
    rc = R * rng.uniform(0.2, 0.27)
    _disc(draw, cx, cy, rc, centre, _shade(centre, 0.75), max(1, int(0.05 * R)))


def _dandelion(draw, cx, cy, R, phi, petal, centre, rng, seed_head: bool, background) -> None:
    if seed_head:
        # A pale fluffy sphere: translucent disc, fine radial hairs with tufts, small brown centre.
        _disc(draw, cx, cy, R, _mix(background, petal, 0.55))
        k = 70
        angles = phi + np.arange(k) * 2 * math.pi / k + rng.normal(0, 0.04, k)
        hair = _shade(petal, 0.97)
        for a in angles:
            r = R * rng.uniform(0.85, 1.0)
            x, y = cx + r * math.cos(a), cy + r * math.sin(a)
            draw.line((cx, cy, x, y), fill=hair, width=max(1, int(0.03 * R)))
            _disc(draw, x, y, 0.06 * R, hair)
        _disc(draw, cx, cy, 0.14 * R, centre)
        return
    # A dense pom-pom: three layers of very thin petals, darker towards the middle.
    for layer, (count, reach, f) in enumerate(((48, 1.0, 0.95), (40, 0.75, 1.0), (30, 0.5, 1.0))):
        angles = phi + layer * 0.07 + np.arange(count) * 2 * math.pi / count + rng.normal(0, 0.04, count)
        length = R * reach * rng.uniform(0.85, 1.0, count)
        colour = _shade(petal, f) if layer < 2 else _mix(petal, centre, 0.5)
        for pts in _ellipses(cx, cy, length / 2, length, 0.09 * R, angles):
            _polygon(draw, pts, colour, _shade(colour, 0.88), 1)
    _disc(draw, cx, cy, 0.14 * R, _shade(centre, 0.95))


def _rose(draw, cx, cy, R, phi, petal, rng) -> None:
    edge_w = max(1, int(0.06 * R))
    # Green sepals peeking out behind the outer petals.
    sepal_angles = phi + np.arange(5) * 2 * math.pi / 5 + rng.normal(0, 0.2, 5)
    for pts in _ellipses(cx, cy, 0.75 * R, 0.7 * R, 0.28 * R, sepal_angles):
        _polygon(draw, pts, _jitter(_LEAF, rng))
    # Layers of round overlapping petals, each outlined in a darker shade.
    layers = ((6, 0.55, 0.45, 0.88), (5, 0.36, 0.36, 0.95), (4, 0.2, 0.25, 1.0))
    for i, (count, dist, radius, f) in enumerate(layers):
        colour = _shade(petal, f)
        edge = _shade(petal, 0.62 * f)
        for j in range(count):
            a = phi + i * 0.6 + j * 2 * math.pi / count + rng.normal(0, 0.1)
            _disc(draw, cx + dist * R * math.cos(a), cy + dist * R * math.sin(a), radius * R, colour, edge, edge_w)
    # A tight spiral of dark arcs in the heart.
    dark = _shade(petal, 0.5)
    start = math.degrees(phi)
    for i, r in enumerate((0.2, 0.14, 0.08)):
        box = (cx - r * R, cy - r * R, cx + r * R, cy + r * R)
        draw.arc(box, start + 120 * i, start + 120 * i + 250, fill=dark, width=edge_w)


def _sunflower(draw, cx, cy, R, phi, petal, centre, rng) -> None:
    rc = R * rng.uniform(0.45, 0.55)
    k = int(rng.integers(16, 24))
    for layer, f in ((0, 0.85), (1, 1.0)):
        angles = phi + (layer + 0.5 * layer) * math.pi / k + np.arange(k) * 2 * math.pi / k
        length = (R - rc) * rng.uniform(1.05, 1.25, k) + 0.2 * rc
        colour = _shade(petal, f)
        for pts in _ellipses(cx, cy, 0.8 * rc + length / 2, length, 2.2 * math.pi * rc / k, angles):
            _polygon(draw, pts, colour, _shade(colour, 0.8), 1)
    _disc(draw, cx, cy, rc, centre, _shade(centre, 0.7), max(1, int(0.05 * R)))
    # Seed texture: a few lighter and darker dots.
    for _ in range(12):
        r, a = rc * 0.8 * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        _disc(draw, cx + r * math.cos(a), cy + r * math.sin(a), 0.07 * rc, _shade(centre, rng.choice([0.6, 1.5])))


def _tulip(draw, cx, cy, R, phi, petal, rng, S) -> None:
    """Side view: a cup with three pointed tips on a stem, tilted by ``phi`` (small)."""
    c, s = math.cos(phi), math.sin(phi)

    def place(points):  # rotate local (x right, y down) points by phi around (cx, cy)
        p = np.asarray(points, float)
        return np.stack([cx + p[:, 0] * c - p[:, 1] * s, cy + p[:, 0] * s + p[:, 1] * c], axis=1)

    w, h = R * rng.uniform(0.75, 0.95), R * rng.uniform(1.0, 1.2)
    # Stem and long leaves from below the cup to beyond the bottom edge.
    stem = _jitter(_STEM, rng)
    base = place([(0, 0.5 * h)])[0]
    bottom = place([(rng.uniform(-0.3, 0.3) * R, 3 * S)])[0]
    draw.line((*base, *bottom), fill=stem, width=max(2, int(0.16 * R)))
    for side in rng.choice([-1.0, 1.0], size=int(rng.integers(1, 3)), replace=False):
        leaf = place([(0, 2.2 * h), (side * 0.45 * R, 1.0 * h), (side * 0.55 * R, 0.35 * h),
                      (side * 0.25 * R, 1.1 * h), (0.05 * side * R, 2.4 * h)])
        _polygon(draw, leaf, _jitter(_LEAF, rng))
    # The cup: rounded bottom, straight-ish sides, three pointed tips.
    t = np.linspace(0, math.pi, 9)
    bowl = [(w * math.cos(a), 0.5 * h * math.sin(a) * 0.9 + 0.05 * h) for a in t]  # right → left, lower half
    top = [(-w * 1.02, -0.2 * h), (-0.9 * w, -0.55 * h), (-0.45 * w, -0.2 * h), (0.0, -0.6 * h),
           (0.45 * w, -0.2 * h), (0.9 * w, -0.55 * h), (w * 1.02, -0.2 * h)]
    cup = place(bowl + top)
    _polygon(draw, cup, petal, _shade(petal, 0.6), max(1, int(0.05 * R)))
    # The front petal, slightly lighter, with dark edges to show the layering.
    front = place([(-0.5 * w, 0.35 * h), (-0.55 * w, -0.1 * h), (0.0, -0.6 * h), (0.55 * w, -0.1 * h),
                   (0.5 * w, 0.35 * h), (0.0, 0.5 * h)])
    _polygon(draw, front, _shade(petal, 1.08), _shade(petal, 0.6), max(1, int(0.04 * R)))


# ----------------------------------------------------------------------------- one image

def _choice(rng: np.random.Generator, probs: dict) -> str:
    names = list(probs)
    return names[int(rng.choice(len(names), p=np.asarray(list(probs.values()))))]


def caption(attributes: dict) -> str:
    """English caption built from the attributes, e.g. "a small pink tulip on dark grass"."""
    a = attributes
    text = f"a {a['size']} {a['petal_colour']} {a['class']}"
    if a["centre_colour"] not in ("none", a["petal_colour"]):
        text += f" with a {a['centre_colour']} centre"
    return f"{text} {_BACKGROUND_PHRASE[a['background']]}"


def draw_flower(label: int, image_size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Draw one flower of class ``CLASSES[label]``: uint8 image (H × W × 3) and its attributes."""
    name = CLASSES[label]
    S = SUPERSAMPLE * image_size
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    bg, bg_mean = _background(background, image_size, rng)
    canvas = Image.fromarray(bg).resize((S, S), Image.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    if background == "sky":
        _clouds(draw, S, rng)

    size = SIZES[int(rng.integers(3))]
    R = rng.uniform(*_SIZE_RADIUS[size]) * S
    petal_name = _choice(rng, _CLASS_PETALS[name])
    petal = _jitter(_PETAL_RGB[petal_name], rng)
    if name == "daisy" and petal_name == "pink":  # daisies are only pink-tinged
        petal = _mix(petal, _PETAL_RGB["white"], 0.3)
    phi = rng.uniform(0, 2 * math.pi)

    if name == "tulip":
        centre_name = "none"
        cx = rng.uniform(0.3, 0.7) * S
        cy = rng.uniform(0.25 * S + 0.5 * R, 0.75 * S - 0.6 * R)
        _tulip(draw, cx, cy, R, rng.uniform(-0.35, 0.35), petal, rng, S)
    else:
        margin = 0.7 * R
        cx, cy = rng.uniform(margin, S - margin), rng.uniform(margin, S - margin)
        seed_head = name == "dandelion" and petal_name == "white"
        if name == "daisy" or (name == "dandelion" and not seed_head):
            centre_name = "yellow"
        elif name == "rose":
            centre_name = petal_name
        elif name == "sunflower":
            centre_name = "brown" if rng.uniform() < 0.5 else "dark brown"
        else:
            centre_name = "brown"
        centre = _jitter(_CENTRE_RGB.get(centre_name, (0, 0, 0)), rng, (0.95, 1.05), 5)
        if name != "rose":
            _stem_and_leaf(draw, cx, cy, R, S, rng)
        if name == "daisy":
            _daisy(draw, cx, cy, R, phi, petal, centre, rng)
        elif name == "dandelion":
            _dandelion(draw, cx, cy, R, phi, petal, centre, rng, seed_head, bg_mean)
        elif name == "rose":
            _rose(draw, cx, cy, R, phi, petal, rng)
        else:
            _sunflower(draw, cx, cy, R, phi, petal, centre, rng)

    image = np.asarray(canvas.reduce(SUPERSAMPLE))
    attributes = {"class": name, "petal_colour": petal_name, "centre_colour": centre_name,
                  "size": size, "background": background}
    return image, attributes


_SPLIT_CODE = {"train": 0, "test": 1}


def generate(split: str, image_size: int, n: int, seed: int, progress: bool = True):
    """Draw ``n`` images of ``split``: uint8 (n, H, W, 3), int64 labels (n,), list of attribute dicts.

    Image i uses its own generator seeded by (seed, split, i) and has label i mod 5 (balanced classes),
    so a smaller ``n`` gives a prefix of a larger one.
    """
    from tqdm.auto import tqdm

    images = np.empty((n, image_size, image_size, 3), np.uint8)
    labels = np.arange(n, dtype=np.int64) % len(CLASSES)
    attributes = []
    for i in tqdm(range(n), desc=f"drawing {split} flowers", disable=not progress, leave=False):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
        images[i], attrs = draw_flower(int(labels[i]), image_size, rng)
        attributes.append(attrs)
    return images, labels, attributes
