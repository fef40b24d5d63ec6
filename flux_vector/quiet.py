"""Third-party noise off for the command line: the libraries' import-time warnings and weight-loading progress bars
read like errors to a user. ``quiet_third_party()`` runs before any of them is imported (it sets the environment
variables they read at import and the level of the loggers they warn through); ``--verbose`` skips it.

Silenced: bitsandbytes' ``Failed to load CPU gemm_4bit_forward from kernels-community`` (logger
``bitsandbytes.backends.cpu.ops``, at import), transformers' and diffusers' warnings (``[transformers] ...
requires torchvision``) and their "Loading weights" bars, and the Python warnings those packages raise. Errors still
show. flux_vector's own messages and its sampling progress bar are not touched.
"""

from __future__ import annotations

import logging
import os
import warnings

NOISY_LOGGERS = ("bitsandbytes", "transformers", "diffusers", "torchao", "accelerate", "huggingface_hub")
QUIET_ENVIRONMENT = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bars read this too
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
NOISY_WARNING_MODULES = r"(bitsandbytes|transformers|diffusers|torchao|accelerate|huggingface_hub)(\.|$)"


def quiet_third_party() -> None:
    """Only errors from the third-party libraries. A variable the user set keeps the user's value."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=NOISY_WARNING_MODULES)
