"""The demo model's world: synthetic flat vector art with captions (``shapes``) and the measurements that check a
generated image against its prompt (``measure``). Pure numpy/PIL, so the tests, the training script and the
evaluation share one definition of "a red star". The trained weights live in ``demo/model/``."""

from pathlib import Path

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "model"
DEMO_LORA_FILE = "v3ct0r_outline_lora_kohya.safetensors"
DEMO_SIZES_FILE = "flux_vector_sizes.json"
