"""A tiny, structurally real FLUX.1 checkpoint with random weights, built offline.

Real classes (CLIPTextModel + CLIPTokenizer, T5EncoderModel + T5TokenizerFast, FluxTransformer2DModel, a 16-channel
AutoencoderKL with the real 8x scale and Flux's latent scale/shift) in the diffusers folder layout, so it loads
through exactly the code path of the 12B model. Tokenizers are written from scratch (no hub). Also writes tiny
LoRAs for it in kohya form (BFL names, fused qkv/linear1, alpha keys) and in diffusers/peft form.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from .cache import default_cache_dir

TINY_VERSION = 1
KOHYA_LORA = "tiny_lora_kohya.safetensors"
DIFFUSERS_LORA = "tiny_lora_diffusers.safetensors"

TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)
LORA_RANK = 4


def tiny_checkpoint_dir() -> Path:
    """The cached tiny checkpoint, built on first use (atomically, so a crash never leaves half a folder)."""
    target = default_cache_dir() / f"tiny-flux-v{TINY_VERSION}"
    if not (target / "model_index.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="tiny-flux-", dir=target.parent))
        try:
            build_tiny_flux(staging)
            try:
                staging.rename(target)
            except OSError:  # another process won the race
                if not (target / "model_index.json").exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (what byte-level BPE vocabularies are made of)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _write_clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges = [("v", "3"), ("c", "t"), ("0", "r</w>"), ("e", "r</w>"), ("t", "h"), ("a", "n")]
    vocab_list += [a + b for a, b in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab_list)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77, pad_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def _write_t5_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,.:;!?'\"-_()/&+"
    pieces += [(ch, -3.0) for ch in alphabet]
    pieces += [("▁" + w, -1.0) for w in ("a", "the", "v3ct0r", "style", "simple", "vector", "art", "cat", "car")]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    backend.save(str(folder / "tokenizer.json"))
    tokenizer = T5TokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"),
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=512,
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_tiny_flux(outdir: str | Path, seed: int = 0) -> Path:
    """Write the tiny checkpoint (diffusers layout) and its two tiny LoRAs into ``outdir``."""
    from .quiet import diffusers_without_bitsandbytes

    diffusers_without_bitsandbytes()  # no Hub request at import (quiet.py)
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip_tokenizer = _write_clip_tokenizer(outdir / "tokenizer")
        t5_tokenizer = _write_t5_tokenizer(outdir / "tokenizer_2")
        clip = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(clip_tokenizer),
                hidden_size=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                max_position_embeddings=77,
                projection_dim=32,
                bos_token_id=clip_tokenizer.bos_token_id,
                eos_token_id=clip_tokenizer.eos_token_id,
                pad_token_id=clip_tokenizer.pad_token_id,
            )
        ).eval()
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=len(t5_tokenizer),
                d_model=32,
                d_kv=8,
                d_ff=37,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                dropout_rate=0.0,
                pad_token_id=t5_tokenizer.pad_token_id,
                eos_token_id=t5_tokenizer.eos_token_id,
            )
        ).eval()
        transformer = FluxTransformer2DModel(**TRANSFORMER_CONFIG).eval()
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            norm_num_groups=4,
            latent_channels=16,
            sample_size=64,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ).eval()
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15
        )
        pipe = FluxPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=clip,
            tokenizer=clip_tokenizer,
            text_encoder_2=t5,
            tokenizer_2=t5_tokenizer,
            transformer=transformer,
        )
        pipe.save_pretrained(outdir)
        write_tiny_loras(transformer, outdir)
    (outdir / "TINY_README.txt").write_text(
        "Random-weight FLUX.1 architecture built by flux_vector.tiny for tests and demos. Images are noise-like.\n"
    )
    return outdir


def bfl_lora_targets(config: dict) -> dict[str, tuple[int, int]]:
    """BFL (ComfyUI) names of the transformer's LoRA-able linears -> (in_features, out_features)."""
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    mlp = int(inner * config.get("mlp_ratio", 4.0))
    targets: dict[str, tuple[int, int]] = {}
    for i in range(config["num_layers"]):
        for stream in ("img", "txt"):
            base = f"double_blocks.{i}.{stream}"
            targets[f"{base}_attn.qkv"] = (inner, 3 * inner)
            targets[f"{base}_attn.proj"] = (inner, inner)
            targets[f"{base}_mlp.0"] = (inner, mlp)
            targets[f"{base}_mlp.2"] = (mlp, inner)
            targets[f"{base}_mod.lin"] = (inner, 6 * inner)
    for i in range(config["num_single_layers"]):
        targets[f"single_blocks.{i}.linear1"] = (inner, 3 * inner + mlp)
        targets[f"single_blocks.{i}.linear2"] = (inner + mlp, inner)
        targets[f"single_blocks.{i}.modulation.lin"] = (inner, 3 * inner)
    return targets


def write_tiny_loras(transformer, outdir: Path, rank: int = LORA_RANK, seed: int = 1) -> None:
    """A kohya LoRA (BFL names incl. fused qkv/linear1, alpha = rank/2) and a diffusers LoRA (peft names)."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    kohya: dict[str, torch.Tensor] = {}
    for name, (fan_in, fan_out) in bfl_lora_targets(dict(transformer.config)).items():
        key = "lora_unet_" + name.replace(".", "_")
        kohya[f"{key}.lora_down.weight"] = torch.randn(rank, fan_in, generator=generator) * 0.1
        kohya[f"{key}.lora_up.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.1
        kohya[f"{key}.alpha"] = torch.tensor(rank / 2)
    save_file(kohya, outdir / KOHYA_LORA)

    diffusers_sd: dict[str, torch.Tensor] = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and (".attn." in name or ".ff" in name or "proj_mlp" in name):
            diffusers_sd[f"transformer.{name}.lora_A.weight"] = (
                torch.randn(rank, module.in_features, generator=generator) * 0.1
            )
            diffusers_sd[f"transformer.{name}.lora_B.weight"] = (
                torch.randn(module.out_features, rank, generator=generator) * 0.1
            )
    save_file(diffusers_sd, outdir / DIFFUSERS_LORA)
