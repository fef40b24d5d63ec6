"""Raster to SVG for generated flat art: ``image_to_svg(image, detail="medium", transparent_background=False)``.

A generated "flat" image is not flat: every edge is anti-aliased, the fills carry faint gradients and noise. Traced
as it is, each blend colour and noise speck becomes a path (about 1 MB per 1024x1024 icon with vtracer's defaults).
So the image is first made truly flat, then traced:

1. **Palette, sized from the image.** Candidate colours come from an octree quantization of a 4x box-downsampled
   copy (the downsample averages the noise away). They are grouped coarse to fine, as a tree: candidates within
   ``merge`` of low detail (24) of a more frequent one form a group, each group splits into subgroups at medium's
   (12), each of those at high's (8). A group is a fill when it has an interior: pixels whose 3x3 neighbourhood lies
   all in the group, at least ``min_interior`` of the image; colours that exist only as thin bands are the
   anti-aliasing between two fills and are dropped. Interiors are counted on each level's own labels (each pixel to
   the nearest group colour of that level). From the top: a fill group is split into its subgroups that are fills
   themselves, down to the requested detail; a fill none of whose subgroups is one (a thin dark outline whose noisy
   pixels spread over several close shades, none with an interior of its own) stays one colour, unless it is no fill
   at low detail either and its colour lies within ``_BLUR_DISTANCE`` of the line between two of low detail's fills:
   then it is the blur between them, not an outline, and is dropped. So a colour kept at one detail is kept at every
   higher one (the palette only grows with ``detail``), and an outline is never lost by splitting it finer. What is
   left is the number of colours this image has.
2. **Labels.** Each pixel takes the nearest palette colour (exactly, through a 6-bit-per-channel lookup table), so
   an anti-aliased edge pixel goes to the side it is closer to: the edge lands where the renderer put it.
3. **Edge-preserving denoise** in label space: a 3x3 majority vote on the pixels that have a differently labelled
   neighbour. It removes single-pixel noise flips and jagged steps but cannot move a straight edge (a colour-space
   guided filter was measured: +0.1..0.4 dB for +220 ms per image; not worth it).
4. **Colours**: each fill's colour is the per-channel median of its pixels (unbiased by noise and by clipping at 0
   and 255, unlike the mean).
5. **Trace** with vtracer (stacked shapes; polygon mode, which on 1024-pixel flat art fits edges better and smaller
   than its splines) at full precision on the flat image; its speckle filter merges patches under ``speckle`` pixels
   on a side into their surroundings.
6. **Build the SVG** from the traced paths only: each path's outline, fill colour and offset are checked against
   strict patterns and written into a document of our own, so the result holds nothing but ``<path>`` elements with
   a ``d``, a ``#rrggbb`` fill and a numeric ``translate``: no script, handler, link, style or foreign content can
   appear, whatever the tracer emitted.

``transparent_background`` drops the background: the most common border colour's regions that touch the border
(pixels transparent in the input image are transparent in the SVG too). Transparency goes through vtracer's keying,
which only keys when a noticeable share of the image is transparent: a few small transparent islands in an input
image can come out filled.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .request import MAX_IMAGE_PIXELS, parse_vector_options

# The largest image traced: the same limit as the server's largest image (request.MAX_IMAGE_PIXELS). Tracing a
# 12000x12000 image took 6.8 GB (about 47 bytes a pixel) and aborted inside vtracer (issue 28).
MAX_VECTORIZE_PIXELS = MAX_IMAGE_PIXELS


class VectorizeError(RuntimeError):
    """The tracer produced something this module does not accept (it is never passed through)."""


class ImageTooLarge(ValueError):
    """An image with more pixels than ``MAX_VECTORIZE_PIXELS``; checked before a pixel is decoded or traced."""


def check_vectorize_size(width: int, height: int, *, what: str = "the image") -> None:
    """``ImageTooLarge`` when a ``width`` x ``height`` image is over ``MAX_VECTORIZE_PIXELS``."""
    limit = MAX_VECTORIZE_PIXELS
    if width * height > limit:
        raise ImageTooLarge(
            f"{what} is {width}x{height} = {width * height:,} pixels, over the {limit:,} pixels "
            "that can be traced to SVG; scale it down first"
        )


@dataclass(frozen=True)
class _Settings:
    merge: float  # RGB distance under which two candidate colours are one
    min_interior: float  # fraction of the image a colour must fill with interior pixels to be kept
    speckle: int  # vtracer filter_speckle: patches smaller than this many pixels on a side are merged away


# Tuned on the benchmark set (benchmarks/bench_vectorize.py). Coarse to fine: every setting keeps at least what the
# one before keeps (smaller merge, interior and speckle), and the palette tree's levels are the merges in this order.
_DETAIL = {
    "low": _Settings(merge=24.0, min_interior=2e-4, speckle=8),
    "medium": _Settings(merge=12.0, min_interior=5e-5, speckle=4),
    "high": _Settings(merge=8.0, min_interior=1e-5, speckle=2),
}
_LEVELS = tuple(_DETAIL)
_BLUR_DISTANCE = 8.0  # RGB distance from the line between two fills under which a thin band is their blur
_CANDIDATES = 32
_LUT_BITS = 6


def image_to_svg(image: Image.Image, **options: Any) -> str:
    """The image as SVG text (width, height and viewBox are the image's size). Options: ``detail`` ("low",
    "medium", "high"), ``transparent_background`` (bool). An invalid option raises ``RequestError``."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, not {type(image).__name__}")
    opts = parse_vector_options(options)
    check_vectorize_size(*image.size)
    settings = _DETAIL[opts["detail"]]
    rgb, opaque = _flatten(image)
    palette = _palette(rgb, opts["detail"])
    labels, same = _labels(rgb, palette)
    labels = _majority(labels, same, len(palette))
    palette = _median_colours(rgb, labels, palette)
    transparent = None if opaque is None else ~opaque
    if opts["transparent_background"]:
        background = _border_background(labels)
        transparent = background if transparent is None else transparent | background
    traced = _trace(palette[labels], transparent, settings)
    return _build_svg(traced, image.width, image.height)


def fill_palette(image: Image.Image, **options: Any) -> np.ndarray:
    """The fill colours ``image_to_svg`` traces the image with at these options (uint8 RGB rows), before each is
    refined to its pixels' median: its size grows with ``detail``, and every colour of a lower detail has one within
    24 (low's merge) at every higher detail."""
    opts = parse_vector_options(options)
    return _palette(_flatten(image)[0], opts["detail"])


# ----------------------------------------------------------------------------------------------- steps
def _flatten(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB pixels (transparent ones composited onto white) and the opaque mask (None: no transparency)."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return np.asarray(image.convert("RGB")), None
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    opaque = np.asarray(rgba.getchannel("A")) >= 128
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB")), (None if opaque.all() else opaque)


def _candidates(rgb: np.ndarray) -> np.ndarray:
    """Up to ``_CANDIDATES`` colours of the image (octree on a box-downsampled copy), most frequent first."""
    h, w = rgb.shape[:2]
    image = Image.fromarray(rgb)
    factor = max(1, min(4, min(h, w) // 64))
    small = image.resize((max(1, w // factor), max(1, h // factor)), Image.Resampling.BOX)
    quantized = small.quantize(_CANDIDATES, method=Image.Quantize.FASTOCTREE)
    counts = np.bincount(np.asarray(quantized).ravel(), minlength=_CANDIDATES)
    palette = quantized.getpalette() or []  # a quantized image always has one (None only types the API)
    colours = np.array(palette[: 3 * len(counts)], dtype=np.float32).reshape(-1, 3)[: len(counts)]
    order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    candidates = np.rint(colours[order]).astype(np.uint8)
    return candidates


@dataclass
class _Group:
    """Candidates (indices, most frequent first: the first is the group's colour) within one merge radius."""

    members: list[int]
    children: list[_Group]
    interior: int = 0


def _split(members: list[int], colours: np.ndarray, radius: float) -> list[_Group]:
    """Greedy grouping, most frequent first: a candidate starts a group unless an earlier group's colour lies within
    ``radius``; then it joins the nearest such group."""
    groups: list[_Group] = []
    for index in members:
        distances = [float(np.linalg.norm(colours[index] - colours[g.members[0]])) for g in groups]
        near = [d for d in distances if d < radius]
        if near:
            groups[distances.index(min(near))].members.append(index)
        else:
            groups.append(_Group([index], []))
    return groups


def _palette(rgb: np.ndarray, detail: str) -> np.ndarray:
    """The fill colours at ``detail`` (module docstring, step 1): the candidates grouped as a tree, one level per
    detail up to this one (each level's groups within its ``merge``), each group's interior measured on its level's
    labels; from the top, kept groups split into their kept subgroups."""
    candidates = _candidates(rgb)
    colours = candidates.astype(np.float32)
    depth = _LEVELS.index(detail)
    pixels = rgb.shape[0] * rgb.shape[1]
    threshold = _DETAIL[detail].min_interior * pixels
    roots = _split(list(range(len(candidates))), colours, _DETAIL[_LEVELS[0]].merge)
    level = roots
    for d in range(depth + 1):
        if d > 0:
            for group in level:
                group.children = _split(group.members, colours, _DETAIL[_LEVELS[d]].merge)
            level = [child for group in level for child in group.children]
        # each pixel to the nearest group colour of this level (at low detail: the labels a flat palette gives)
        grouped, same = _labels(rgb, candidates[[group.members[0] for group in level]])
        interior = np.bincount(grouped[same], minlength=len(level))
        if d == 0:
            root_pixels = np.bincount(grouped.ravel(), minlength=len(level))
        for group, count in zip(level, interior, strict=True):
            group.interior = int(count)

    def fills(group: _Group) -> list[int]:
        kept = [child for child in group.children if child.interior >= threshold]
        return [index for child in kept for index in fills(child)] if kept else [group.members[0]]

    # A group kept whole below low detail, without a fill among its subgroups, is a thin band: an outline, or the
    # blur between two fills. The blur lies on the line between them (the fills at low detail, the same at every
    # detail, so that the choice never changes with it): dropped; an outline is no mix of its neighbours: kept.
    low_threshold = _DETAIL[_LEVELS[0]].min_interior * pixels
    main_fills = [colours[group.members[0]] for group in roots if group.interior >= low_threshold]

    def is_blur(group: _Group) -> bool:
        if group.interior >= low_threshold or any(child.interior >= threshold for child in group.children):
            return False
        colour = colours[group.members[0]]
        for i, a in enumerate(main_fills):
            for b in main_fills[i + 1 :]:
                t = float(np.clip(np.dot(colour - a, b - a) / max(float(np.dot(b - a, b - a)), 1e-6), 0.0, 1.0))
                if 0.0 < t < 1.0 and float(np.linalg.norm(a + t * (b - a) - colour)) < _BLUR_DISTANCE:
                    return True
        return False

    kept = [group for group in roots if group.interior >= threshold and not is_blur(group)]
    if not kept:  # pure noise has no interior anywhere: keep the group with the most (or the most pixels)
        most = [group.interior for group in roots] if any(g.interior for g in roots) else list(root_pixels)
        kept = [roots[int(np.argmax(most))]]
    return candidates[[index for group in kept for index in fills(group)]]


def _labels(rgb: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nearest palette index per pixel, and the mask of pixels whose 3x3 neighbours all share their label."""
    shift = 8 - _LUT_BITS
    centres = np.arange(1 << _LUT_BITS, dtype=np.float32) * (1 << shift) + ((1 << shift) - 1) / 2
    grid = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), -1).reshape(-1, 3)
    colours = palette.astype(np.float32)
    lut = ((colours * colours).sum(1)[None, :] - 2 * grid @ colours.T).argmin(1).astype(np.uint8)
    q = rgb.astype(np.uint32) >> shift
    labels = lut[(q[..., 0] << (2 * _LUT_BITS)) | (q[..., 1] << _LUT_BITS) | q[..., 2]]
    return labels, _uniform_neighbourhood(labels)


def _neighbours(labels: np.ndarray) -> list[np.ndarray]:
    h, w = labels.shape
    padded = np.pad(labels, 1, mode="edge")
    return [padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]


def _uniform_neighbourhood(labels: np.ndarray) -> np.ndarray:
    same = np.ones(labels.shape, dtype=bool)
    for view in _neighbours(labels):
        same &= view == labels
    return same


def _majority(labels: np.ndarray, same: np.ndarray, count: int) -> np.ndarray:
    """3x3 majority vote on the pixels next to another label (ties keep the pixel's own label)."""
    ys, xs = np.nonzero(~same)
    if ys.size == 0:
        return labels
    around = np.stack([view[ys, xs] for view in _neighbours(labels)], 1)
    votes = np.stack([(around == i).sum(1) for i in range(count)], 1)
    own = labels[ys, xs]
    winner = np.where(votes[np.arange(ys.size), own] >= votes.max(1), own, votes.argmax(1)).astype(labels.dtype)
    out = labels.copy()
    out[ys, xs] = winner
    return out


def _median_colours(rgb: np.ndarray, labels: np.ndarray, palette: np.ndarray, step: int = 2) -> np.ndarray:
    """Each fill's colour: the per-channel median of (every ``step``-th of) its pixels."""
    sample_labels = labels[::step, ::step].ravel()
    sample = rgb[::step, ::step].reshape(-1, 3)
    order = np.argsort(sample_labels, kind="stable")
    bounds = np.searchsorted(sample_labels[order], np.arange(len(palette) + 1))
    sample = sample[order]
    out = palette.copy()
    for i in range(len(palette)):
        if bounds[i + 1] > bounds[i]:
            out[i] = np.median(sample[bounds[i] : bounds[i + 1]], axis=0)
    return out


def _border_background(labels: np.ndarray) -> np.ndarray:
    """The regions of the most common border label that touch the border."""
    from scipy import ndimage

    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    background = int(np.bincount(border).argmax())
    regions, _ = ndimage.label(labels == background)
    edge_regions = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
    return np.isin(regions, edge_regions[edge_regions > 0])


def _trace(flat: np.ndarray, transparent: np.ndarray | None, settings: _Settings) -> str:
    import vtracer

    buffer = io.BytesIO()
    if transparent is None:
        Image.fromarray(flat).save(buffer, format="BMP")  # uncompressed: the fastest hand-over
        fmt = "bmp"
    else:
        alpha = np.where(transparent, 0, 255).astype(np.uint8)
        Image.fromarray(np.dstack([flat, alpha]), "RGBA").save(buffer, format="PNG", compress_level=1)
        fmt = "png"  # vtracer leaves out the transparent pixels
    return vtracer.convert_raw_image_to_svg(
        buffer.getvalue(),
        img_format=fmt,
        colormode="color",
        hierarchical="stacked",
        mode="polygon",
        filter_speckle=settings.speckle,
        color_precision=8,
        layer_difference=1,
        path_precision=1,
    )


# ----------------------------------------------------------------------------------------------- output
_NUMBER = r"-?\d+(?:\.\d+)?"
_PATH = re.compile(rf'<path d="([^"]*)" fill="(#[0-9A-Fa-f]{{6}})" transform="translate\(({_NUMBER}),({_NUMBER})\)"/>')
_OUTLINE = re.compile(rf"(?:[MLCZ]|{_NUMBER}|[ ,])*")


def _build_svg(traced: str, width: int, height: int) -> str:
    """Our own SVG document from the tracer's paths; anything not a plain filled path is an error."""
    paths = _PATH.findall(traced)
    if len(paths) != traced.count("<path"):
        raise VectorizeError("the tracer emitted a path this module does not recognise; refusing to pass it on")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for outline, fill, dx, dy in paths:
        if not _OUTLINE.fullmatch(outline):
            raise VectorizeError("the tracer emitted a path outline with unexpected characters")
        compact = re.sub(r" (?=[MLCZ])", "", outline).strip()
        offset = "" if float(dx) == 0 and float(dy) == 0 else f' transform="translate({dx},{dy})"'
        out.append(f'<path d="{compact}" fill="{fill.upper()}"{offset}/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
