"""The files a ComfyUI user has (``flux_vector/single_file/``): a BFL transformer in fp8 or full precision, with or
without ComfyUI's prefix, the all-in-one checkpoint, ``clip_l`` / ``t5xxl_*`` / ``ae`` files given one by one or found
in a ComfyUI ``models/`` folder, FLUX.1-dev's configs and tokenizers shipped. Files are written from the tiny model
(``single_file/write.py``); each generates, and lossless files give the pixels of the diffusers folder's run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from flux_vector import FluxVectorPipeline
from flux_vector.models import WeightsNotFound
from flux_vector.single_file import ComponentFilesError, plan_files, write
from flux_vector.single_file.load import CONFIG_DIR, fp8_tier_available, tokenizer_dir
from flux_vector.single_file.vae_names import vae_from_ldm, vae_to_ldm

RUN = dict(width=64, height=64, steps=2, seed=7, progress=False)
QUIET = {"lora": "none", "log": lambda *_: None}


def psnr(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.fixture(scope="module")
def ref(tiny_dir):
    """The tiny diffusers folder, loaded as it always was: the source of every file, and the runs to compare with."""
    return FluxVectorPipeline.from_pretrained("tiny", **QUIET)


@pytest.fixture(scope="module")
def files(ref, tmp_path_factory):
    """A fake ComfyUI ``models/`` folder and the other files, written from the tiny model."""
    root = tmp_path_factory.mktemp("comfy")
    models = root / "models"
    for folder in ("diffusion_models", "checkpoints", "text_encoders", "vae", "loras"):
        (models / folder).mkdir(parents=True)
    fp8 = torch.float8_e4m3fn
    save_file(write.transformer_tensors(ref.transformer), models / "diffusion_models" / "flux1-tiny.safetensors")
    save_file(write.transformer_tensors(ref.transformer, fp8), root / "flux1-tiny-fp8.safetensors")
    prefixed = write.transformer_tensors(ref.transformer, fp8, prefix="model.diffusion_model.")
    save_file(prefixed, models / "diffusion_models" / "flux1-tiny-fp8.safetensors")
    everything = write.checkpoint_tensors(ref.transformer, ref.text_encoder, ref.text_encoder_2, ref.vae, fp8)
    save_file(everything, models / "checkpoints" / "flux1-tiny-fp8-aio.safetensors")
    save_file(write.clip_l_tensors(ref.text_encoder), models / "text_encoders" / "clip_l.safetensors")
    save_file(write.t5_tensors(ref.text_encoder_2), models / "text_encoders" / "t5xxl_fp16.safetensors")
    save_file(write.t5_tensors(ref.text_encoder_2, fp8), models / "text_encoders" / "t5xxl_fp8_e4m3fn.safetensors")
    save_file(write.ae_tensors(ref.vae), models / "vae" / "ae.safetensors")
    # the same components in bf16, and a T5 in fp8 alone, each in a folder of its own
    bf16 = root / "bf16"
    bf16.mkdir()
    save_file(write.transformer_tensors(ref.transformer, torch.bfloat16), bf16 / "flux1-tiny-bf16.safetensors")
    save_file(write.clip_l_tensors(ref.text_encoder, torch.bfloat16), bf16 / "clip_l.safetensors")
    save_file(write.t5_tensors(ref.text_encoder_2, torch.bfloat16), bf16 / "t5xxl_bf16.safetensors")
    save_file(write.ae_tensors(ref.vae, torch.bfloat16), bf16 / "ae.safetensors")
    from flux_vector.tiny import KOHYA_LORA, tiny_checkpoint_dir

    (models / "loras" / KOHYA_LORA).write_bytes((tiny_checkpoint_dir() / KOHYA_LORA).read_bytes())
    return root


@pytest.fixture(scope="module")
def transformer_file_run(files):
    """The f32 BFL transformer with the folder's text encoders and VAE (base="tiny"): what component files match."""
    model = files / "models" / "diffusion_models" / "flux1-tiny.safetensors"
    return FluxVectorPipeline.from_pretrained(str(model), base="tiny", **QUIET)("a red fox", **RUN)


# ------------------------------------------------------------------------------------------ shipped configs


def test_the_shipped_tokenizers_are_clip_l_and_t5():
    from transformers import CLIPTokenizer, T5TokenizerFast

    clip = CLIPTokenizer.from_pretrained(tokenizer_dir(), subfolder="tokenizer")
    t5 = T5TokenizerFast.from_pretrained(tokenizer_dir(), subfolder="tokenizer_2")
    assert len(clip) == json.loads((CONFIG_DIR / "text_encoder.json").read_text())["vocab_size"] == 49408
    assert len(t5) == 32100 and t5.vocab_size == 32100
    assert json.loads((CONFIG_DIR / "text_encoder_2.json").read_text())["vocab_size"] >= len(t5)
    # CLIP's start/end tokens and BPE words, T5's sentencepiece pieces and end token
    assert clip("a cat").input_ids == [49406, 320, 2368, 49407]
    assert t5("a cat").input_ids == [3, 9, 1712, 1]
    # an API-only process (serve on Redis) counts a single-file model's prompt tokens with them
    from flux_vector.server.serve import prompt_token_counter

    counter = prompt_token_counter("flux1-dev-fp8.safetensors", None, log=print)
    assert counter is not None and counter.count("a cat") == len(t5("a cat").input_ids) - 1  # no end token


@pytest.mark.slow  # builds the 12B transformer and T5-XXL on the meta device: ~10 s on a CPU
def test_the_shipped_configs_build_flux_dev_at_its_sizes():
    """Each shipped config builds its model (on the meta device) with FLUX.1-dev's published parameter counts."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    def config(name):
        return json.loads((CONFIG_DIR / f"{name}.json").read_text())

    with init_empty_weights():
        models = {
            "transformer": FluxTransformer2DModel.from_config(config("transformer")),
            "vae": AutoencoderKL.from_config(config("vae")),
            "clip": CLIPTextModel(CLIPTextConfig.from_dict(config("text_encoder"))),
            "t5": T5EncoderModel(T5Config.from_dict(config("text_encoder_2"))),
        }
    counts = {  # T5's token embedding once (shared.weight; encoder.embed_tokens is the same tensor once loaded)
        name: sum(p.numel() for n, p in m.named_parameters() if n != "encoder.embed_tokens.weight")
        for name, m in models.items()
    }
    assert 11.85e9 < counts["transformer"] < 11.95e9  # "12B"
    assert 4.70e9 < counts["t5"] < 4.80e9  # T5 v1.1 XXL's encoder
    assert 120e6 < counts["clip"] < 126e6  # CLIP ViT-L/14's text tower
    assert 80e6 < counts["vae"] < 86e6
    assert models["vae"].config.latent_channels == models["transformer"].config.in_channels // 4 == 16


# ------------------------------------------------------------------------------------------ the VAE name table


def test_vae_names_round_trip_and_agree_with_diffusers(ref):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae = ref.vae
    sd = {k: v.detach() for k, v in vae.state_dict().items()}
    ldm = vae_to_ldm(sd, len(vae.config.block_out_channels))
    assert any(k.startswith("decoder.up.0.") for k in ldm) and "encoder.mid.attn_1.q.weight" in ldm
    assert ldm["encoder.mid.attn_1.q.weight"].dim() == 4  # a 1x1 convolution in the BFL file
    shapes = {k: v.shape for k, v in sd.items()}
    back = vae_from_ldm(ldm, shapes, len(vae.config.block_out_channels))
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    # diffusers' own converter reads the same file to the same names and numbers
    theirs = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in ldm.items()}, dict(vae.config))
    assert set(theirs) == set(sd)
    assert all(torch.equal(theirs[k].reshape(sd[k].shape), sd[k]) for k in sd)


# ------------------------------------------------------------------------------------------ loading and pixels


def test_component_files_from_a_comfyui_folder_give_the_folders_pixels(files, transformer_file_run):
    """clip_l / t5xxl_fp16 / ae files (f32, lossless) found in models/: bitwise the run with the folder's."""
    lines = []
    pipe = FluxVectorPipeline.from_pretrained(
        "flux1-tiny.safetensors", base="tiny", comfyui_models=files / "models", lora="none", log=lines.append
    )
    text = "\n".join(lines)
    assert "text_encoders/clip_l.safetensors" in text and "text_encoders/t5xxl_fp16.safetensors" in text
    assert "vae/ae.safetensors" in text and "full precision preferred over fp8" in text
    out = pipe("a red fox", **RUN)
    assert np.array_equal(np.asarray(out.image), np.asarray(transformer_file_run.image))
    assert torch.equal(out.latents, transformer_file_run.latents)


def test_bf16_files_give_the_folders_bf16_pixels(files):
    """The same files in bf16 against the folder loaded in bf16: the same numbers, so the same pixels."""
    bf16 = files / "bf16"
    folder = FluxVectorPipeline.from_pretrained(
        str(bf16 / "flux1-tiny-bf16.safetensors"), base="tiny", dtype="bfloat16", **QUIET
    )
    given = FluxVectorPipeline.from_pretrained(
        str(bf16 / "flux1-tiny-bf16.safetensors"),
        clip_l_file=bf16 / "clip_l.safetensors",
        t5_file=bf16 / "t5xxl_bf16.safetensors",
        vae_file=bf16 / "ae.safetensors",
        base="tiny",
        dtype="bfloat16",
        **QUIET,
    )
    assert given.text_encoder_2.dtype == torch.bfloat16
    a, b = folder("a red fox", **RUN), given("a red fox", **RUN)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


@pytest.mark.parametrize("where", ["bare", "comfyui_prefix"])
def test_fp8_transformer_file_generates(files, ref, where):
    path = files / "flux1-tiny-fp8.safetensors"
    if where == "comfyui_prefix":
        path = files / "models" / "diffusion_models" / "flux1-tiny-fp8.safetensors"
    lines = []
    pipe = FluxVectorPipeline.from_pretrained(str(path), base="tiny", lora="none", log=lines.append)
    assert any("float8" in line for line in lines if line.startswith("quantize"))
    linear = pipe.transformer.transformer_blocks[0].attn.to_q
    weight = getattr(linear, "weight", None)
    if fp8_tier_available():  # helper A's fp8 tier: the weights stay float8
        assert "quantize: fp8" in "\n".join(lines)
        assert weight is None or weight.dtype == torch.float8_e4m3fn
    else:  # no fp8 tier in this build: upcast to the pipeline's dtype, said in the log
        assert weight.dtype == torch.float32
    out = pipe("a red fox", **RUN)
    folder = ref("a red fox", **RUN)
    value = psnr(out.image, folder.image)
    print(f"fp8 file ({where}) vs the f32 folder: PSNR {value:.1f} dB")
    assert 25 < value < float("inf")  # fp8 rounding shows, and does not destroy the picture


@pytest.mark.parametrize("asked", [None, "fp8", "8bit"])
def test_an_fp8_file_keeps_its_float8_weights_for_the_fp8_tier(files, monkeypatch, asked):
    """The contract with the fp8 tier (``quantize.quantize_linears_fp8``): for an fp8 file and no tier asked, the
    loader hands over the linears with the file's float8 weights (not upcast: 12B of them) and says "fp8"; any tier
    asked gets them upcast. Checked on the loader alone, so it holds whether or not this build has the tier."""
    from safetensors.torch import load_file

    from flux_vector.single_file import load

    monkeypatch.setattr(load, "fp8_tier_available", lambda: True)
    path = files / "flux1-tiny-fp8.safetensors"
    parts = load.load_single_file(path, base="tiny", quantize=asked, dtype=torch.float32, log=lambda *_: None)
    assert parts.quantize == (asked or "fp8")
    block = parts.transformer.transformer_blocks[0]
    stored = load_file(str(path))
    q_rows = block.attn.to_q.weight.shape[0]
    if asked in (None, "fp8"):
        assert block.attn.to_q.weight.dtype == torch.float8_e4m3fn
        assert torch.equal(
            block.attn.to_q.weight.view(torch.uint8),
            stored["double_blocks.0.img_attn.qkv.weight"][:q_rows].view(torch.uint8),
        )
        assert block.attn.norm_q.weight.dtype == torch.float32  # norms and biases: the pipeline's dtype
        assert block.attn.to_q.bias.dtype == torch.float32
    else:
        assert all(p.dtype == torch.float32 for p in parts.transformer.parameters())


def test_all_in_one_checkpoint_uses_its_own_encoders_and_vae(files):
    path = files / "models" / "checkpoints" / "flux1-tiny-fp8-aio.safetensors"
    plan = plan_files(path, comfyui_models=files / "models")  # the folder's files lose to the checkpoint's own
    assert {kind: source.path for kind, source in plan.components.items() if source} == dict.fromkeys(
        ("clip_l", "t5", "vae"), path
    )
    assert plan.fp8 and plan.transformer_prefix == "model.diffusion_model."
    pipe = FluxVectorPipeline.from_pretrained(
        "flux1-tiny-fp8-aio.safetensors", comfyui_models=files / "models", base="tiny", **QUIET
    )
    separate = FluxVectorPipeline.from_pretrained(str(files / "flux1-tiny-fp8.safetensors"), base="tiny", **QUIET)
    a, b = pipe("a red fox", **RUN), separate("a red fox", **RUN)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_an_fp8_t5_file_is_upcast(files, tmp_path, transformer_file_run):
    models = tmp_path / "models"
    (models / "text_encoders").mkdir(parents=True)
    fp8_t5 = models / "text_encoders" / "t5xxl_fp8_e4m3fn.safetensors"
    fp8_t5.write_bytes((files / "models" / "text_encoders" / fp8_t5.name).read_bytes())
    pipe = FluxVectorPipeline.from_pretrained(
        str(files / "models" / "diffusion_models" / "flux1-tiny.safetensors"),
        comfyui_models=models,
        base="tiny",
        **QUIET,
    )
    assert all(p.dtype == torch.float32 for p in pipe.text_encoder_2.parameters())
    t5 = pipe.text_encoder_2  # the embedding stored once in the file is one tensor in memory
    assert t5.shared.weight.data_ptr() == t5.encoder.embed_tokens.weight.data_ptr()
    value = psnr(pipe("a red fox", **RUN).image, transformer_file_run.image)
    print(f"fp8 T5 file vs the f32 folder's T5: PSNR {value:.1f} dB")
    assert 25 < value < float("inf")


def _scaled_fp8(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` as ComfyUI's ``*_fp8_scaled`` files store it: each 2-D weight divided by a per-tensor scale, in fp8."""
    out: dict[str, torch.Tensor] = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    for name, tensor in sd.items():
        if name.endswith(".weight") and tensor.dim() == 2:
            scale = (tensor.abs().max().float() / 448).clamp(min=1e-12)
            out[name] = (tensor.float() / scale).to(torch.float8_e4m3fn)
            out[name.removesuffix(".weight") + ".scale_weight"] = scale.reshape(1)
        else:
            out[name] = tensor
    return out


def test_scaled_fp8_files_are_dequantized(files, ref, tmp_path, transformer_file_run):
    """ComfyUI's ``*_fp8_scaled`` files (a per-tensor scale beside each fp8 weight): the scales applied, before the
    fused qkv is split; such a transformer is upcast (not handed to the fp8 tier as float8)."""
    t5_path, model_path = tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors", tmp_path / "flux1-tiny-scaled.safetensors"
    save_file(_scaled_fp8(write.t5_tensors(ref.text_encoder_2)), t5_path)
    save_file(_scaled_fp8(write.transformer_tensors(ref.transformer)), model_path)
    plan = plan_files(model_path)
    assert not plan.fp8 and any("scaled fp8" in note for note in plan.notes)
    pipe = FluxVectorPipeline.from_pretrained(str(model_path), t5_file=t5_path, base="tiny", **QUIET)
    q = ref.text_encoder_2.encoder.block[0].layer[0].SelfAttention.q.weight
    ours = pipe.text_encoder_2.encoder.block[0].layer[0].SelfAttention.q.weight
    assert ours.dtype == torch.float32 and (ours - q).abs().max() <= 0.07 * q.abs().max()  # fp8's rounding, no more
    value = psnr(pipe("a red fox", **RUN).image, transformer_file_run.image)
    print(f"scaled fp8 transformer and T5 vs f32: PSNR {value:.1f} dB")
    assert 25 < value < float("inf")


@pytest.fixture
def shipped_as_tiny(tmp_path, monkeypatch):
    """The package's configs and tokenizers replaced by the tiny model's (FLUX.1-dev's 12B ones do not fit a test),
    and any diffusers folder lookup an error: the code a ComfyUI user's run takes, at the tiny size."""
    from flux_vector.single_file import find, load
    from flux_vector.tiny import tiny_checkpoint_dir

    tiny = tiny_checkpoint_dir()
    configs = tmp_path / "configs"
    configs.mkdir()
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        (configs / f"{name}.json").write_text((tiny / name / "config.json").read_text())
    monkeypatch.setattr(load, "CONFIG_DIR", configs)
    monkeypatch.setattr(load, "tokenizer_dir", lambda: tiny)
    monkeypatch.setattr(find, "resolve_model", _no_folder)


def test_a_transformer_without_guidance_loads_with_the_shipped_config(files, ref, tmp_path, shipped_as_tiny):
    """A FLUX.1-schnell-like file (no guidance embedder) with the shipped (dev) config: guidance_embeds off, said."""
    sd = {k: v for k, v in write.transformer_tensors(ref.transformer).items() if not k.startswith("guidance_in.")}
    save_file(sd, tmp_path / "flux1-tiny-schnell.safetensors")
    lines = []
    pipe = FluxVectorPipeline.from_pretrained(
        str(tmp_path / "flux1-tiny-schnell.safetensors"),
        comfyui_models=files / "models",
        lora="none",
        log=lines.append,
    )
    assert not pipe.transformer.config.guidance_embeds and any("guidance_embeds off" in line for line in lines)


def test_no_base_uses_the_shipped_configs_and_tokenizers(files, shipped_as_tiny, transformer_file_run):
    """Without base, the configs and tokenizers are the package's (here the tiny model's stand in for FLUX.1-dev's):
    no Hub, no diffusers folder, and the pixels of the run whose components came from the folder."""
    lines = []
    pipe = FluxVectorPipeline.from_pretrained(
        "flux1-tiny.safetensors", comfyui_models=files / "models", lora="none", log=lines.append
    )
    assert "configs and tokenizers from FLUX.1-dev's config shipped in flux_vector" in "\n".join(lines)
    out = pipe("a red fox", **RUN)
    assert np.array_equal(np.asarray(out.image), np.asarray(transformer_file_run.image))


def _no_folder(model):
    raise AssertionError(f"resolve_model({model!r}) called: the shipped path needs no diffusers folder")


def test_a_comfyui_lora_file_applies(files, tmp_path):
    """The user's LoRA from models/loras/ on a single-file model (the LoRA tables read the BFL names); the default
    LoRA (Simple Vector) is found there by its file name."""
    from flux_vector.models import DEFAULT_LORA, DEFAULT_LORA_FILE
    from flux_vector.tiny import KOHYA_LORA

    lines = []
    pipe = FluxVectorPipeline.from_pretrained(
        "flux1-tiny.safetensors",
        comfyui_models=files / "models",
        base="tiny",
        lora=str(files / "models" / "loras" / KOHYA_LORA),
        log=lines.append,
    )
    assert any(line.startswith(f"lora: {KOHYA_LORA}") for line in lines)
    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    (models / "loras" / DEFAULT_LORA_FILE).write_bytes((files / "models" / "loras" / KOHYA_LORA).read_bytes())
    lines.clear()
    model = files / "models" / "diffusion_models" / "flux1-tiny.safetensors"
    default = FluxVectorPipeline.from_pretrained(str(model), comfyui_models=models, base="tiny", log=lines.append)
    assert any(line.startswith(f"lora: {DEFAULT_LORA_FILE}") for line in lines)
    assert default.lora_name == DEFAULT_LORA  # records name the LoRA as always
    plain = pipe("a red fox", **RUN, lora_strength=0.0)
    styled = pipe("a red fox", **RUN, lora_strength=1.0)
    assert not np.array_equal(np.asarray(plain.image), np.asarray(styled.image))


# ------------------------------------------------------------------------------------------ choices and errors


def test_the_folder_choice_prefers_full_precision_t5_and_is_deterministic(files, tmp_path):
    plan = plan_files(files / "flux1-tiny-fp8.safetensors", comfyui_models=files / "models")
    assert plan.components["t5"].path.name == "t5xxl_fp16.safetensors"
    assert plan.components["clip_l"].path.name == "clip_l.safetensors"
    assert plan.components["vae"].path.name == "ae.safetensors"
    # a file given by flag wins over the folder's
    chosen = plan_files(
        files / "flux1-tiny-fp8.safetensors",
        comfyui_models=files / "models",
        t5_file=files / "models" / "text_encoders" / "t5xxl_fp8_e4m3fn.safetensors",
    )
    assert chosen.components["t5"].path.name == "t5xxl_fp8_e4m3fn.safetensors"
    assert "given by --t5" in chosen.components["t5"].how


def test_a_missing_component_names_it_and_where_it_looked(files, tmp_path):
    models = tmp_path / "models"
    (models / "text_encoders").mkdir(parents=True)
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors"):
        (models / "text_encoders" / name).write_bytes((files / "models" / "text_encoders" / name).read_bytes())
    # no --base, no VAE anywhere, FLUX.1-dev not in the (empty) Hub cache
    with pytest.raises(WeightsNotFound) as caught:
        FluxVectorPipeline.from_pretrained(str(files / "flux1-tiny-fp8.safetensors"), comfyui_models=models, **QUIET)
    message = str(caught.value)
    assert "VAE" in message and f"{models / 'vae'}/" in message and "--vae FILE" in message
    assert "CLIP" not in message.split("Give")[0]  # only what is missing is named
    with pytest.raises(WeightsNotFound, match=r"--clip-l .*nothere\.safetensors: not found"):
        plan_files(files / "flux1-tiny-fp8.safetensors", clip_l_file=tmp_path / "nothere.safetensors")
    with pytest.raises(WeightsNotFound, match=r"looked in diffusion_models/, unet/, checkpoints/"):
        FluxVectorPipeline.from_pretrained("flux1-nothere.safetensors", comfyui_models=models, **QUIET)


def test_an_ambiguous_folder_asks_for_a_flag(files, tmp_path):
    models = tmp_path / "models"
    (models / "clip").mkdir(parents=True)
    clip = (files / "models" / "text_encoders" / "clip_l.safetensors").read_bytes()
    for name in ("clip_l_a.safetensors", "clip_l_b.safetensors"):
        (models / "clip" / name).write_bytes(clip)
    with pytest.raises(ComponentFilesError, match=r"2 CLIP-L text encoder files .*--clip-l FILE"):
        plan_files(files / "flux1-tiny-fp8.safetensors", comfyui_models=models)


def test_a_lora_or_a_diffusers_file_as_the_model_says_what_it_is(files, tiny_dir):
    from flux_vector.tiny import KOHYA_LORA

    with pytest.raises(ComponentFilesError, match="is a LoRA, not a model: give it as --lora"):
        FluxVectorPipeline.from_pretrained(str(files / "models" / "loras" / KOHYA_LORA), base="tiny", **QUIET)
    diffusers_file = Path(tiny_dir) / "transformer" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(ComponentFilesError, match="in diffusers' names"):
        FluxVectorPipeline.from_pretrained(str(diffusers_file), base="tiny", **QUIET)
    with pytest.raises(ComponentFilesError, match="no FLUX transformer"):
        FluxVectorPipeline.from_pretrained(str(files / "models" / "vae" / "ae.safetensors"), base="tiny", **QUIET)


def test_a_file_that_does_not_fit_the_shipped_config_says_so(files):
    """The tiny model's files with FLUX.1-dev's shipped configs: one error naming the file, the config and the way
    out, before any tensor is placed."""
    with pytest.raises(ComponentFilesError) as caught:
        FluxVectorPipeline.from_pretrained("flux1-tiny.safetensors", comfyui_models=files / "models", **QUIET)
    message = str(caught.value)
    assert "flux1-tiny.safetensors does not fit FLUX.1-dev's config shipped in flux_vector" in message
    assert "--base" in message


def test_component_files_need_a_single_file_model(files):
    with pytest.raises(ValueError, match="vae_file= go with a single-file model"):
        FluxVectorPipeline.from_pretrained("tiny", vae_file=files / "models" / "vae" / "ae.safetensors", **QUIET)


# ------------------------------------------------------------------------------------------ the command line


def test_the_command_line_takes_the_comfyui_folder(files, tmp_path, capsys):
    from flux_vector.cli import main

    out = tmp_path / "fox.png"
    args = ["generate", "--model", "flux1-tiny-fp8.safetensors", "--comfyui-models", str(files / "models")]
    args += ["--base", "tiny", "--lora", "none", "--prompt", "a red fox", "--steps", "2", "--out", str(out)]
    assert main([*args, "--width", "64", "--height", "64"]) == 0
    assert out.is_file()
    # a missing component is one line before any model work
    empty = tmp_path / "empty_models"
    (empty / "diffusion_models").mkdir(parents=True)
    model = empty / "diffusion_models" / "flux1-tiny-fp8.safetensors"
    model.write_bytes((files / "flux1-tiny-fp8.safetensors").read_bytes())
    capsys.readouterr()
    again = ["generate", "--model", model.name, "--comfyui-models", str(empty), "--prompt", "a fox"]
    assert main([*again, "--out", str(tmp_path / "no.png")]) == 2
    err = capsys.readouterr().err
    assert "CLIP-L text encoder" in err and "--comfyui-models" in err and "Traceback" not in err
