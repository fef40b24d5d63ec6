"""Third-party noise and network access off.

Noise: the libraries' import-time warnings and weight-loading progress bars read like errors to a user. Silenced:
transformers' and diffusers' warnings (``[transformers] ... requires torchvision``) and their "Loading weights" bars,
torchao's "Failed to load ... .so" and torch's pytree deprecation lines (torchao imported by transformers),
bitsandbytes' import warning, and the Python warnings those packages raise. Errors still show. flux_vector's own
messages and its sampling progress bar are not touched.

- The command line calls ``quiet_third_party()`` before any of them is imported (it sets the environment variables
  they read at import and the level of the loggers they warn through); ``--verbose`` calls
  ``show_third_party_output()`` instead.
- The Python API: ``FluxVectorPipeline.from_pretrained`` runs inside ``quiet_loading()``, which silences the same
  logged output while it loads and restores the loggers and bars afterwards;
  ``show_third_party_output()`` turns that off.

Network, everywhere (the command line and the Python API): flux_vector reads local files only, but importing
bitsandbytes contacts the Hugging Face Hub. diffusers imports bitsandbytes whenever it is installed (``diffusers
.quantizers`` -> ``bitsandbytes`` at ``modeling_utils`` import), and bitsandbytes' CPU backend asks the ``kernels``
package for a 4-bit kernel (``kernels-community/quantization-bitsandbytes``), which looks the publisher up on the Hub
(a DNS lookup and an HTTPS request per process; with ``HF_HUB_OFFLINE=1`` a log line instead). So:

- ``diffusers_without_bitsandbytes()`` (called before flux_vector imports diffusers) tells diffusers bitsandbytes is
  absent, so the import chain never starts; flux_vector uses its own int8 layers (``quantize.py``), not diffusers'
  bitsandbytes loader.
- ``import_bitsandbytes()`` is the one way flux_vector imports it, only when 8-bit or nf4 is asked: with ``kernels``
  hidden, even when transformers loaded it already (bitsandbytes then skips the downloadable AVX512 4-bit CPU kernel;
  nf4 runs on its built-in CPU path) and its warning about that silenced.
- ``offline_hub()`` (the command line) sets ``HF_HUB_OFFLINE=1`` unless the user set it: anything that would still
  ask the Hub fails at once instead of waiting on the network.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType

NOISY_LOGGERS = (
    "bitsandbytes",
    "transformers",
    "diffusers",
    "torchao",
    "accelerate",
    "huggingface_hub",
    "torch.utils._pytree",  # "<enum 'KernelPreference'> is an Enum subclass ...", when torchao is imported
)
QUIET_ENVIRONMENT = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bars read this too
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
NOISY_WARNING_MODULES = r"(bitsandbytes|transformers|diffusers|torchao|accelerate|huggingface_hub)(\.|$)"
# bitsandbytes' CPU backend logs "Failed to load CPU gemm_4bit_forward from kernels-community" when kernels is hidden
BITSANDBYTES_KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"
# diffusers' quantizer back-ends flux_vector never loads through diffusers (8-bit: quantize.py; fp8: fast/apply.py
# imports torchao itself). torchao costs ~0.5 s at import and logs torch's pytree deprecation warnings.
UNUSED_DIFFUSERS_BACKENDS = ("_bitsandbytes_available", "_torchao_available")


def quiet_third_party() -> None:
    """Only errors from the third-party libraries. A variable the user set keeps the user's value."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=NOISY_WARNING_MODULES)


_show_third_party = False


def show_third_party_output() -> None:
    """Let the libraries' warnings and bars through (``--verbose``; ``quiet_loading`` then changes nothing)."""
    global _show_third_party
    _show_third_party = True


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """The libraries' logged warnings and loading bars off while this block runs (a model loading), then as they
    were. Python ``warnings`` filters are left alone: ``catch_warnings`` swaps the process-wide filter list, which
    races with other threads (sampling/noise.py); what loading prints comes through logging."""
    if _show_third_party:
        yield
        return
    diffusers_without_bitsandbytes()
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    bars = [
        (lib.is_progress_bar_enabled(), lib.enable_progress_bar, lib.disable_progress_bar)
        for lib in (transformers_logging, diffusers_logging)
    ]
    with contextlib.ExitStack() as stack:
        for name in NOISY_LOGGERS:
            stack.enter_context(_logger_at_error(name))
        for _, _, disable in bars:
            disable()
        try:
            yield
        finally:
            for was_enabled, enable, _ in bars:
                if was_enabled:
                    enable()


def offline_hub() -> None:
    """``HF_HUB_OFFLINE=1`` unless set: read before huggingface_hub is imported (the command line calls it first)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def diffusers_without_bitsandbytes() -> None:
    """Keep diffusers from importing bitsandbytes (and through it ``kernels``, which calls the Hub) at import.

    diffusers decides once, in ``diffusers.utils.import_utils``, whether bitsandbytes is installed, and its model
    modules import it if so. Flagging it absent before those modules load keeps it out (torchao too, see
    ``UNUSED_DIFFUSERS_BACKENDS``); a no-op once they (or bitsandbytes) are loaded, or on a diffusers without the
    flags. diffusers' own bitsandbytes/torchao loaders are then unavailable in this process: flux_vector uses
    neither."""
    if "bitsandbytes" in sys.modules or "diffusers.quantizers" in sys.modules:
        return
    import diffusers.utils.import_utils as availability

    for flag in UNUSED_DIFFUSERS_BACKENDS:
        if hasattr(availability, flag):
            setattr(availability, flag, False)


def import_bitsandbytes() -> ModuleType:
    """``import bitsandbytes`` without its ``kernels`` lookup on the Hub and without the warning that it skipped it."""
    loaded = sys.modules.get("bitsandbytes")
    if loaded is not None:
        return loaded
    with _kernels_hidden(), _logger_at_error(BITSANDBYTES_KERNEL_LOGGER):
        import bitsandbytes
    return bitsandbytes


@contextlib.contextmanager
def _kernels_hidden() -> Iterator[None]:
    """``import kernels`` raises ImportError inside (a ``None`` entry in ``sys.modules``), even when it is loaded
    already (transformers imports it with the models: bitsandbytes would then find it and ask the Hub); the entry
    it had comes back after."""
    before = sys.modules.get("kernels")
    sys.modules["kernels"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.modules.get("kernels", 0) is None:
            if before is None:
                del sys.modules["kernels"]
            else:
                sys.modules["kernels"] = before


@contextlib.contextmanager
def _logger_at_error(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)
