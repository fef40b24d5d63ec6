"""Issue 31, smaller point: the timestep and guidance reach the embedding in float32, as ComfyUI embeds them, even
when the transformer runs in bfloat16 (diffusers rounds them to the hidden dtype first); and a step's sigma goes to
the device as float32."""

import torch

from flux_vector.timesteps import embed_in_float32, to_device


def _embedding_inputs(transformer, sigma: float, guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
    seen = []
    handle = transformer.time_text_embed.register_forward_pre_hook(lambda m, args: seen.append(args) and None)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        transformer(
            hidden_states=torch.randn(1, 16, 64, generator=g).to(torch.bfloat16),
            encoder_hidden_states=torch.randn(1, 7, 32, generator=g).to(torch.bfloat16),
            pooled_projections=torch.randn(1, 32, generator=g).to(torch.bfloat16),
            timestep=torch.tensor([sigma]),
            guidance=torch.tensor([guidance]),
            txt_ids=torch.zeros(7, 3),
            img_ids=torch.zeros(16, 3),
            return_dict=False,
        )
    handle.remove()
    return seen[0][0], seen[0][1]


def test_bf16_transformer_embeds_timestep_and_guidance_in_float32(tiny_dir):
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_pretrained(tiny_dir, subfolder="transformer", dtype=torch.bfloat16).eval()
    sigma, guidance = 0.8765, 3.7
    rounded_t, rounded_g = _embedding_inputs(model, sigma, guidance)  # diffusers alone: bf16 first
    assert rounded_t.item() != torch.tensor(sigma).mul(1000).item()
    assert rounded_g.item() != torch.tensor(guidance).mul(1000).item()  # bf16(3.7) * 1000 in bf16
    embed_in_float32(model)
    embed_in_float32(model)  # installed once
    t, g = _embedding_inputs(model, sigma, guidance)
    assert t.dtype == torch.float32 and t.item() == torch.tensor([sigma]).mul(1000).item()
    assert g.dtype == torch.float32 and g.item() == torch.tensor([guidance]).mul(1000).item()


def test_sigma_goes_to_the_device_as_float32():
    out = to_device(torch.tensor([0.5], dtype=torch.float64), torch.device("cpu"))
    assert out.dtype == torch.float32 and out.item() == 0.5
