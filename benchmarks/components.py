"""Components for benchmarks: the tiny checkpoint, or FLUX.1-dev's real architecture at full size with random
weights (speed and memory do not depend on the weights). Tokenizers come from the tiny checkpoint (no hub)."""

from __future__ import annotations

import torch

FLUX_DEV_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)


def real_size_random(device: torch.device, dtype: torch.dtype) -> dict:
    """FLUX.1-dev's transformer, T5-XXL encoder, CLIP-L and the 16-channel VAE, random weights, on ``device``."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    from flux_vector.tiny import tiny_checkpoint_dir

    tiny = tiny_checkpoint_dir()
    with torch.device(device):
        transformer = FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER).to(dtype)
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=32128,
                d_model=4096,
                d_kv=64,
                d_ff=10240,
                num_layers=24,
                num_heads=64,
                feed_forward_proj="gated-gelu",
                dropout_rate=0.0,
            )
        ).to(dtype)
        clip = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_attention_heads=12,
                num_hidden_layers=12,
                projection_dim=768,
                eos_token_id=2,
            )
        ).to(dtype)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=16,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ).to(dtype)
    return dict(
        transformer=transformer.eval(),
        text_encoder_2=t5.eval(),
        text_encoder=clip.eval(),
        vae=vae.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(tiny, subfolder="tokenizer"),
        tokenizer_2=T5TokenizerFast.from_pretrained(tiny, subfolder="tokenizer_2"),
    )
