"""Experiment for issue 18: does a crafted frozen text encoder (bag-of-words pooled vector) make a tiny FLUX follow
colour/shape words where random frozen encoders do not?  Same data, steps and seed for both arms.
usage: python exp.py crafted|random STEPS"""
import sys, time, math, json
import numpy as np, torch
from pathlib import Path
from diffusers import AutoencoderKL, FluxTransformer2DModel, FluxPipeline
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast
from flux_vector.offload import OffloadChoice
from flux_vector.pipeline import FluxVectorPipeline, pack_latents_as, unpack_latents_float
from flux_vector.sampling import flux_mu
from flux_vector.sampling.schedules import flux_time_shift
from flux_vector.sampling.sample import LATENT_SCALE, LATENT_SHIFT
from flux_vector.demo.shapes import Scene, render, COLOURS, SHAPES
from flux_vector.demo.measure import dominant_colour, classify_shape
from flux_vector.request import parse_request

arm, STEPS = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
MODEL = Path("/work/wt18/flux_vector/demo/model")
clip_tok = CLIPTokenizer.from_pretrained(MODEL / "tokenizer")
t5_tok = T5TokenizerFast.from_pretrained(MODEL / "tokenizer_2")
H_CLIP, H_T5 = 64, 32
clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(clip_tok), hidden_size=H_CLIP, intermediate_size=64,
    num_attention_heads=1, num_hidden_layers=1, max_position_embeddings=77, projection_dim=H_CLIP,
    initializer_range=0.5 if arm == "random" else 0.02, bos_token_id=clip_tok.bos_token_id,
    eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id)).eval()
t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=H_T5, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
    dropout_rate=0.0, feed_forward_proj="gated-gelu", pad_token_id=t5_tok.pad_token_id,
    eos_token_id=t5_tok.eos_token_id)).eval()
if arm == "crafted":
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        clip.embeddings.token_embedding.weight.copy_(torch.randn(len(clip_tok), H_CLIP, generator=g))
        clip.embeddings.position_embedding.weight.zero_()
        layer = clip.encoder.layers[0]
        a = layer.self_attn
        for lin in (a.q_proj, a.k_proj):  # q=k=0: uniform attention over the causal prefix
            lin.weight.zero_(); lin.bias.zero_()
        for lin in (a.v_proj, a.out_proj):
            lin.weight.copy_(torch.eye(H_CLIP)); lin.bias.zero_()
        layer.mlp.fc2.weight.zero_(); layer.mlp.fc2.bias.zero_()
        # EOS output = emb_eos + mean_j LN(emb_j): a bag of words; then the final LayerNorm
        t5.shared.weight.copy_(torch.randn(len(t5_tok), H_T5, generator=g))
        blk = t5.encoder.block[0]
        blk.layer[0].SelfAttention.o.weight.zero_()
        blk.layer[1].DenseReluDense.wo.weight.zero_()  # T5 output = RMSNorm(token embedding)
cpu = torch.device("cpu")
vae = AutoencoderKL.from_pretrained(MODEL / "vae").eval()
cfg = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=32,
           num_attention_heads=3, joint_attention_dim=H_T5, pooled_projection_dim=H_CLIP, guidance_embeds=True,
           axes_dims_rope=(8, 12, 12))
transformer = FluxTransformer2DModel(**cfg)
pipe = FluxVectorPipeline(transformer=transformer, vae=vae, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5,
                          tokenizer_2=t5_tok, device=cpu, dtype=torch.float32, offload=OffloadChoice("none", cpu, "x"))
transformer.requires_grad_(True).train()

def caption(c, s):
    return f"simple vector art, a {c} {s} on a white background"

a_, _pa = pipe.encode_prompt(caption("red", "star")); b_, _pb = pipe.encode_prompt(caption("blue", "star"))
c_, _pc = pipe.encode_prompt(caption("red", "circle"))
print(arm, "pooled rel diff colour %.3f shape %.3f" % (((_pa - _pb).norm() / _pa.norm()).item(), ((_pa - _pc).norm() / _pa.norm()).item()))
rng = np.random.default_rng(0)
S = 64
combos = [(c, s) for c in COLOURS for s in SHAPES]
scenes = []
for rep in range(24):
    for c, s in combos:
        scenes.append(Scene(s, c, size=("medium", "large")[rep % 2], jitter=(float(rng.uniform(-.05, .05)), float(rng.uniform(-.05, .05)), float(rng.uniform(-.1, .1)))))
caps = sorted({caption(c, s) for c, s in combos})
enc = {cp: pipe.encode_prompt(cp) for cp in caps}
with torch.no_grad():
    lat = []
    for i in range(0, len(scenes), 128):
        x = torch.stack([torch.from_numpy(np.asarray(render(sc, S, S), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1) for sc in scenes[i:i+128]])
        lat.append((vae.encode(x).latent_dist.mean - LATENT_SHIFT) * LATENT_SCALE)
    lat = torch.cat(lat)
t5s = torch.cat([enc[caption(sc.colour, sc.shape)][0] for sc in scenes]); pooled = torch.cat([enc[caption(sc.colour, sc.shape)][1] for sc in scenes])
print("data", lat.shape, t5s.shape, pooled.shape, flush=True)
opt = torch.optim.AdamW(transformer.parameters(), lr=1e-3, weight_decay=0)
img_ids = FluxPipeline._prepare_latent_image_ids(1, S // 16, S // 16, cpu, torch.float32)
txt_ids = torch.zeros(t5s.shape[1], 3)
B = 32; mu = flux_mu(S, S); t0 = time.time()
for step in range(STEPS):
    for gp in opt.param_groups: gp["lr"] = 1e-3 * min(1, (step + 1) / 50)
    idx = torch.from_numpy(rng.choice(len(scenes), B))
    x0 = lat[idx]; u = torch.rand(B).clamp(1e-4, 1 - 1e-4); sig = flux_time_shift(mu, u).float()
    n = torch.randn_like(x0); xs = (1 - sig[:, None, None, None]) * x0 + sig[:, None, None, None] * n
    out = transformer(hidden_states=pack_latents_as(xs, cpu, torch.float32), timestep=sig, guidance=torch.full((B,), 3.5),
                      pooled_projections=pooled[idx], encoder_hidden_states=t5s[idx], txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
    loss = (unpack_latents_float(out, S // 8, S // 8) - (n - x0)).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 100 == 0: print(arm, step, round(loss.item(), 4), round(time.time() - t0), "s", flush=True)
transformer.eval().requires_grad_(False)
ok_c = ok_s = 0; res = []
for i, (c, s) in enumerate(combos):
    r = pipe.generate(parse_request({"prompt": caption(c, s), "width": S, "height": S, "steps": 12, "seed": i}), progress=False)
    im = r.image; dc, cs = dominant_colour(im), classify_shape(im)
    ok_c += dc == c; ok_s += cs == s
    if i % 7 == 0: im.resize((128, 128)).save(f"/tmp/exp18/{arm}_{c}_{s}.png")
print(json.dumps({"arm": arm, "steps": STEPS, "train_s": round(time.time() - t0), "colour_pct": 100 * ok_c / len(combos), "shape_pct": 100 * ok_s / len(combos)}), flush=True)
