"""Issue 31 point 5: a fused LoRA's W0 is kept where a strength switch is cheap (on the weights' device when the
copies fit, else pinned host memory), in the weight's own dtype, and reaches the weight's device as it is, converted
to float32 there (the CPU never converts a bf16 W0 on its way to the GPU)."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flux_vector.lora import fuse as fuse_module
from flux_vector.lora.base import LoraPatch
from flux_vector.lora.fuse import W0_DEVICE, W0_HEADROOM, W0_PINNED, choose_w0_home, write_fused_weight

GiB = 1024**3


def test_w0_lives_on_the_device_when_it_fits_else_in_pinned_memory():
    cuda = torch.device("cuda")
    assert choose_w0_home(cuda, 23 * GiB, 80 * GiB) == W0_DEVICE  # H100: FLUX.1-dev's block linears fit beside it
    assert choose_w0_home(cuda, 23 * GiB, 23 * GiB + W0_HEADROOM - 1) == W0_PINNED
    assert choose_w0_home(cuda, 1 * GiB, None) == W0_PINNED  # free memory unknown: never risk the device
    assert choose_w0_home(torch.device("cpu"), 23 * GiB, None) == W0_DEVICE  # beside CPU weights


class _Copies(TorchDispatchMode):
    """Records every copy between tensors: (op, source device, source dtype, destination device, destination dtype)."""

    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name == "copy_":
            dst, src = args[0], args[1]
            self.copies.append(("copy_", src.device.type, src.dtype, dst.device.type, dst.dtype, False))
        elif name == "_to_copy":
            src = args[0]
            blocking = not kwargs.get("non_blocking", False)
            self.copies.append(("_to_copy", src.device.type, src.dtype, out.device.type, out.dtype, blocking))
        return out


def _patch(rows: int, cols: int) -> LoraPatch:
    g = torch.Generator().manual_seed(0)
    up, down = torch.randn(rows, 2, generator=g), torch.randn(2, cols, generator=g)
    return LoraPatch(target="x", module=torch.nn.Identity(), down=down, up=up, offset=0, scale=0.5, key="x")


def test_a_rebuild_moves_w0_in_its_own_dtype_and_converts_on_the_device():
    """ "meta" stands in for the GPU (copies to it are real dispatcher calls, no CUDA needed): W0 (bf16, host) must
    travel as bf16 with a non-blocking copy, and no copy may take host data straight into the float32 scratch."""
    weight = torch.empty(8, 4, dtype=torch.bfloat16, device="meta")
    w0 = torch.randn(8, 4).to(torch.bfloat16)
    with _Copies() as seen:
        write_fused_weight(weight, w0, [(0.7, [_patch(8, 4)])])
    w0_moves = [c for c in seen.copies if c[1] == "cpu" and c[2] == torch.bfloat16]
    assert w0_moves == [("_to_copy", "cpu", torch.bfloat16, "meta", torch.bfloat16, False)], seen.copies
    assert ("copy_", "meta", torch.bfloat16, "meta", torch.float32, False) in seen.copies  # converted on the device


def test_fuse_keeps_w0_in_pinned_memory_in_the_weight_dtype(monkeypatch, tiny_dir):
    from diffusers import FluxTransformer2DModel

    from flux_vector.lora import load_lora
    from flux_vector.tiny import KOHYA_LORA

    pinned = []

    def fake_pinned_empty(shape, dtype):  # torch.empty(pin_memory=True) needs CUDA: the one fake
        tensor = torch.empty(shape, dtype=dtype)
        pinned.append(tensor)
        return tensor

    monkeypatch.setattr(fuse_module, "_pinned_empty", fake_pinned_empty)
    model = FluxTransformer2DModel.from_pretrained(tiny_dir, subfolder="transformer", dtype=torch.bfloat16)
    handle = load_lora(tiny_dir / KOHYA_LORA, model, strength=0.8)
    originals = {id(w): w.base.weight.detach().clone() for w in handle.modules}
    handle.fuse(original_device=W0_PINNED)
    w0s = [w._w0 for w in handle.modules]
    assert len(pinned) == len(w0s) and all(any(w0 is p for p in pinned) for w0 in w0s)
    assert all(w0.dtype == torch.bfloat16 for w0 in w0s)  # half the bytes of a float32 copy
    assert all(torch.equal(w._w0, originals[id(w)]) for w in handle.modules)
    handle.set_strength(-0.5)  # a rebuild from the kept W0
    handle.unfuse()
    assert all(torch.equal(w.base.weight, originals[id(w)]) for w in handle.modules)


def test_fuse_on_the_cpu_keeps_w0_beside_the_weights(tiny_dir):
    from diffusers import FluxTransformer2DModel

    from flux_vector.lora import load_lora
    from flux_vector.tiny import KOHYA_LORA

    model = FluxTransformer2DModel.from_pretrained(tiny_dir, subfolder="transformer")
    handle = load_lora(tiny_dir / KOHYA_LORA, model)
    assert handle.w0_home() == W0_DEVICE
    handle.fuse()
    assert all(w._w0.device == w.base.weight.device and w._w0.dtype == w.base.weight.dtype for w in handle.modules)
