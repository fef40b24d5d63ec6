"""What the job-store tests complete jobs with: a small request, its result metadata and a tiny PNG."""

from __future__ import annotations

from PIL import Image

from flux_vector.output_formats import encode_image

P = {"prompt": "v3ct0r style, a cat", "width": 64, "height": 64, "steps": 2}
META = {
    "ext": "png",
    "media_type": "image/png",
    "echo": {"base64": False},
    "width": 64,
    "height": 64,
    "inference_time": 0.5,
}


def png(colour=(1, 2, 3), size=(64, 64)) -> bytes:
    return encode_image(Image.new("RGB", size, colour), "png", 95)


class FakeClock:
    """A wall clock a test moves by hand (a store's ``clock``): retention without sleeping."""

    def __init__(self, start: float = 1_700_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
