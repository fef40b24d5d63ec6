"""The playground's example prompt is one the loaded model can draw (issue 25, point 8): with the demo model, a
demo prompt (its colours and shapes), drawn as the form would send it (every hosted default)."""

from __future__ import annotations

from flux_vector.demo.measure import classify_shape, dominant_colour
from flux_vector.models import DEMO_EXAMPLE_PROMPT
from flux_vector.request import EXAMPLE_PROMPT, parse_request
from flux_vector.server.playground import contract


def test_the_example_follows_the_model():
    assert contract(model_name="demo")["example_prompt"] == DEMO_EXAMPLE_PROMPT
    assert contract(model_name="black-forest-labs/FLUX.1-dev")["example_prompt"] == EXAMPLE_PROMPT


def test_the_demo_model_draws_its_example():
    from flux_vector.pipeline import FluxVectorPipeline

    pipe = FluxVectorPipeline.from_pretrained("demo", log=lambda *_: None)
    image = pipe.generate(parse_request({"prompt": DEMO_EXAMPLE_PROMPT}), progress=False).image
    assert dominant_colour(image, ignore_dark=True) == "red" and classify_shape(image) == "heart"
