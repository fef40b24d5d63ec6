"""Train the shipped `demo` model on this CPU: a tiny FLUX that draws flat vector shapes, and its outline LoRA.

Stages (each checkpointed with its step counter; a re-run skips finished stages and resumes a stage from its last
checkpoint; every batch and noise draw is a function of (seed, stage, step), so a resumed run is the same run):

1. ``encoders``: a CLIPTextModel (hidden 64, 1 layer) and a T5EncoderModel (d_model 32, 1 layer) with the full
   vocabularies and the real FLUX.1-dev tokenizer files, their weights set rather than trained (``build_encoders``):
   a bag of words for CLIP's pooled vector, each token plus its predecessor for T5's rows; frozen. Checks that
   captions differing in one word encode far apart.
2. ``vae``: a 16-channel FLUX-layout AutoencoderKL (8x, blocks 16/32/64/64) on 64x64 crops of the renders, with noise
   on the latent and a colour probe (``vae_loss``), then its latent statistics folded into the encoder's output conv
   so that ComfyUI's fixed Flux latent transform ``(z - 0.1159) * 0.3611`` gives zero-mean unit-variance latents, and
   a decoder fine-tune on those latents.
3. ``transformer``: FluxTransformer2DModel (hidden 128 = 4 heads x 32, 3 double + 3 single blocks, guidance
   embedding) with rectified flow on the VAE latents at the demo sizes (1:1 half the time), conditioned through
   exactly ``FluxVectorPipeline.encode_prompt`` (its zero text rows counted once: ``CompressedText``), sigma shifted
   by ``flux_mu`` as the sampler shifts it, guidance 3.5; one cosine schedule (``cosine_tail``), EMA weights.
4. ``lora``: a LoRA (attention qkv/proj and MLPs of every block) on outlined renders captioned "v3ct0r style, ..."
   and, as many, plain renders captioned without the trigger (so that the word switches the outline on); written in
   kohya form with BFL names and alpha keys, and checked against the project's own loader.
5. ``export``: the diffusers folder (fp16 weights), the LoRA and the size table into ``flux_vector/demo/model``.

Usage: ``OMP_NUM_THREADS=2 python scripts/train_demo_model.py [--work build/demo_training] [--mini] [--lora-only]``
(``--mini``: a 2-3 minute run of every stage into ``<work>/mini`` to validate the recipe; nothing is exported.
``--lora-only``: stage 4 alone on the shipped model, into ``<work>/lora_only``; the new LoRA replaces the shipped
file, the rest of the folder is untouched).
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # OpenMP threads spin between parallel regions rather than sleep: on an otherwise idle 2-core machine a step
    # takes 0.27 s instead of 0.33 s. On a machine busy with other work, spinning made steps 5x slower: run with
    # OMP_WAIT_POLICY=PASSIVE there. Only when run: importing the module (tests do) leaves the process, and the
    # servers and workers it starts, as they were. Set before torch loads its OpenMP runtime, below.
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from flux_vector.demo import DEMO_LORA_FILE, DEMO_MODEL_DIR, DEMO_SIZES_FILE
from flux_vector.demo.shapes import Scene, render, training_scenes
from flux_vector.request import ASPECT_RATIOS
from flux_vector.sampling import flux_mu
from flux_vector.sampling.sample import LATENT_SCALE, LATENT_SHIFT

ROOT = Path(__file__).resolve().parents[1]
TOKENIZERS = ROOT / "tests" / "data" / "comfy_e2e" / "tiny_flux"
DOCS = ROOT / "docs" / "demo_training"
SEED = 18
TRANSFORMER_BATCH = 32
TRANSFORMER_PEAK_LR = 3e-3
TRANSFORMER_SQUARE_SHARE = 0.5  # of the transformer's and the LoRA's batches: 1:1 (bucket_plan)
SCENES = 8000
TRIGGER_FRACTION = 0.2  # of the base model's captions: "v3ct0r style, ..." on a plain render (LatentSet)
GUIDANCE = 3.5  # the request contract's default guidance: what generate() feeds the guidance embedding

CLIP_WIDTH = 64  # the crafted encoders' widths (build_encoders)
T5_WIDTH = 32
TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    num_layers=3,
    num_single_layers=3,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=T5_WIDTH,
    pooled_projection_dim=CLIP_WIDTH,
    guidance_embeds=True,
    axes_dims_rope=(8, 12, 12),
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 64, 64),
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=16,
    sample_size=128,
    scaling_factor=LATENT_SCALE,
    shift_factor=LATENT_SHIFT,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
LORA_RANK = 8
LORA_BATCH = 24
LORA_STEPS = 900
# (BFL name, diffusers sub-modules whose outputs it concatenates) per block: the LoRA's targets.
DOUBLE_TARGETS = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn.proj": ("attn.to_out.0",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn.proj": ("attn.to_add_out",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
}
SINGLE_TARGETS = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
}


def demo_sizes() -> dict[str, list[int]]:
    """The hosted aspect ratios on the demo's scale: the hosted size / 8, each side rounded to a multiple of 16
    (a tie goes to the rounding whose ratio is nearest the hosted one). 1:1 -> 128x128, 2:3 -> 112x160."""
    sizes = {}
    for name, (w, h) in ASPECT_RATIOS.items():
        options = [(a, b) for a in _round16(w / 8) for b in _round16(h / 8)]
        sizes[name] = list(min(options, key=lambda s: abs(s[0] / s[1] - w / h)))
    return sizes


def _round16(x: float) -> list[int]:
    low, high = 16 * math.floor(x / 16), 16 * math.ceil(x / 16)
    if x - low < high - x:
        return [low]
    if high - x < x - low:
        return [high]
    return [low, high]


# ----------------------------------------------------------------------------------------------------- helpers
def step_rng(stage: str, step: int) -> np.random.Generator:
    return np.random.default_rng([SEED, sum(map(ord, stage)), step])


def step_generator(stage: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(SEED * 1_000_003 + sum(map(ord, stage)) * 10_007 + step)


def to_tensor(images) -> torch.Tensor:
    array = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def bucket_plan(
    sizes: dict[str, list[int]], square_share: float | None = None
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The distinct training sizes and their sampling weights: 1:1 and 2:3 (the hosted default) most often.
    ``square_share``: 1:1's share of the draws, the rest keeping their proportions (the transformer's plan: 1:1 is
    the size evaluated and the one most asked for)."""
    buckets = sorted({tuple(s) for s in sizes.values()})
    square = np.array([b == tuple(sizes["1:1"]) for b in buckets])
    weights = np.where(square, 6.0, [2.5 if b == tuple(sizes["2:3"]) else 1.0 for b in buckets])
    weights /= weights.sum()
    if square_share is not None:
        weights = np.where(square, square_share, weights * (1 - square_share) / weights[~square].sum())
    return buckets, weights


class Checkpoint:
    """One stage's resumable state: modules, optimizer, step, loss history and the seconds spent so far."""

    def __init__(self, work: Path, stage: str):
        self.path = work / f"{stage}.ckpt.pt"

    def load(self) -> dict | None:
        return torch.load(self.path, weights_only=False) if self.path.exists() else None

    def save(self, state: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)


def plot_losses(losses: list[float], title: str, path: Path, window: int = 25) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(losses, lw=0.6, alpha=0.4, label="per step")
    if len(losses) >= window:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window - 1, len(losses)), smooth, lw=1.5, label=f"mean of {window}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cosine_tail(peak: float, steps: int, hold: float = 0.4, floor: float = 0.05):
    """The rate at a step: ``peak`` for the first ``hold`` of the steps, then a cosine down to ``floor`` * peak. A
    function of the step alone, so a resumed run follows it exactly."""

    def rate(step: int) -> float:
        t = max(0.0, (step / max(1, steps - 1) - hold) / (1 - hold))
        return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    return rate


def train_loop(stage, work, modules, params, steps, lr, batch_loss, *, warmup=50, save_every=100, docs=None, ema=0.0):
    """AdamW, linear warm-up then ``lr`` (a rate, or a function of the step); checkpoint every ``save_every`` steps;
    resumes from the last. ``ema`` > 0: the parameters end as their exponential moving average."""
    ckpt = Checkpoint(work, stage)
    opt = torch.optim.AdamW(params, lr=lr(0) if callable(lr) else lr, weight_decay=0.0)
    averages = [p.detach().clone() for p in params] if ema else []
    state = ckpt.load()
    start, losses, spent = 0, [], 0.0
    if state is not None:
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        opt.load_state_dict(state["opt"])
        start, losses, spent = state["step"], state["losses"], state["seconds"]
        averages = state.get("ema", averages)
        print(f"{stage}: resuming at step {start}/{steps}")

    def lr_at(step):
        return (lr(step) if callable(lr) else lr) * min(1.0, (step + 1) / warmup)

    started = time.perf_counter()
    bar = tqdm(range(start, steps), desc=stage, initial=start, total=steps, unit="step")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = batch_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if ema:
            decay = min(ema, (step + 1) / (step + 10))
            with torch.no_grad():
                for average, p in zip(averages, params, strict=True):
                    average.lerp_(p.detach(), 1 - decay)
        losses.append(float(loss))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            seconds = spent + time.perf_counter() - started
            modules_state = {name: m.state_dict() for name, m in modules.items()}
            ckpt.save({"modules": modules_state, "opt": opt.state_dict(), "step": step + 1, "losses": losses,
                       "seconds": seconds, "ema": averages})  # fmt: skip
    seconds = spent + time.perf_counter() - started
    if ema:
        with torch.no_grad():
            for average, p in zip(averages, params, strict=True):
                p.copy_(average)
    if docs is not None:
        plot_losses(losses, f"{stage} ({steps} steps, {seconds / 60:.1f} min)", docs / f"{stage}_loss.png")
    return losses, seconds


# ---------------------------------------------------------------------------------------------- 1. encoders
STOP_FRACTION = 0.6  # a token found in more of the training captions than this names nothing ("a", "art", ",")


def silent_tokens(tokenizer, captions: list[str], styled: list[str]) -> set[int]:
    """The tokens that embed to zero: special ones, those in more than STOP_FRACTION of the plain ``captions`` (they
    name nothing), and those in no caption at all, plain or ``styled`` (words the demo never saw are ignored)."""
    counts: dict[int, int] = {}
    for caption in captions:
        for token in set(tokenizer(caption, add_special_tokens=False)["input_ids"]):
            counts[token] = counts.get(token, 0) + 1
    known = set(counts) | {t for c in styled for t in tokenizer(c, add_special_tokens=False)["input_ids"]}
    frequent = {t for t, n in counts.items() if n > STOP_FRACTION * len(captions)}
    return frequent | set(tokenizer.all_special_ids) | (set(range(len(tokenizer))) - known)


def build_encoders(folder: Path) -> dict:
    """Frozen CLIP-L-class and T5-class encoders with FLUX.1-dev's vocabularies and tokenizer files, whose weights are
    set, not trained, so that the caption reaches the transformer cleanly:

    Only the words of the training captions have embeddings; the rest, and the stop tokens, embed to zero.

    * CLIP (pooled vector): one layer with q = k = 0 (every token attends evenly to the prefix), identity v/o, no MLP,
      no position embeddings, so the end token's output is the mean of the normalised token embeddings: a bag of
      words. Stop tokens (special, or in most captions) embed to zero and drop out of the bag.
    * T5 (sequence): one layer with q = k = 0 and a relative-position bias that makes each token read the token
      before it, so a token's output is its own embedding plus a fixed rotation of its predecessor's: "blue" after
      "light" (a background) differs from "blue" after "a" (a colour). Stop tokens and pads embed to zero; every
      row with nothing before it is exactly zero, which the training uses (``CompressedText``).
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

    for name in ("tokenizer", "tokenizer_2"):
        shutil.copytree(TOKENIZERS / name, folder / name, dirs_exist_ok=True)
    clip_tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    t5_tok = T5TokenizerFast.from_pretrained(folder / "tokenizer_2")
    scenes = training_scenes(4000, seed=SEED)
    captions, styled = [s.caption() for s in scenes], [s.caption(style=True) for s in scenes]
    generator = torch.Generator().manual_seed(SEED)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok),
            hidden_size=CLIP_WIDTH,
            intermediate_size=CLIP_WIDTH,
            num_attention_heads=1,
            num_hidden_layers=1,
            max_position_embeddings=77,
            projection_dim=CLIP_WIDTH,
            bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
        )
    ).eval()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=T5_WIDTH,
            d_kv=T5_WIDTH // 4,
            d_ff=T5_WIDTH * 2,
            num_layers=1,
            num_heads=4,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            pad_token_id=t5_tok.pad_token_id,
            eos_token_id=t5_tok.eos_token_id,
        )
    ).eval()
    clip_stop, t5_stop = silent_tokens(clip_tok, captions, styled), silent_tokens(t5_tok, captions, styled)
    with torch.no_grad():
        embedding = clip.embeddings
        embedding.token_embedding.weight.copy_(torch.randn(len(clip_tok), CLIP_WIDTH, generator=generator))
        embedding.token_embedding.weight[sorted(clip_stop)] = 0.0
        embedding.position_embedding.weight.zero_()
        layer = clip.encoder.layers[0]
        for linear in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.mlp.fc1, layer.mlp.fc2):  # MLP off
            linear.weight.zero_()
            linear.bias.zero_()
        for linear in (layer.self_attn.v_proj, layer.self_attn.out_proj):
            linear.weight.copy_(torch.eye(CLIP_WIDTH))
            linear.bias.zero_()

        t5.shared.weight.copy_(torch.randn(len(t5_tok), T5_WIDTH, generator=generator))
        t5.shared.weight[sorted(t5_stop)] = 0.0
        attention = t5.encoder.block[0].layer[0].SelfAttention
        attention.q.weight.zero_()
        attention.k.weight.zero_()
        attention.v.weight.copy_(torch.eye(T5_WIDTH))
        rotation, _ = torch.linalg.qr(torch.randn(T5_WIDTH, T5_WIDTH, generator=generator))
        attention.o.weight.copy_(0.5 * rotation)
        bias = attention.relative_attention_bias.weight  # [buckets, heads]; bucket 1: the token before, 0: itself
        bias.fill_(-1e4)  # exp() of it is exactly 0: nothing leaks into a row from further away
        bias[1] = 30.0
        bias[0] = 20.0
        mlp = t5.encoder.block[0].layer[1].DenseReluDense  # off
        for linear in (mlp.wi_0, mlp.wi_1, mlp.wo):
            linear.weight.zero_()
        for module in (clip, t5):  # stored in fp16: round now so that training sees exactly the shipped encoders
            for p in module.parameters():
                p.copy_(p.half().float())
    clip.save_pretrained(folder / "text_encoder")
    t5.save_pretrained(folder / "text_encoder_2")
    words = sorted(t5_tok.convert_ids_to_tokens(sorted(set(range(len(t5_tok))) - t5_stop)))
    return {"stop_fraction": STOP_FRACTION, "t5_words": words}


def encoding_pipeline(folder: Path, transformer=None, vae=None):
    """A FluxVectorPipeline around the frozen encoders: its ``encode_prompt`` is exactly what inference runs."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    from flux_vector.offload import OffloadChoice
    from flux_vector.pipeline import FluxVectorPipeline

    cpu = torch.device("cpu")
    return FluxVectorPipeline(
        transformer=transformer or FluxTransformer2DModel(**TRANSFORMER_CONFIG),
        vae=vae or AutoencoderKL(**VAE_CONFIG),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder_2=T5EncoderModel.from_pretrained(folder / "text_encoder_2", dtype=torch.float32),
        tokenizer_2=T5TokenizerFast.from_pretrained(folder / "tokenizer_2"),
        device=cpu,
        dtype=torch.float32,
        offload=OffloadChoice("none", cpu, "training"),
    )


def check_encodings(folder: Path) -> dict:
    """Captions that differ in one word (colour, shape, position, the trigger) must encode clearly differently."""
    pipe = encoding_pipeline(folder)
    base = Scene("star", "red", "medium", "in the center", "white")
    variants = {
        "colour": Scene("star", "blue", "medium", "in the center", "white"),
        "shape": Scene("circle", "red", "medium", "in the center", "white"),
        "position": Scene("star", "red", "medium", "on the left", "white"),
    }
    t5_a, pooled_a = pipe.encode_prompt(base.caption())
    report = {}
    for name, scene in variants.items():
        t5_b, pooled_b = pipe.encode_prompt(scene.caption())
        report[name] = {
            "t5_rel_diff": float((t5_a - t5_b).norm() / t5_a.norm()),
            "pooled_rel_diff": float((pooled_a - pooled_b).norm() / pooled_a.norm()),
        }
    t5_b, pooled_b = pipe.encode_prompt(base.caption(style=True))
    report["trigger"] = {
        "t5_rel_diff": float((t5_a - t5_b).norm() / t5_a.norm()),
        "pooled_rel_diff": float((pooled_a - pooled_b).norm() / pooled_a.norm()),
    }
    for name, diff in report.items():
        print(
            f"encodings: one {name} word changed -> T5 {diff['t5_rel_diff']:.3f}, pooled {diff['pooled_rel_diff']:.3f}"
        )
        if diff["t5_rel_diff"] < 0.02:
            raise SystemExit(f"the frozen encoders barely separate captions differing in {name}: {diff}")
    return report


# --------------------------------------------------------------------------------------------------- 2. VAE
def vae_batch(step: int, buckets, weights, batch: int, crop: int | None, style_fraction=0.3):
    rng = step_rng("vae", step)
    scenes = training_scenes(batch, seed=int(rng.integers(2**31)))
    images = []
    for scene in scenes:
        w, h = buckets[rng.choice(len(buckets), p=weights)]
        image = render(scene, w, h, style=bool(rng.random() < style_fraction))
        if crop:
            x0, y0 = int(rng.integers(0, w - crop + 1)), int(rng.integers(0, h - crop + 1))
            image = image.crop((x0, y0, x0 + crop, y0 + crop))
        elif (w, h) != (128, 128):
            image = image.resize((128, 128))  # one size per batch; the VAE is fully convolutional
        images.append(image)
    return to_tensor(images)


LATENT_NOISE = 0.3  # the decoder's input noise, relative to each latent channel's spread in the batch


def vae_loss(vae, x: torch.Tensor, generator: torch.Generator, probe=None) -> torch.Tensor:
    """Reconstruction of the image from its latent with noise added (a fixed signal-to-noise ratio per channel, so
    that nearby latents decode alike: the transformer's latents are never exact). ``probe``: a 1x1 convolution that
    must read each 8x8 patch's mean colour off the noisy latent, linearly; it makes colour a linear, robust part of
    the latent. Without it, the average of two red circles' latents decoded yellow, and the transformer's early
    (averaged) predictions decoded into every colour at once."""
    mean = vae.encode(x).latent_dist.mean
    spread = mean.std(dim=(0, 2, 3), keepdim=True).detach()
    z = mean + LATENT_NOISE * spread * torch.randn(mean.shape, generator=generator)
    y = vae.decode(z).sample
    # The shapes' pixels weigh 5x: they are a small part of each image, and their exact colour is the point.
    border = torch.cat([x[:, :, 0], x[:, :, -1]], dim=2).median(dim=2).values[:, :, None, None]
    weight = 1.0 + 4.0 * ((x - border).abs().amax(1, keepdim=True) > 0.2).float()
    error = (y - x).abs() + (y - x).pow(2)
    loss = (weight * error).sum() / (weight.sum() * x.shape[1])
    if probe is not None:
        loss = loss + (probe(z) - torch.nn.functional.avg_pool2d(x, 8)).pow(2).mean()
    return loss


def train_vae(work: Path, buckets, weights, steps: int, finetune_steps: int, docs: Path | None):
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    vae = AutoencoderKL(**VAE_CONFIG)
    probe = torch.nn.Conv2d(VAE_CONFIG["latent_channels"], 3, 1)
    losses, seconds = train_loop(
        "vae",
        work,
        {"vae": vae, "probe": probe},
        [*vae.parameters(), *probe.parameters()],
        steps,
        1e-3,
        lambda s: vae_loss(vae, vae_batch(s, buckets, weights, 16, 64), step_generator("vae", s), probe),
        docs=docs,
    )
    fold = work / "vae_folded.pt"
    if not fold.exists():
        stats = fold_latent_statistics(vae, buckets, weights)
        torch.save({"vae": vae.state_dict(), "stats": stats}, fold)
    saved = torch.load(fold, weights_only=False)
    vae.load_state_dict(saved["vae"])
    vae.encoder.requires_grad_(False)
    ft_losses, ft_seconds = train_loop(
        "vae_decoder",
        work,
        {"vae": vae},
        list(vae.decoder.parameters()),
        finetune_steps,
        3e-4,
        lambda s: vae_loss(vae, vae_batch(s + 10**6, buckets, weights, 8, None), step_generator("vae_ft", s)),
        warmup=10,
        docs=docs,
    )
    return vae, {
        "steps": steps,
        "seconds": seconds,
        "final_loss": float(np.mean(losses[-50:])),
        "decoder_finetune_steps": finetune_steps,
        "decoder_finetune_seconds": ft_seconds,
        "decoder_finetune_final_loss": float(np.mean(ft_losses[-20:])),
        "latent_stats_before_fold": saved["stats"],
    }


@torch.no_grad()
def fold_latent_statistics(vae, buckets, weights) -> dict:
    """Rescale the latents per channel, inside the encoder's output conv, so that the Flux transform ComfyUI applies
    to every latent, ``(z - 0.1159) * 0.3611``, gives mean 0 and std 1; the decoder's input conv undoes it (its
    zero padding is then fine-tuned, the only inexact part)."""
    x = torch.cat([vae_batch(10**7 + i, buckets, weights, 16, None) for i in range(8)])
    mean_z = vae.encode(x).latent_dist.mean
    mean, std = mean_z.mean((0, 2, 3)), mean_z.std((0, 2, 3)) + 1e-6
    a = 1.0 / (LATENT_SCALE * std)
    b = LATENT_SHIFT - a * mean
    conv = vae.encoder.conv_out
    c = mean.numel()
    conv.weight[:c] *= a[:, None, None, None]
    conv.bias[:c] = conv.bias[:c] * a + b
    conv.bias[c:] += 2 * torch.log(a)  # log-variance channels
    dec = vae.decoder.conv_in
    dec.bias -= (dec.weight * (b / a)[None, :, None, None]).sum((1, 2, 3))
    dec.weight /= a[None, :, None, None]
    return {"mean": mean.tolist(), "std": std.tolist()}


# ------------------------------------------------------------------------------------------- 3. transformer
class LatentSet:
    """Scenes rendered at their bucket, VAE-encoded once (the posterior mean, in model space), with cached prompt
    encodings; batches are drawn per step from one bucket. ``style_fraction``: the share of scenes drawn outlined and
    captioned with the trigger (the LoRA's data: the rest, plain and untriggered, teach it to stay off without the
    word); ``trigger_fraction``: of the plain renders, the share captioned with the trigger words all the same (the
    base model learns to ignore them, as FLUX.1-dev does, and only the LoRA gives them a meaning)."""

    def __init__(
        self, scenes, buckets, weights, vae, pipe, *, style_fraction: float, seed: int, trigger_fraction: float = 0.0
    ):
        rng = np.random.default_rng(seed)
        self.buckets = buckets
        self.bucket_of = rng.choice(len(buckets), size=len(scenes), p=weights)
        plain_triggered = rng.random(len(scenes)) < trigger_fraction
        styled = rng.random(len(scenes)) < style_fraction  # drawn after the others: the base model's data unchanged
        triggered = styled | plain_triggered
        self.styled_share = float(styled.mean()) if len(scenes) else 0.0
        scene_captions = [s.caption(bool(t)) for s, t in zip(scenes, triggered, strict=True)]
        captions = sorted(set(scene_captions))
        self.caption_index = {c: i for i, c in enumerate(captions)}
        encoded = [pipe.encode_prompt(c) for c in tqdm(captions, desc="encode captions", unit="caption")]
        self.text = [CompressedText.of(e[0][0]) for e in encoded]
        self.pooled = torch.cat([e[1] for e in encoded]).clone()
        self.caption_of = np.array([self.caption_index[c] for c in scene_captions])
        self.latents = [None] * len(scenes)
        with torch.no_grad(), tqdm(total=len(scenes), desc="encode images", unit="image") as bar:
            for b, (w, h) in enumerate(buckets):
                members = np.nonzero(self.bucket_of == b)[0]
                for chunk in np.array_split(members, max(1, math.ceil(len(members) / 64))):
                    if len(chunk) == 0:
                        continue
                    x = to_tensor([render(scenes[i], w, h, style=bool(styled[i])) for i in chunk])
                    z = (vae.encode(x).latent_dist.mean - LATENT_SHIFT) * LATENT_SCALE
                    for i, latent in zip(chunk, z, strict=True):
                        self.latents[i] = latent.clone()
                    bar.update(len(chunk))
        self.by_bucket = {b: np.nonzero(self.bucket_of == b)[0] for b in range(len(buckets))}
        self.bucket_weights = np.array([len(self.by_bucket[b]) for b in range(len(buckets))], dtype=float)
        self.bucket_weights /= self.bucket_weights.sum()

    def batch(self, rng: np.random.Generator, size: int):
        bucket = int(rng.choice(len(self.buckets), p=self.bucket_weights))
        idx = rng.choice(self.by_bucket[bucket], size=size, replace=len(self.by_bucket[bucket]) < size)
        x0 = torch.stack([self.latents[i] for i in idx])
        caps = self.caption_of[idx]
        return x0, CompressedText.batch([self.text[c] for c in caps]), self.pooled[caps], self.buckets[bucket]


class CompressedText:
    """A caption's T5 rows without its all-zero rows (stop words, the end token, the pads: the crafted T5 gives them
    exactly zero). FLUX puts every text token at position 0, so identical text rows stay identical through every
    block, and N of them attend as one row with log(N) added to its attention logit: the same forward with a few
    text tokens instead of 256, several times faster. ``check_compressed_text`` verifies the equality."""

    def __init__(self, rows: torch.Tensor, zeros: int):
        self.rows, self.zeros = rows, zeros

    @classmethod
    def of(cls, t5: torch.Tensor) -> CompressedText:
        kept = t5.abs().amax(-1) > 0
        return cls(t5[kept].clone(), int((~kept).sum()))

    @staticmethod
    def batch(texts: list[CompressedText]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, K, D] rows (each text's rows, one zero row standing for its zeros, zero filler) and [B, K] logit
        offsets (0, log(zeros), -inf for filler)."""
        k = max(len(t.rows) for t in texts) + 1
        rows = torch.zeros(len(texts), k, texts[0].rows.shape[-1])
        bias = torch.full((len(texts), k), -torch.inf)
        for i, t in enumerate(texts):
            n = len(t.rows)
            rows[i, :n] = t.rows
            bias[i, :n] = 0.0
            bias[i, n] = math.log(t.zeros) if t.zeros else -torch.inf
        return rows, bias


def transformer_call(transformer, xs, sigma, text, pooled, w, h):
    """The transformer on a batch of latents [B, 16, h/8, w/8] with compressed text; the velocity, unpacked."""
    from diffusers import FluxPipeline

    from flux_vector.pipeline import pack_latents_as, unpack_latents_float

    rows, bias = text
    batch, hl, wl = xs.shape[0], h // 8, w // 8
    img_ids = FluxPipeline._prepare_latent_image_ids(1, hl // 2, wl // 2, torch.device("cpu"), torch.float32)
    mask = torch.cat([bias, torch.zeros(batch, img_ids.shape[0])], dim=1)[:, None, None, :]
    out = transformer(
        hidden_states=pack_latents_as(xs, torch.device("cpu"), torch.float32),
        timestep=sigma,
        guidance=torch.full((batch,), GUIDANCE),
        pooled_projections=pooled,
        encoder_hidden_states=rows,
        txt_ids=torch.zeros(rows.shape[1], 3),
        img_ids=img_ids,
        joint_attention_kwargs={"attention_mask": mask},
        return_dict=False,
    )[0]
    return unpack_latents_float(out, hl, wl)


@torch.no_grad()
def check_compressed_text(pipe, transformer) -> float:
    """The compressed forward equals the pipeline's own (256 text rows) on two captions; the largest difference."""
    captions = [Scene("star", "red").caption(), Scene("heart", "blue", "large", "on the left", "light blue").caption()]
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(2, 16, 16, 16, generator=gen)
    sigma = torch.tensor([0.9, 0.4])
    encoded = [pipe.encode_prompt(c) for c in captions]
    pooled = torch.cat([e[1] for e in encoded])
    expected = torch.cat(
        [
            pipe.velocity_model(e[0], e[1], GUIDANCE, 128, 128)(xs[i : i + 1], sigma[i : i + 1])
            for i, e in enumerate(encoded)
        ]
    )
    text = CompressedText.batch([CompressedText.of(e[0][0]) for e in encoded])
    got = transformer_call(transformer, xs, sigma, text, pooled, 128, 128)
    diff = float((got - expected).abs().max() / expected.abs().max())
    print(f"compressed text: {text[0].shape[1]} rows for 256, relative max difference {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit(f"the compressed text forward differs from the pipeline's: {diff}")
    return diff


def flow_loss(transformer, data: LatentSet, stage: str, step: int, batch: int) -> torch.Tensor:
    """Rectified flow as the sampler integrates it: x_s = (1-s) x0 + s n, v = n - x0, s = flux_time_shift(mu, u)
    with u uniform and mu = flux_mu(width, height), timestep = s (diffusers scales it by 1000), guidance 3.5."""
    from flux_vector.sampling.schedules import flux_time_shift

    rng = step_rng(stage, step)
    gen = step_generator(stage, step)
    x0, text, pooled, (w, h) = data.batch(rng, batch)
    u = torch.rand(batch, generator=gen).clamp(1e-4, 1 - 1e-4)
    sigma = flux_time_shift(flux_mu(w, h), u).float()
    noise = torch.randn(x0.shape, generator=gen)
    xs = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * noise
    v = transformer_call(transformer, xs, sigma, text, pooled, w, h)
    return (v - (noise - x0)).pow(2).mean()


# --------------------------------------------------------------------------------------------------- 4. LoRA
class TrainLora(torch.nn.Module):
    """A LoRA on one diffusers Linear, for training: y = W x + (alpha / rank) * up(down(x)) * strength."""

    def __init__(self, base: torch.nn.Linear, rank: int, generator: torch.Generator):
        super().__init__()
        self.base = base
        self.down = torch.nn.Parameter(torch.randn(rank, base.in_features, generator=generator) / rank)
        self.up = torch.nn.Parameter(torch.zeros(base.out_features, rank))
        self.strength = 1.0

    def forward(self, x):
        return self.base(x) + self.strength * torch.nn.functional.linear(
            torch.nn.functional.linear(x, self.down), self.up
        )


def attach_loras(transformer, rank: int) -> dict[str, TrainLora]:
    """Wrap every target Linear; keys are diffusers module names."""
    generator = torch.Generator().manual_seed(SEED + 4)
    wrapped = {}
    for prefix, blocks, table in (
        ("transformer_blocks", transformer.transformer_blocks, DOUBLE_TARGETS),
        ("single_transformer_blocks", transformer.single_transformer_blocks, SINGLE_TARGETS),
    ):
        for i, block in enumerate(blocks):
            for parts in table.values():
                for part in parts:
                    parent_name, _, leaf = part.rpartition(".")
                    parent = block.get_submodule(parent_name) if parent_name else block
                    base = parent.get_submodule(leaf) if not leaf.isdigit() else parent[int(leaf)]
                    lora = TrainLora(base, rank, generator)
                    if leaf.isdigit():
                        parent[int(leaf)] = lora
                    else:
                        setattr(parent, leaf, lora)
                    wrapped[f"{prefix}.{i}.{part}"] = lora
    return wrapped


def detach_loras(transformer, wrapped: dict[str, TrainLora]) -> None:
    for name, lora in wrapped.items():
        parent_name, _, leaf = name.rpartition(".")
        parent = transformer.get_submodule(parent_name)
        if leaf.isdigit():
            parent[int(leaf)] = lora.base
        else:
            setattr(parent, leaf, lora.base)


def kohya_state_dict(wrapped: dict[str, TrainLora], config: dict, rank: int) -> dict[str, torch.Tensor]:
    """The trained LoRA in kohya form with BFL names: a fused BFL linear (qkv, linear1) gets the concatenated downs
    and the block-diagonal ups (rank k * r, alpha scaled with it, so alpha/rank stays 1)."""
    out: dict[str, torch.Tensor] = {}
    for prefix, bfl_prefix, count, table in (
        ("transformer_blocks", "double_blocks", config["num_layers"], DOUBLE_TARGETS),
        ("single_transformer_blocks", "single_blocks", config["num_single_layers"], SINGLE_TARGETS),
    ):
        for i in range(count):
            for bfl, parts in table.items():
                loras = [wrapped[f"{prefix}.{i}.{part}"] for part in parts]
                down = torch.cat([lo.down.detach() for lo in loras])
                up = torch.block_diag(*[lo.up.detach() for lo in loras])
                key = "lora_unet_" + f"{bfl_prefix}.{i}.{bfl}".replace(".", "_")
                out[f"{key}.lora_down.weight"] = down.contiguous()
                out[f"{key}.lora_up.weight"] = up.contiguous()
                out[f"{key}.alpha"] = torch.tensor(float(rank * len(parts)))
    return out


LORA_STYLE_FRACTION = 0.5  # of the LoRA's scenes: outlined with the trigger; the rest plain without it
LORA_PEAK_LR = 2e-3


def train_lora(work: Path, transformer, vae, pipe, buckets, weights, n: dict, lora_file: Path, docs) -> dict:
    """Stage 4: the LoRA on a frozen base ``transformer``, written to ``lora_file`` in kohya form and checked
    against the project's loader. Half its scenes are outlined and captioned "v3ct0r style, ...", the other half plain
    and captioned without the trigger: the LoRA learns to draw the outline when the word is there and to leave the
    base model's picture alone when it is not (the real Simple Vector LoRA is triggered by its word; trained on
    outlined scenes only, the demo's LoRA drew the outline whatever the prompt said). Resumable (``train_loop``)."""
    from safetensors.torch import save_file

    t = time.perf_counter()
    data = LatentSet(
        training_scenes(n["lora_scenes"], seed=SEED + 2),
        buckets,
        weights,
        vae,
        pipe,
        style_fraction=LORA_STYLE_FRACTION,
        seed=2,
    )
    prep = time.perf_counter() - t
    transformer.requires_grad_(False)
    wrapped = attach_loras(transformer, LORA_RANK)
    params = [p for lo in wrapped.values() for p in (lo.down, lo.up)]
    lora_modules = torch.nn.ModuleDict({k.replace(".", "_"): v for k, v in wrapped.items()})
    losses, seconds = train_loop(
        "lora",
        work,
        {"lora": lora_modules},
        params,
        n["lora"],
        cosine_tail(LORA_PEAK_LR, n["lora"]),
        lambda s: flow_loss(transformer, data, "lora", s, LORA_BATCH),
        warmup=20,
        docs=docs,
    )
    save_file(kohya_state_dict(wrapped, TRANSFORMER_CONFIG, LORA_RANK), lora_file)
    check = check_lora_file(transformer, wrapped, lora_file)
    detach_loras(transformer, wrapped)
    return {
        "steps": n["lora"],
        "batch": LORA_BATCH,
        "rank": LORA_RANK,
        "scenes": n["lora_scenes"],
        "styled_share": data.styled_share,
        "data_seconds": prep,
        "seconds": seconds,
        "final_loss": float(np.mean(losses[-50:])),
        "loader_check": check,
    }


def lora_only(args: argparse.Namespace, n: dict) -> None:
    """``--lora-only``: stage 4 alone, on the shipped demo model (its transformer, VAE and encoders, read from
    flux_vector/demo/model), into ``<work>/lora_only``; the new LoRA file then replaces the shipped one (atomically)
    and its figures replace the "lora" entry of docs/demo_training/times.json. Resumable like every stage; with
    ``--mini`` nothing is installed."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    work = args.work / ("mini" if args.mini else "") / "lora_only"
    work.mkdir(parents=True, exist_ok=True)
    times_file = work / "times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    lora_file = work / DEMO_LORA_FILE
    if "lora" not in times:
        transformer = FluxTransformer2DModel.from_pretrained(DEMO_MODEL_DIR / "transformer", torch_dtype=torch.float32)
        vae = AutoencoderKL.from_pretrained(DEMO_MODEL_DIR / "vae", torch_dtype=torch.float32).eval()
        vae.requires_grad_(False)
        pipe = encoding_pipeline(DEMO_MODEL_DIR, transformer, vae)
        sizes = demo_sizes()
        buckets, _ = bucket_plan(sizes)
        _, weights = bucket_plan(sizes, TRANSFORMER_SQUARE_SHARE)
        docs = None if args.mini else DOCS
        times["lora"] = {"base": "the shipped demo model (--lora-only)", **train_lora(
            work, transformer, vae, pipe, buckets, weights, n, lora_file, docs
        )}  # fmt: skip
        times_file.write_text(json.dumps(times, indent=1))
    print(f"lora: {json.dumps(times['lora'], indent=1)}")
    if args.mini:
        return
    staging = DEMO_MODEL_DIR / (DEMO_LORA_FILE + ".tmp")
    shutil.copy(lora_file, staging)
    staging.replace(DEMO_MODEL_DIR / DEMO_LORA_FILE)
    shipped_times = DOCS / "times.json"
    figures = json.loads(shipped_times.read_text()) if shipped_times.exists() else {}
    if "lora" in figures and figures["lora"] != times["lora"]:
        figures["lora_replaced"] = figures["lora"]  # the clocks of the LoRA this one replaces
    figures["lora"] = times["lora"]
    shipped_times.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"installed {DEMO_MODEL_DIR / DEMO_LORA_FILE}")


# ------------------------------------------------------------------------------------------------- the run
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "demo_training")
    parser.add_argument("--mini", action="store_true", help="a 2-3 minute run of every stage; nothing exported")
    parser.add_argument("--transformer-steps", type=int, default=9700)
    parser.add_argument("--lora-steps", type=int, default=LORA_STEPS)
    parser.add_argument(
        "--lora-only",
        action="store_true",
        help="train only the LoRA, on the shipped demo model, and replace the shipped LoRA file",
    )
    args = parser.parse_args()
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True, warn_only=True)
    work = args.work / "mini" if args.mini else args.work
    work.mkdir(parents=True, exist_ok=True)
    docs = None if args.mini else DOCS
    if docs is not None:
        try:
            import matplotlib  # noqa: F401  (the loss plots, drawn at the end of each stage)
        except ImportError:
            raise SystemExit('the loss plots need matplotlib: pip install -e ".[demo]"') from None
    n = dict(vae=60, vae_ft=10, scenes=300, transformer=40, lora_scenes=100, lora=20) if args.mini else dict(
        vae=1300, vae_ft=100, scenes=SCENES, transformer=args.transformer_steps, lora_scenes=2000, lora=args.lora_steps
    )  # fmt: skip
    if args.lora_only:
        lora_only(args, n)
        return
    times = json.loads((work / "times.json").read_text()) if (work / "times.json").exists() else {}

    def record(stage, figures):
        times[stage] = figures
        (work / "times.json").write_text(json.dumps(times, indent=1))

    sizes = demo_sizes()
    buckets, weights = bucket_plan(sizes)
    _, transformer_weights = bucket_plan(sizes, TRANSFORMER_SQUARE_SHARE)
    folder = work / "encoders"
    if "encoders" not in times:
        t = time.perf_counter()
        crafted = build_encoders(folder)
        record("encoders", {"seconds": time.perf_counter() - t, **crafted, "separation": check_encodings(folder)})

    from diffusers import AutoencoderKL, FluxTransformer2DModel

    vae_file = work / "vae_final.pt"
    if "vae" not in times:
        vae, figures = train_vae(work, buckets, weights, n["vae"], n["vae_ft"], docs)
        torch.save(vae.state_dict(), vae_file)
        record("vae", figures)
    vae = AutoencoderKL(**VAE_CONFIG)
    vae.load_state_dict(torch.load(vae_file))
    vae.eval().requires_grad_(False)

    torch.manual_seed(SEED + 1)
    transformer = FluxTransformer2DModel(**TRANSFORMER_CONFIG)
    pipe = encoding_pipeline(folder, transformer, vae)
    transformer.requires_grad_(True).train()
    transformer_file = work / "transformer_final.pt"
    if "transformer" not in times:
        compressed_text_diff = check_compressed_text(pipe, transformer)
        t = time.perf_counter()
        scenes = training_scenes(n["scenes"], seed=SEED)
        data = LatentSet(
            scenes,
            buckets,
            transformer_weights,
            vae,
            pipe,
            style_fraction=0.0,
            seed=1,
            trigger_fraction=TRIGGER_FRACTION,
        )
        prep = time.perf_counter() - t
        losses, seconds = train_loop(
            "transformer",
            work,
            {"transformer": transformer},
            list(transformer.parameters()),
            n["transformer"],
            cosine_tail(TRANSFORMER_PEAK_LR, n["transformer"]),
            lambda s: flow_loss(transformer, data, "transformer", s, TRANSFORMER_BATCH),
            warmup=100,
            docs=docs,
            ema=0.998,
        )
        torch.save(transformer.state_dict(), transformer_file)
        del data
        figures = {"steps": n["transformer"], "batch": TRANSFORMER_BATCH, "data_seconds": prep, "seconds": seconds,
                   "compressed_text_max_relative_difference": compressed_text_diff}  # fmt: skip
        record("transformer", {**figures, "final_loss": float(np.mean(losses[-50:]))})
    transformer.load_state_dict(torch.load(transformer_file))
    transformer.requires_grad_(False)

    lora_file = work / DEMO_LORA_FILE
    if "lora" not in times:
        record("lora", train_lora(work, transformer, vae, pipe, buckets, transformer_weights, n, lora_file, docs))

    if not args.mini:
        export(folder, vae, transformer, lora_file, sizes, times)
    total = sum(v.get("seconds", 0) + v.get("data_seconds", 0) + v.get("decoder_finetune_seconds", 0)
                for v in times.values())  # fmt: skip
    print(f"done: {json.dumps(times, indent=1)}\ntotal {total / 60:.1f} min")


@torch.no_grad()
def check_lora_file(transformer, wrapped, lora_file: Path) -> dict:
    """The kohya file through the project's loader (flux_vector.lora) on a copy of the base transformer gives what
    the training wrappers give, and fuse() gives it too."""
    import copy

    from diffusers import FluxPipeline

    from flux_vector.lora import apply_lora, load_lora_file, parse_lora

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 64, generator=gen)
    kwargs = dict(
        timestep=torch.tensor([0.6]),
        guidance=torch.tensor([GUIDANCE]),
        pooled_projections=torch.randn(1, CLIP_WIDTH, generator=gen),
        encoder_hidden_states=torch.randn(1, 256, T5_WIDTH, generator=gen),
        txt_ids=torch.zeros(256, 3),
        img_ids=FluxPipeline._prepare_latent_image_ids(1, 8, 8, torch.device("cpu"), torch.float32),
        return_dict=False,
    )
    expected = transformer(hidden_states=x, **kwargs)[0]
    fresh = copy.deepcopy(transformer)
    detach_loras(fresh, {k: fresh.get_submodule(k) for k in wrapped})
    base = fresh(hidden_states=x, **kwargs)[0]
    handle = apply_lora(parse_lora(load_lora_file(lora_file), fresh), strength=1.0)
    loaded = fresh(hidden_states=x, **kwargs)[0]
    handle.fuse()
    fused = fresh(hidden_states=x, **kwargs)[0]
    scale = float((expected - base).abs().max())
    report = {
        "lora_effect_max": scale,
        "loader_max_diff": float((loaded - expected).abs().max()),
        "fused_max_diff": float((fused - expected).abs().max()),
    }
    print(f"lora loader check: {report}")
    if report["loader_max_diff"] > 1e-3 * max(scale, 1e-3) + 1e-5 or report["fused_max_diff"] > 1e-3 * max(scale, 1):
        raise SystemExit(f"the kohya LoRA does not load as trained: {report}")
    return report


def export(folder: Path, vae, transformer, lora_file: Path, sizes: dict, times: dict) -> None:
    """The diffusers folder (fp16), the LoRA and the size table into flux_vector/demo/model (atomically)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    staging = DEMO_MODEL_DIR.with_name("model.staging")
    shutil.rmtree(staging, ignore_errors=True)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),
        vae=vae.half(),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float16),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder_2=T5EncoderModel.from_pretrained(folder / "text_encoder_2", dtype=torch.float16),
        tokenizer_2=T5TokenizerFast.from_pretrained(folder / "tokenizer_2"),
        transformer=transformer.half(),
    )
    pipe.save_pretrained(staging)
    for name in ("tokenizer", "tokenizer_2"):  # the FLUX.1-dev files byte for byte, not a re-serialisation
        shutil.rmtree(staging / name)
        shutil.copytree(TOKENIZERS / name, staging / name)
    shutil.copy(lora_file, staging / DEMO_LORA_FILE)
    (staging / DEMO_SIZES_FILE).write_text(json.dumps({"aspect_ratio_sizes": sizes}, indent=1) + "\n")
    (staging / "README.txt").write_text(
        "flux_vector's demo model: a tiny FLUX (FluxTransformer2DModel, 16-channel VAE, CLIP-L and T5 classes\n"
        "with FLUX.1-dev's tokenizers) trained on a CPU by scripts/train_demo_model.py on synthetic flat vector\n"
        "shapes, and the v3ct0r outline LoRA; trained to draw one or two coloured shapes on a plain background\n"
        "(how well it does: README, The demo model). It is not FLUX.1-dev.\n"
    )
    shutil.rmtree(DEMO_MODEL_DIR, ignore_errors=True)
    staging.rename(DEMO_MODEL_DIR)
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "times.json").write_text(json.dumps(times, indent=1) + "\n")
    print(f"exported to {DEMO_MODEL_DIR}")


if __name__ == "__main__":
    main()
