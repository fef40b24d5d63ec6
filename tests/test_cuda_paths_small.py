"""Issue 31's smaller points that a CPU can see: the bitsandbytes int8 cast warning is logged once, not on every
forward; the VAE decode at exactly 2048x2048 is tiled."""

import logging

import torch

from flux_vector.quantize import BNB_MATMUL_LOGGER, quantize_linears_8bit


def test_bitsandbytes_cast_warning_is_logged_once(caplog):
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)).to(torch.bfloat16)
    quantize_linears_8bit(model, "cpu")
    model.eval()  # bitsandbytes routes training-mode CPU matmuls elsewhere (MatMul8bitFp, no cast)
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    with caplog.at_level(logging.WARNING, logger=BNB_MATMUL_LOGGER), torch.inference_mode():
        for _ in range(3):
            model(x)
    casts = [r for r in caplog.records if "will be cast" in r.getMessage()]
    assert len(casts) == 1, [r.getMessage() for r in casts]


def test_vae_decode_at_the_tiling_threshold_is_tiled(tiny_pipe, monkeypatch):
    """At exactly ``TILED_DECODE_PIXELS`` (2048x2048 for the real model; the tiny pipeline's 64x64 here, with the
    threshold moved to it) the decode is tiled; one pixel row fewer is not."""
    import flux_vector.pipeline as pipeline

    calls = []
    monkeypatch.setattr(tiny_pipe.vae, "enable_tiling", lambda *a, **k: calls.append("on"))
    monkeypatch.setattr(tiny_pipe.vae, "disable_tiling", lambda *a, **k: calls.append("off"))
    monkeypatch.setattr(pipeline, "TILED_DECODE_PIXELS", 64 * 64)
    tiny_pipe.decode(torch.zeros(1, 16, 8, 8))
    assert calls == ["on", "off"]
    calls.clear()
    monkeypatch.setattr(pipeline, "TILED_DECODE_PIXELS", 64 * 64 + 1)
    tiny_pipe.decode(torch.zeros(1, 16, 8, 8))
    assert calls == []
