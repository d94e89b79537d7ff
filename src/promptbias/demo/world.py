"""The demo world: procedurally generated images of coloured shapes on patterned backgrounds.

Everything the offline demo needs comes from here, deterministic from one integer seed:

    generate_dataset("demo_shapes", Path("data/raw/demo_shapes"), seed=0)     # real PNG/JPEG files
    #   → data/raw/demo_shapes/images/<class_folder>/<file> + split_demo_shapes.json
    images, captions = caption_corpus(seed=0, n=20_000, image_size=64)        # N×S×S×3 uint8, N captions
    DEMO_DATASETS["demo_textures"].classnames, DEMO_DATASETS["demo_textures"].template

The world: 8 shapes (circle, square, …) × 10 colours, three sizes, random position and rotation, on
one of 11 background patterns (plain, striped, checkered, dotted, wavy, grid, noisy, and the rarer
zigzag, marbled, woven, cracked) in two muted tones, with clutter (thin grey strokes and specks) and
pixel noise. The caption corpus describes the main object and the background ("a photo of a small red
circle on a striped background."); 30% of the corpus are background-only images ("a photo of a dotted
background."), most of them in saturated tones. The four rare textures occur a quarter as often.

Three datasets are cut from the world, in the CoOp on-disk layout (``split_<name>.json`` =
``{"train": [[rel_path, label, classname], ...], "val": [...], "test": [...]}``):

* ``demo_shapes`` — 10 colour×shape classes ("red circle", …; one colour each) with informative names,
  drawn like the corpus plus a dataset style (small distractor shapes, an outline, a strong warm colour
  cast). Zero-shot works, but the cast (``SHAPES_CAST_RANGE``) costs it 7–15 points (bench/RESULTS.md):
  a shift shared by every image, which tuning learns to undo (the features still separate the classes).
* ``demo_textures`` — 10 full-frame texture classes under a domain shift
  (saturated tones, other scales, blur, no object), each class in its own palette (as land-cover classes
  have colours) that the class names do not describe; four names are rare in the corpus. Zero-shot is
  above chance but low. Its names carry little information, and on the 4-layer demo CLIP a tuning
  shared by all classes gains little here (bench/RESULTS.md measures why); it is not in the default sweep.
* ``demo_aerial`` — the EuroSAT analogue of the default demo: 10 colour classes ("red", …) seen as aerial
  tiles (4–8 small things of the class colour strewn over muted ground) through haze and a warm filter.
  The class words are known, from another view of the world — as CLIP knows "forest" from ground photos,
  not satellite tiles — so zero-shot is low but well above chance, and the strong shift that every image
  shares is what prompt and bias tuning learn (large gains, as on EuroSAT).

Every image draws from its own ``numpy.random.Generator`` seeded by (seed, dataset, split, index), so
files are byte-identical for the same seed whatever the order of generation. Image files are 72–96 px
with varied aspect ratios so that the pipeline's resize + centre crop is exercised; the main object of
a demo_shapes image always lies inside the central square.
"""

from __future__ import annotations

import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from promptbias.io import atomic_path

# ---------------------------------------------------------------------------------------------- vocab
COLORS: dict[str, tuple[float, float, float]] = {  # name -> HSV centre (h in [0,1), s, v)
    "red": (0.00, 0.85, 0.85),
    "orange": (0.08, 0.90, 0.95),
    "yellow": (0.15, 0.85, 0.95),
    "green": (0.33, 0.75, 0.70),
    "blue": (0.62, 0.80, 0.85),
    "purple": (0.78, 0.65, 0.70),
    "pink": (0.92, 0.45, 0.95),
    "cyan": (0.50, 0.80, 0.85),
    "brown": (0.07, 0.75, 0.45),
    "black": (0.00, 0.00, 0.08),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "hexagon", "diamond", "ring")
SIZES: dict[str, tuple[float, float]] = {  # name -> radius range as a fraction of the image side
    "small": (0.11, 0.16),
    "medium": (0.17, 0.23),
    "large": (0.24, 0.31),
}
BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "checkered", "dotted", "wavy", "grid", "noisy")
BACKGROUND_ONLY_SHARE = 0.3  # of the caption corpus: images of a bare background
VIVID_SHARE = 0.8  # of the background-only images: saturated tones (objects always sit on muted ones)
RARE_TEXTURES: tuple[str, ...] = ("zigzag", "marbled", "woven", "cracked")  # a quarter as frequent
CORPUS_BACKGROUNDS: tuple[str, ...] = (*BACKGROUNDS, *RARE_TEXTURES)  # patterns drawn in the corpus
_BACKGROUND_WEIGHTS = np.array([1.0] * len(BACKGROUNDS) + [0.25] * len(RARE_TEXTURES))
_BACKGROUND_WEIGHTS /= _BACKGROUND_WEIGHTS.sum()


@dataclass(frozen=True)
class DemoDataset:
    """One dataset of the demo world: its classes (label order), folders, template and split sizes."""

    name: str
    folders: tuple[str, ...]  # class folder names; '_' → ' ' gives the class name
    template: str  # zero-shot template
    n_train: int  # images per class in each split
    n_val: int
    n_test: int
    ext: str  # "png" | "jpg"

    @property
    def classnames(self) -> tuple[str, ...]:
        return tuple(f.replace("_", " ") for f in self.folders)


DEMO_DATASETS: dict[str, DemoDataset] = {
    "demo_shapes": DemoDataset(
        name="demo_shapes",
        folders=(
            "red_circle",
            "orange_hexagon",
            "yellow_triangle",
            "green_star",
            "cyan_cross",
            "blue_square",
            "purple_diamond",
            "pink_ring",
            "brown_circle",
            "black_triangle",
        ),
        template="a photo of a {}.",
        n_train=32,
        n_val=8,
        n_test=40,
        ext="png",
    ),
    "demo_textures": DemoDataset(
        name="demo_textures",
        folders=("striped", "checkered", "dotted", "wavy", "grid", "noisy", *RARE_TEXTURES),
        template="a photo of a {} background.",
        n_train=32,
        n_val=8,
        n_test=40,
        ext="jpg",
    ),
    "demo_aerial": DemoDataset(
        name="demo_aerial",
        folders=tuple(COLORS),
        template="a photo of a {}.",
        n_train=32,
        n_val=8,
        n_test=40,
        ext="jpg",
    ),
}

_SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------------------ helpers
def _rng(*keys: int | str) -> np.random.Generator:
    """A generator seeded by a tuple of ints/strings (strings hashed with crc32: stable across runs)."""
    ints = [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(ints))


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour → float RGB in [0, 255] (shape 3)."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float64) * 255.0


def _object_color(rng: np.random.Generator, name: str) -> np.ndarray:
    h, s, v = COLORS[name]
    return _hsv_to_rgb(
        (h + rng.normal(0, 0.015)) % 1.0,
        float(np.clip(s + rng.normal(0, 0.06), 0.3, 1.0)),
        float(np.clip(v + rng.normal(0, 0.06), 0.35, 1.0)),
    )


def _muted_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two low-saturation background tones that differ in brightness."""
    h = rng.random()
    v0 = rng.uniform(0.25, 0.55)
    v1 = min(1.0, v0 + rng.uniform(0.25, 0.45))
    return _hsv_to_rgb(h, rng.uniform(0.0, 0.2), v0), _hsv_to_rgb(
        (h + rng.normal(0, 0.05)) % 1, rng.uniform(0, 0.2), v1
    )


def _vivid_pair(rng: np.random.Generator, hue: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Two saturated tones (the texture domain shift); ``hue`` fixes the first tone's hue (± jitter)."""
    h = rng.random() if hue is None else (hue + rng.normal(0, 0.03)) % 1.0
    return (
        _hsv_to_rgb(h, rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.6)),
        _hsv_to_rgb((h + rng.uniform(0.15, 0.5)) % 1, rng.uniform(0.4, 0.9), rng.uniform(0.7, 1.0)),
    )


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Value noise: a cells×cells random grid upsampled bilinearly to H×W, in [0, 1]."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    img = Image.fromarray(grid).resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.float64) / 255.0  # H×W


def _pattern(rng: np.random.Generator, kind: str, h: int, w: int, scale: float) -> np.ndarray:
    """A texture mask in [0, 1] (H×W): 0 → first tone, 1 → second tone. ``scale`` multiplies periods."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)  # H×W each
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta) + rng.uniform(0, 100)
    v = -xx * np.sin(theta) + yy * np.cos(theta) + rng.uniform(0, 100)
    p = min(h, w) * rng.uniform(0.16, 0.3) * scale  # period in pixels (relative to the image side)
    if kind == "plain":
        return np.zeros((h, w))
    if kind == "striped":
        return (np.sin(2 * np.pi * u / p) > 0).astype(np.float64)
    if kind == "checkered":
        return ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float64)
    if kind == "dotted":
        du, dv = (u % p) - p / 2, (v % p) - p / 2
        return (du**2 + dv**2 < (p * rng.uniform(0.18, 0.3)) ** 2).astype(np.float64)
    if kind == "grid":
        lw = max(1.0, p * rng.uniform(0.1, 0.18))
        return (np.minimum(u % p, v % p) < lw).astype(np.float64)
    if kind == "wavy":
        amp, pv = p * rng.uniform(0.3, 0.6), p * rng.uniform(1.5, 3.0)
        return (np.sin(2 * np.pi * (u + amp * np.sin(2 * np.pi * v / pv)) / p) > 0).astype(np.float64)
    if kind == "noisy":
        n = _smooth_noise(rng, h, w, int(rng.integers(6, 12)))
        return (n > 0.5).astype(np.float64)
    if kind == "zigzag":
        amp, pv = p * rng.uniform(0.4, 0.8), p * rng.uniform(1.0, 2.0)
        tri = 2 * np.abs((v / pv) % 1 - 0.5)  # triangle wave in [0, 1]
        return (np.sin(2 * np.pi * (u + amp * tri) / p) > 0).astype(np.float64)
    if kind == "marbled":
        turb = _smooth_noise(rng, h, w, 5) + 0.5 * _smooth_noise(rng, h, w, 11)
        return 0.5 + 0.5 * np.sin(2 * np.pi * (u / (2 * p) + 2.5 * turb))
    if kind == "woven":
        cell = np.floor(u / p) + np.floor(v / p)
        fine = p / 3
        along_u = np.sin(2 * np.pi * v / fine) > 0
        along_v = np.sin(2 * np.pi * u / fine) > 0
        return np.where(cell % 2 == 0, along_u, along_v).astype(np.float64)
    if kind == "cracked":
        n_pts = int(rng.integers(6, 14))
        pts = rng.random((n_pts, 2)) * np.array([h, w])  # P×2
        d = np.sqrt((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2)  # H×W×P
        d.sort(axis=-1)
        return (d[..., 1] - d[..., 0] < rng.uniform(1.0, 2.2)).astype(np.float64)
    raise ValueError(f"unknown pattern {kind!r}")


def _background(
    rng: np.random.Generator, kind: str, h: int, w: int, vivid: bool = False, hue: float | None = None
) -> np.ndarray:
    """H×W×3 float RGB in [0, 255]."""
    c0, c1 = _vivid_pair(rng, hue) if vivid else _muted_pair(rng)
    mask = _pattern(rng, kind, h, w, scale=rng.uniform(0.7, 1.3) if vivid else 1.0)[..., None]  # H×W×1
    return c0 * (1 - mask) + c1 * mask


def _shape_polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def ring(n: int, radius: np.ndarray | float, offset: float = 0.0) -> list[tuple[float, float]]:
        a = rot + offset + np.arange(n) * 2 * np.pi / n
        rr = np.broadcast_to(radius, a.shape)
        return list(zip((cx + rr * np.cos(a)).tolist(), (cy + rr * np.sin(a)).tolist(), strict=True))

    if shape == "square":
        return ring(4, r * 0.95, np.pi / 4)
    if shape == "diamond":
        a = rot + np.arange(4) * np.pi / 2
        rr = np.array([r, 0.6 * r, r, 0.6 * r])
        return list(zip((cx + rr * np.cos(a)).tolist(), (cy + rr * np.sin(a)).tolist(), strict=True))
    if shape == "triangle":
        return ring(3, r * 1.05, -np.pi / 2)
    if shape == "hexagon":
        return ring(6, r)
    if shape == "star":
        return ring(10, np.tile([r * 1.1, r * 0.45], 5), -np.pi / 2)
    if shape == "cross":
        t = 0.32 * r
        pts = np.array(
            [
                (-t, -r),
                (t, -r),
                (t, -t),
                (r, -t),
                (r, t),
                (t, t),
                (t, r),
                (-t, r),
                (-t, t),
                (-r, t),
                (-r, -t),
                (-t, -t),
            ]
        )
        c, s = np.cos(rot), np.sin(rot)
        xy = pts @ np.array([[c, s], [-s, c]])
        return [(cx + x, cy + y) for x, y in xy.tolist()]
    raise ValueError(shape)


def _draw_shape(
    img: Image.Image,
    shape: str,
    cx: float,
    cy: float,
    r: float,
    rot: float,
    fill: tuple[int, int, int],
    outline: int,
) -> None:
    draw = ImageDraw.Draw(img)
    edge = (20, 20, 20) if outline else None
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=edge, width=outline or 1)
    elif shape == "ring":
        width = max(2, round(float(r) * 0.38))
        if outline:
            draw.ellipse([cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1], outline=edge, width=width + 2)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=width)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r, rot), fill=fill, outline=edge, width=outline or 1)


def _clutter(rng: np.random.Generator, img: Image.Image, n: int) -> None:
    """Thin grey strokes and specks (no colour words describe them)."""
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(n):
        g = int(rng.integers(60, 200))
        x0, y0 = rng.random() * w, rng.random() * h
        if rng.random() < 0.5:
            x1, y1 = x0 + rng.normal(0, w / 6), y0 + rng.normal(0, h / 6)
            draw.line([x0, y0, x1, y1], fill=(g, g, g), width=1)
        else:
            s = rng.uniform(0.8, 2.0)
            draw.ellipse([x0 - s, y0 - s, x0 + s, y0 + s], fill=(g, g, g))


def _finish(rng: np.random.Generator, arr: np.ndarray, noise: float) -> np.ndarray:
    """Add Gaussian pixel noise, clip, → uint8 H×W×3."""
    arr = arr + rng.normal(0, noise, arr.shape)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ scenes
@dataclass(frozen=True)
class Scene:
    """What one object image shows (used to render it and to caption it)."""

    color: str
    shape: str
    size: str
    background: str


def render_scene(
    rng: np.random.Generator,
    scene: Scene,
    width: int,
    height: int,
    distractors: int = 0,
    outline: int = 0,
    cast: float = 0.0,
) -> np.ndarray:
    """Draw one scene → uint8 H×W×3. The object lies inside the central min(W,H) square."""
    bg = _background(rng, scene.background, height, width)  # H×W×3
    img = Image.fromarray(_finish(rng, bg, 0.0))
    side = min(width, height)
    _clutter(rng, img, int(rng.integers(0, 5)))
    for _ in range(distractors):  # small shapes of other colours, away from the centre
        dshape = SHAPES[int(rng.integers(len(SHAPES)))]
        dcolor = list(COLORS)[int(rng.integers(len(COLORS)))]
        dr = side * rng.uniform(0.05, 0.08)
        _draw_shape(
            img,
            dshape,
            rng.uniform(dr, width - dr),
            rng.uniform(dr, height - dr),
            dr,
            rng.uniform(0, 2 * np.pi),
            tuple(int(c) for c in _object_color(rng, dcolor)),
            0,
        )
    r = side * rng.uniform(*SIZES[scene.size])
    margin = r * 1.1
    x_off, y_off = (width - side) / 2, (height - side) / 2
    cx = x_off + rng.uniform(margin, side - margin)
    cy = y_off + rng.uniform(margin, side - margin)
    fill = tuple(int(c) for c in _object_color(rng, scene.color))
    _draw_shape(img, scene.shape, cx, cy, r, rng.uniform(0, 2 * np.pi), fill, outline)
    arr = np.asarray(img, dtype=np.float64)
    if cast:
        arr = arr * (1 - cast) + cast * np.array([255.0, 230.0, 170.0])  # a warm colour cast
    return _finish(rng, arr, rng.uniform(0, 8))


def render_texture(
    rng: np.random.Generator, kind: str, width: int, height: int, hue: float | None = None
) -> np.ndarray:
    """A full-frame texture in the shifted domain (vivid tones, other scales, blur, noise) → uint8 H×W×3.
    ``hue`` is the class palette: the base tone's hue (jittered), as land-cover classes have colours."""
    arr = _background(rng, kind, height, width, vivid=True, hue=hue)
    img = Image.fromarray(_finish(rng, arr, 0.0))
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    return _finish(rng, np.asarray(img, dtype=np.float64), rng.uniform(3, 12))


SHAPES_CAST_RANGE = (0.45, 0.6)  # demo_shapes' warm cast: blended in at this strength (a shared shift that
#   halves zero-shot while the features still separate the classes: bench/RESULTS.md, issue 15)
AERIAL_HAZE = np.array([150.0, 170.0, 200.0])  # the aerial domain's blue-grey haze …
AERIAL_HAZE_RANGE = (0.25, 0.45)  # … blended in at this strength (a shared additive shift)
AERIAL_FILTER = np.array([1.0, 0.8, 0.5])  # … and a warm per-channel filter (a shared linear shift)


def render_aerial(rng: np.random.Generator, color: str, width: int, height: int) -> np.ndarray:
    """An aerial tile → uint8 H×W×3: 4–8 small things of ``color`` strewn over muted ground, seen
    through haze and a warm filter (a strong shift shared by every image, as EuroSAT's satellite view)."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    img = Image.fromarray(_finish(rng, _background(rng, kind, height, width), 0.0))
    side = min(width, height)
    for _ in range(int(rng.integers(4, 9))):
        r = side * rng.uniform(0.06, 0.11)
        fill = tuple(int(c) for c in _object_color(rng, color))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
        _draw_shape(img, shape, cx, cy, r, rng.uniform(0, 2 * np.pi), fill, 0)
    haze = rng.uniform(*AERIAL_HAZE_RANGE)
    arr = (np.asarray(img, dtype=np.float64) * (1 - haze) + haze * AERIAL_HAZE) * AERIAL_FILTER  # H×W×3
    if rng.random() < 0.5:
        img = Image.fromarray(_finish(rng, arr, 0.0)).filter(
            ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0)))
        )
        arr = np.asarray(img, dtype=np.float64)
    return _finish(rng, arr, rng.uniform(2, 8))


_OBJECT_CAPTIONS = (  # 3 of 4 name the background too, so the image tower must learn textures
    "a photo of a {size} {color} {shape} on a {bg} background.",
    "a photo of a {color} {shape} on a {bg} background.",
    "a {color} {shape} on a {bg} background.",
    "a photo of a {bg} background with a {color} {shape}.",
    "a {size} {color} {shape} on a {bg} background.",
    "a {bg} background with a {size} {color} {shape}.",
    "a photo of a {color} {shape}.",
    "a {size} {color} {shape}.",
)
_BACKGROUND_CAPTIONS = (
    "a photo of a {bg} background.",
    "a {bg} background.",
    "a photo of a {bg}.",
)


def caption_for(rng: np.random.Generator, scene: Scene | None, background: str) -> str:
    """A caption of an object scene, or of a background-only image when ``scene`` is None."""
    if scene is None:
        return _BACKGROUND_CAPTIONS[int(rng.integers(len(_BACKGROUND_CAPTIONS)))].format(bg=background)
    tpl = _OBJECT_CAPTIONS[int(rng.integers(len(_OBJECT_CAPTIONS)))]
    return tpl.format(size=scene.size, color=scene.color, shape=scene.shape, bg=scene.background)


def caption_corpus(seed: int, n: int, image_size: int) -> tuple[np.ndarray, list[str]]:
    """N image–caption pairs of the world: (uint8 N×S×S×3, N captions). Deterministic from ``seed``."""
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)  # N×S×S×3
    captions: list[str] = []
    colors, sizes = list(COLORS), list(SIZES)
    for i in range(n):
        rng = _rng(seed, "corpus", i)
        bg = CORPUS_BACKGROUNDS[int(rng.choice(len(CORPUS_BACKGROUNDS), p=_BACKGROUND_WEIGHTS))]
        if rng.random() < BACKGROUND_ONLY_SHARE:
            vivid = bool(rng.random() < VIVID_SHARE)
            images[i] = _finish(rng, _background(rng, bg, image_size, image_size, vivid), rng.uniform(0, 8))
            captions.append(caption_for(rng, None, bg))
            continue
        scene = Scene(
            color=colors[int(rng.integers(len(colors)))],
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            size=sizes[int(rng.integers(len(sizes)))],
            background=bg,
        )
        images[i] = render_scene(rng, scene, image_size, image_size)
        captions.append(caption_for(rng, scene, bg))
    return images, captions


def background_only(captions: list[str]) -> np.ndarray:
    """Which corpus captions describe a bare background (no colour word: no object). → bool N."""
    colors = set(COLORS)
    return np.array([not colors.intersection(c.rstrip(".").split()) for c in captions], dtype=bool)


# ---------------------------------------------------------------------------------------- datasets
def _dataset_image(name: str, folder: str, rng: np.random.Generator) -> np.ndarray:
    width, height = int(rng.integers(72, 97)), int(rng.integers(72, 97))
    if name == "demo_shapes":
        color, shape = folder.split("_", 1)
        scene = Scene(
            color=color,
            shape=shape,
            size=list(SIZES)[int(rng.integers(len(SIZES)))],
            background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
        )
        return render_scene(
            rng,
            scene,
            width,
            height,
            distractors=int(rng.integers(1, 4)),
            outline=1,
            cast=rng.uniform(*SHAPES_CAST_RANGE),
        )
    if name == "demo_textures":
        palette = DEMO_DATASETS[name].folders.index(folder) / len(DEMO_DATASETS[name].folders)
        return render_texture(rng, folder, width, height, hue=palette)
    if name == "demo_aerial":
        return render_aerial(rng, folder, width, height)
    raise KeyError(name)


def _encode(arr: np.ndarray, ext: str) -> bytes:
    buf = io.BytesIO()
    if ext == "png":
        Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=6)
    else:
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def generate_dataset(
    name: str, target_dir: Path, seed: int, *, per_class: tuple[int, int, int] | None = None
) -> None:
    """Write dataset ``name`` of the world for ``seed`` into ``target_dir`` (images + split json).

    Layout: ``target_dir/images/<class_folder>/<class_folder>_<split>_<i>.<ext>`` and
    ``target_dir/split_<name>.json`` (written last, atomically). Same seed → identical bytes.
    ``per_class`` = (train, val, test) images per class overrides the dataset's sizes (tests use
    tiny worlds); image ``i`` of a split is the same whatever the sizes.
    """
    if name not in DEMO_DATASETS:
        raise KeyError(f"unknown demo dataset {name!r} (known: {', '.join(DEMO_DATASETS)})")
    spec = DEMO_DATASETS[name]
    target_dir = Path(target_dir)
    split: dict[str, list[list[object]]] = {s: [] for s in _SPLITS}
    sizes = per_class or (spec.n_train, spec.n_val, spec.n_test)
    counts = dict(zip(_SPLITS, sizes, strict=True))
    for label, folder in enumerate(spec.folders):
        (target_dir / "images" / folder).mkdir(parents=True, exist_ok=True)
        for split_name in _SPLITS:
            for i in range(counts[split_name]):
                rng = _rng(seed, name, folder, split_name, i)
                rel = f"images/{folder}/{folder}_{split_name}_{i:04d}.{spec.ext}"
                # plain writes: the split json, written last and atomically, marks the folder complete
                (target_dir / rel).write_bytes(_encode(_dataset_image(name, folder, rng), spec.ext))
                split[split_name].append([rel, label, spec.classnames[label]])
    with atomic_path(target_dir / f"split_{name}.json") as tmp:
        tmp.write_text(json.dumps(split, indent=1) + "\n")
