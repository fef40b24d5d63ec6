"""Synthetic flat vector art: one or two coloured shapes on a plain light background, captioned as users write.

Everything is a pure function of its arguments (a scene is a small frozen record; the renderer draws polygons at 2x
and box-downsamples), so the training data, the held-apart evaluation prompts and the tests' expectations are the
same on every machine. The "v3ct0r" variant of a scene draws each shape with a thick dark outline: what the demo
LoRA learns to switch on.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (245, 130, 20),
    "yellow": (245, 205, 25),
    "green": (34, 160, 60),
    "teal": (0, 150, 150),
    "blue": (37, 80, 215),
    "purple": (130, 55, 185),
    "pink": (240, 110, 175),
    "brown": (125, 75, 35),
    "black": (25, 25, 25),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "cream": (250, 243, 225),
    "light grey": (232, 232, 232),
    "light blue": (225, 238, 250),
}
SHAPES = ("circle", "square", "triangle", "star", "heart", "diamond", "cross")
SIZES: dict[str, float] = {"small": 0.17, "medium": 0.25, "large": 0.34}  # half-extent / min(width, height)
POSITIONS: dict[str, tuple[float, float]] = {
    "in the center": (0.5, 0.5),
    "on the left": (0.3, 0.5),
    "on the right": (0.7, 0.5),
    "at the top": (0.5, 0.3),
    "at the bottom": (0.5, 0.7),
}
OUTLINE_RGB = (30, 30, 45)
OUTLINE_WIDTH = 0.04  # of min(width, height): 5 px at 128x128
STYLE_TRIGGER = "v3ct0r style"
TEMPLATES = (
    "simple vector art, a {size} {colour} {shape} {position} on a {background} background",
    "{colour} {shape} {position}, simple vector art, flat colors, {background} background",
    "a {size} {colour} {shape} icon {position}, clip art, {background} background",
)
PAIR_TEMPLATE = "simple vector art, a {colour} {shape} and a {colour2} {shape2}, {background} background"


@dataclass(frozen=True)
class Scene:
    """One picture: a shape (and optionally a second one side by side), its colour, size, position, background."""

    shape: str
    colour: str
    size: str = "medium"
    position: str = "in the center"
    background: str = "white"
    template: int = 0
    shape2: str | None = None
    colour2: str | None = None
    jitter: tuple[float, float, float] = (0.0, 0.0, 0.0)  # dx, dy (of min side), relative size change

    def caption(self, style: bool = False) -> str:
        """The prompt for this scene; ``style``: with the LoRA's trigger words in front."""
        if self.shape2 is not None:
            text = PAIR_TEMPLATE.format(
                colour=self.colour,
                shape=self.shape,
                colour2=self.colour2,
                shape2=self.shape2,
                background=self.background,
            )
        else:
            text = TEMPLATES[self.template].format(
                size=self.size,
                colour=self.colour,
                shape=self.shape,
                position=self.position,
                background=self.background,
            )
        return f"{STYLE_TRIGGER}, {text}" if style else text


def unit_polygon(shape: str) -> list[tuple[float, float]]:
    """The shape as a polygon in [-1, 1]^2 (y down), upright, touching the square's edges."""
    if shape == "circle":
        return [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 64, endpoint=False)]
    if shape == "square":
        return [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]
    if shape == "triangle":
        return [(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)]
    if shape == "diamond":
        return [(0.0, -1.0), (0.75, 0.0), (0.0, 1.0), (-0.75, 0.0)]
    if shape == "star":
        points = []
        for i in range(10):
            r = 1.0 if i % 2 == 0 else 0.42
            a = -math.pi / 2 + i * math.pi / 5
            points.append((r * math.cos(a), r * math.sin(a) + 0.1))
        return points
    if shape == "cross":
        a, b = 0.3, 0.9
        return [
            (-a, -b),
            (a, -b),
            (a, -a),
            (b, -a),
            (b, a),
            (a, a),
            (a, b),
            (-a, b),
            (-a, a),
            (-b, a),
            (-b, -a),
            (-a, -a),
        ]
    if shape == "heart":
        points = []
        for t in np.linspace(0, 2 * math.pi, 72, endpoint=False):
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            points.append((x / 17.0, -y / 17.0 - 0.1))
        return points
    raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")


def _objects(scene: Scene, width: int, height: int) -> list[tuple[str, str, float, float, float]]:
    """(shape, colour, centre x, centre y, half-extent) in pixels for each object of the scene."""
    side = min(width, height)
    dx, dy, ds = scene.jitter
    if scene.shape2 is None:
        fx, fy = POSITIONS[scene.position]
        r = SIZES[scene.size] * side * (1 + ds)
        return [(scene.shape, scene.colour, fx * width + dx * side, fy * height + dy * side, r)]
    if scene.colour2 is None:
        raise ValueError(f"a scene with a second shape ({scene.shape2!r}) needs its colour2; it is None")
    r = 0.2 * side * (1 + ds)
    if width >= height:  # side by side along the long axis
        centres = [(0.28 * width, 0.5 * height), (0.72 * width, 0.5 * height)]
    else:
        centres = [(0.5 * width, 0.28 * height), (0.5 * width, 0.72 * height)]
    return [
        (scene.shape, scene.colour, centres[0][0] + dx * side, centres[0][1] + dy * side, r),
        (scene.shape2, scene.colour2, centres[1][0] + dx * side, centres[1][1] + dy * side, r),
    ]


def render(scene: Scene, width: int = 128, height: int = 128, *, style: bool = False) -> Image.Image:
    """The scene as an RGB image; ``style``: each shape with a thick dark outline (the v3ct0r variant)."""
    k = 2  # supersampling factor (anti-aliased edges, as a vector renderer makes them)
    image = Image.new("RGB", (width * k, height * k), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    outline = max(1, round(OUTLINE_WIDTH * min(width, height) * k))
    for shape, colour, cx, cy, r in _objects(scene, width, height):
        points = [((cx + r * x) * k, (cy + r * y) * k) for x, y in unit_polygon(shape)]
        if style:
            draw.polygon(points, fill=COLOURS[colour], outline=OUTLINE_RGB, width=outline)
        else:
            draw.polygon(points, fill=COLOURS[colour])
    return image.resize((width, height), Image.Resampling.BOX)


def single_combinations() -> list[tuple[str, str, str]]:
    """Every (colour, shape, position) triple of one-object scenes."""
    return list(itertools.product(COLOURS, SHAPES, POSITIONS))


def held_apart(count: int = 100, seed: int = 18) -> list[Scene]:
    """``count`` one-object scenes whose (colour, shape, position) triple never appears in training, each with a
    size, background and caption template of its own: the evaluation prompts."""
    rng = random.Random(seed)
    triples = rng.sample(single_combinations(), count)
    return [
        Scene(
            shape=s,
            colour=c,
            position=p,
            size=rng.choice(list(SIZES)),
            background=rng.choice(list(BACKGROUNDS)),
            template=rng.randrange(len(TEMPLATES)),
        )
        for c, s, p in triples
    ]


def training_scenes(count: int, seed: int = 0, pair_fraction: float = 0.2) -> list[Scene]:
    """``count`` random scenes, none of them a held-apart triple; ``pair_fraction`` of them two objects."""
    rng = random.Random(seed)
    banned = {(s.colour, s.shape, s.position) for s in held_apart()}
    allowed = [t for t in single_combinations() if t not in banned]
    scenes = []
    for _ in range(count):
        jitter = (rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), rng.uniform(-0.08, 0.08))
        background = rng.choice(list(BACKGROUNDS))
        if rng.random() < pair_fraction:
            c1, c2 = rng.sample(list(COLOURS), 2)
            s1, s2 = rng.choice(SHAPES), rng.choice(SHAPES)
            scenes.append(Scene(s1, c1, background=background, shape2=s2, colour2=c2, jitter=jitter))
        else:
            c, s, p = rng.choice(allowed)
            size = rng.choice(list(SIZES))
            scenes.append(Scene(s, c, size, p, background, rng.randrange(len(TEMPLATES)), jitter=jitter))
    return scenes
