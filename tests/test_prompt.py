"""The prompt package on its own: ComfyUI's weight grammar (docs/COMFY_E2E.md 2.1-2.3), CLIP/T5 packing, the cleaner
and the T5 keys of a LoRA. The golden comparisons are in test_comfy_e2e.py."""

from __future__ import annotations

import math

import pytest
import torch

from flux_vector.lora import apply_lora, parse_lora
from flux_vector.prompt import CLIP_CHUNK, T5_MIN_LENGTH, clip_clean, parse_weights, weighted_pieces
from flux_vector.prompt.tokens import pack_clip, pack_t5


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("(v3ct0r:1.3) style, a (red:0.5) fox", [("v3ct0r", 1.3), (" style, a ", 1.0), ("red", 0.5), (" fox", 1.0)]),
        ("nested ((a:1.2) b:0.8) c", [("nested ", 1.0), ("a", 1.2), (" b", 0.8), (" c", 1.0)]),
        ("((a):1.5) and (b:1.2:1.5) c", [("a", 1.5 * 1.1), (" and ", 1.0), ("b:1.2", 1.5), (" c", 1.0)]),
        ("(a:abc)", [("a:abc", 1.1)]),
        ("(:1.2)", [(":1.2", 1.1)]),
        ("(a:-1.0)", [("a", -1.0)]),
        ("(b: 2 )", [("b", 2.0)]),
        ("(c:+.5)", [("c", 0.5)]),
        ("(a:1e-1)", [("a", 0.1)]),
        ("(a:1_0)", [("a", 10.0)]),
        ("a () b (( )) c", [("a ", 1.0), (" b ", 1.0), (" ", 1.1 * 1.1), (" c", 1.0)]),
        ("unbalanced (paren and more", [("unbalanced ", 1.0), ("(paren and more", 1.0)]),
        ("x (a (b:1.5) c", [("x ", 1.0), ("(a (b:1.5) c", 1.0)]),
        ("unbalanced paren) here", [("unbalanced paren) here", 1.0)]),
        ("a) (b:1.2) c", [("a) (b:1.2) c", 1.0)]),
        ("((a)", [("(a", 1.1)]),
        ("(a))", [("a", 1.1), (")", 1.0)]),
        ("[brackets] and {braces}", [("[brackets] and {braces}", 1.0)]),
        ("escaped \\(not a weight\\) here", [("escaped (not a weight) here", 1.0)]),
        ("\\\\(b:1.2)", [("\\(b:1.2)", 1.0)]),  # the second backslash escapes, the first stays
        ("a\\\\b", [("a\\\\b", 1.0)]),
        ("(\\(x\\):1.4)", [("(x)", 1.4)]),
        ("", []),
    ],
)
def test_weight_grammar(text, segments):
    assert parse_weights(text) == segments


def test_inf_and_nan_weights_are_floats():
    assert parse_weights("(a:inf)") == [("a", math.inf)]
    [(text, weight)] = parse_weights("(a:nan)")
    assert text == "a" and math.isnan(weight)


@pytest.mark.parametrize(
    ("text", "pieces", "warnings"),
    [
        ("embedding:foo a cat", ["a cat"], 1),
        ("a cat embedding:foo, and a dog", ["a cat", ", and a dog"], 1),
        ("a cat\nembedding:foo", ["a cat"], 1),
        ("embedding:foo", [], 1),
        ("a cat embedding:", ["a cat"], 1),
        ("(red:1.2) embedding:x fox", ["red", "fox"], 1),
        ("no embedding here: embeddings:foo", ["no embedding here: embeddings:foo"], 0),
        ("xembedding:foo", ["xembedding:foo"], 0),
    ],
)
def test_embedding_names_are_dropped_with_a_warning(text, pieces, warnings):
    weighted = weighted_pieces(text)
    assert [p for p, _ in weighted.pieces] == pieces
    assert len(weighted.warnings) == warnings


def test_clip_packing_splits_long_pieces_and_moves_short_ones():
    start, end = 100, 101
    chunks = pack_clip([[(1, 1.0)] * 74, [(2, 1.2)] * 3], start, end)  # a short piece that does not fit moves whole
    assert [len(c) for c in chunks] == [CLIP_CHUNK, CLIP_CHUNK]
    assert chunks[0][-3:] == ((1, 1.0), (end, 1.0), (end, 1.0)) and chunks[1][1:4] == ((2, 1.2),) * 3
    chunks = pack_clip([[(1, 1.0)] * 74, [(2, 1.2)] * 8], start, end)  # a long one is split at 75 content tokens
    assert chunks[0][-3:] == ((1, 1.0), (2, 1.2), (end, 1.0))
    assert chunks[1][1:9] == ((2, 1.2),) * 7 + ((end, 1.0),)
    assert [len(c) for c in pack_clip([[(1, 1.0)] * 75], start, end)] == [CLIP_CHUNK]
    assert [len(c) for c in pack_clip([[(1, 1.0)] * 76], start, end)] == [CLIP_CHUNK] * 2
    assert pack_clip([], start, end) == (((start, 1.0),) + ((end, 1.0),) * 76,)


def test_t5_packing_pads_to_256_and_never_truncates():
    assert len(pack_t5([[(5, 1.0)] * 10], 1, 0)) == T5_MIN_LENGTH
    assert len(pack_t5([[(5, 1.0)] * 255], 1, 0)) == 256
    long = pack_t5([[(5, 1.0)] * 1000], 1, 0)
    assert len(long) == 1001 and long[-1] == (1, 1.0)


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("  A  b\tC\n", "a b c"),
        ("zero\u200bwidth ctrl\x07char", "zerowidth ctrlchar"),
        ("日本語", "日 本 語"),
        ("Café", "café"),
        ("e\u0301", "é"),  # NFC
    ],
)
def test_clip_cleaner(text, cleaned):
    assert clip_clean(text) == cleaned


def test_t5_lora_keys_patch_t5(tiny_pipe):
    """ComfyUI's T5 names in a Flux CLIP (lora_te2_/lora_te3_) and diffusers' text_encoder_2. reach T5's linears."""
    t5 = tiny_pipe.text_encoder_2
    q = t5.get_submodule("encoder.block.0.layer.0.SelfAttention.q")
    generator = torch.Generator().manual_seed(0)
    down, up = torch.randn(2, q.in_features, generator=generator), torch.randn(q.out_features, 2, generator=generator)
    for key in (
        "lora_te3_encoder_block_0_layer_0_SelfAttention_q",
        "lora_te2_encoder_block_0_layer_0_SelfAttention_q",
        "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q",
    ):
        sd = {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(1.0)}
        [patch] = parse_lora(sd, tiny_pipe.transformer, tiny_pipe.text_encoder, t5)
        assert patch.component == "text_encoder_2" and patch.module is q and patch.scale == 0.5
    ids = torch.tensor([[5, 6, 7, 1, 0, 0]])
    with torch.inference_mode():
        before = t5(input_ids=ids).last_hidden_state
        handle = apply_lora([patch], strength=1.0)
        try:
            assert handle.touches_text
            patched = t5(input_ids=ids).last_hidden_state
            handle.set_strength(0.0)
            zero = t5(input_ids=ids).last_hidden_state
        finally:
            handle.remove()
    assert not torch.allclose(before, patched) and torch.equal(before, zero)


def test_t5_lora_keys_without_a_t5_model_say_so(tiny_pipe):
    key = "lora_te3_encoder_block_0_layer_0_SelfAttention_q"
    sd = {f"{key}.lora_down.weight": torch.zeros(2, 32), f"{key}.lora_up.weight": torch.zeros(32, 2)}
    with pytest.raises(ValueError, match="T5 text encoder LoRA layer, but no text_encoder_2"):
        parse_lora(sd, tiny_pipe.transformer, tiny_pipe.text_encoder)
