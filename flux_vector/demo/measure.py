"""Does a generated picture show what its prompt names? Colour, shape, outline and background, from pixels.

The shape classifier is deliberately simple and our own: a few image moments of the largest foreground blob (extent
in its box, solidity against its convex hull, where its centroid sits in the box, its second-moment compactness and
box aspect), matched to the nearest prototype measured on the generator's own clean renders. The same code scores
the training renders (where it should be near perfect) and the model's outputs.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from .shapes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Scene, render

FOREGROUND_DISTANCE = 60.0  # RGB distance from the background colour that counts as foreground
# Below this luminance a pixel counts as outline-dark: between the outline's (32) and the darkest fill but black
# (blue 83, brown 85). At 90, blue and brown fills counted as outline and the rendered truth itself showed no outline
# effect on 4 of the 90 held-apart prompts; at 60 it shows one on all 90.
DARK_LUMINANCE = 60.0


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def background_colour(image: Image.Image) -> np.ndarray:
    """The median colour of the image's border (the plain background of every scene)."""
    a = _pixels(image)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return np.median(border, axis=0)


def foreground_mask(image: Image.Image) -> np.ndarray:
    a = _pixels(image)
    return np.linalg.norm(a - background_colour(image), axis=-1) > FOREGROUND_DISTANCE


def dominant_colour(image: Image.Image, *, ignore_dark: bool = False) -> str | None:
    """The palette name most foreground pixels are nearest to (None: no foreground). ``ignore_dark``: skip
    black/outline-dark pixels when other colours make at least a fifth of the foreground (an outlined shape's fill,
    not its outline; a black shape's anti-aliased rim is not a fill)."""
    a = _pixels(image)[foreground_mask(image)]
    if len(a) == 0:
        return None
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)
    nearest = np.linalg.norm(a[:, None, :] - palette[None], axis=-1).argmin(1)
    counts = np.bincount(nearest, minlength=len(names))
    black = names.index("black")
    if ignore_dark and counts.sum() - counts[black] >= 0.2 * counts.sum():
        counts[black] = 0
    return names[int(counts.argmax())]


def shape_features(mask: np.ndarray) -> np.ndarray | None:
    """Moments of the largest blob of ``mask`` (holes filled): extent, solidity, centroid offset in the box (y),
    compactness (second moment / area^2 * 2pi) and box aspect. None when there is no usable blob."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    blob = ndimage.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))
    ys, xs = np.nonzero(blob)
    area = len(ys)
    if area < 12:
        return None
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    try:
        hull = ConvexHull(corners).volume
    except QhullError:
        return None
    cy, cx = ys.mean(), xs.mean()
    second = ((ys - cy) ** 2 + (xs - cx) ** 2).sum() + area / 6.0  # + the pixels' own extent
    return np.array(
        [
            area / (h * w),
            area / hull,
            (cy - (ys.min() + ys.max()) / 2) / h,
            second / area**2 * 2 * np.pi,
            w / h,
        ]
    )


@lru_cache(maxsize=1)
def _prototypes() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-shape mean features over clean renders (every size, three positions, plain and outlined)."""
    rows, names = [], []
    for shape in SHAPES:
        feats = []
        for size in SIZES:
            for position in list(POSITIONS)[:3]:
                for style in (False, True):
                    image = render(Scene(shape, "blue", size, position), style=style)
                    f = shape_features(foreground_mask(image))
                    if f is not None:
                        feats.append(f)
        rows.append(np.mean(feats, 0))
        names.append(shape)
    protos = np.array(rows)
    scale = protos.std(0) + 1e-6
    return protos, scale, names


def classify_shape(image: Image.Image) -> str | None:
    """The nearest prototype shape of the image's largest foreground blob (None: nothing to classify)."""
    f = shape_features(foreground_mask(image))
    if f is None:
        return None
    protos, scale, names = _prototypes()
    return names[int(np.linalg.norm((protos - f) / scale, axis=1).argmin())]


def dark_fraction(image: Image.Image) -> float:
    """The fraction of the image's pixels that are outline-dark (the LoRA's effect, for non-black shapes)."""
    a = _pixels(image)
    luminance = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return float((luminance < DARK_LUMINANCE).mean())


def background_purity(image: Image.Image, background: str) -> float:
    """Of the pixels that are not foreground, the fraction within 12 (RGB distance) of the named background."""
    a = _pixels(image)
    rest = a[~foreground_mask(image)]
    if len(rest) == 0:
        return 0.0
    return float((np.linalg.norm(rest - np.array(BACKGROUNDS[background]), axis=-1) < 12).mean())
