"""No network at run time: every command that loads or reads a model, run as a real process with a hook that fails
(and records) any DNS lookup or connection that is not to this machine (issue 25, points 2-3).

The hook is a ``sitecustomize`` module on the child's ``PYTHONPATH``: Python imports it at start-up, before any
flux_vector or third-party code, and it replaces ``socket.getaddrinfo``/``gethostbyname*`` and ``socket.connect``.
Each command runs with ``HF_HUB_OFFLINE`` unset (what most users have) and the main ones also with it set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "v3ct0r style, simple vector art, a large red heart in the center on a white background"
# the library noise a user must not see (bitsandbytes' kernels lookup, transformers' warnings and bars, torchao)
NOISE = ("kernels", "bitsandbytes", "torchvision", "Loading weights", "torchao", "Enum subclass", "Traceback")

HOOK = r'''
"""Test hook: any DNS lookup or connection off this machine is recorded and fails."""
import ipaddress, os, socket, traceback

_LOG = os.environ["FLUX_VECTOR_NETWORK_LOG"]
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def _local(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host).strip("[]").split("%")[0]
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _refuse(what, host):
    with open(_LOG, "a") as log:
        log.write(f"{what} {host!r}\n{''.join(traceback.format_stack(limit=25))}\n")
    raise OSError(f"network access to {host!r} refused by the test hook")


def _wrap(name, host_of):
    original = getattr(socket, name)

    def hooked(*args, **kwargs):
        host = host_of(*args, **kwargs)
        if not _local(host):
            _refuse(name, host)
        return original(*args, **kwargs)

    setattr(socket, name, hooked)


_wrap("getaddrinfo", lambda host, *a, **k: host)
_wrap("gethostbyname", lambda host: host)
_wrap("gethostbyname_ex", lambda host: host)
_wrap("create_connection", lambda address, *a, **k: address[0])

_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def _checked(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        _refuse("connect", address[0])


def connect(self, address):
    _checked(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    _checked(self, address)
    return _connect_ex(self, address)


socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
'''


class Hooked:
    """Environment for a child process with the hook installed; ``attempts()`` is what it tried."""

    def __init__(self, folder: Path, *, hub_offline: bool):
        hook_dir = folder / "hook"
        hook_dir.mkdir(parents=True, exist_ok=True)
        (hook_dir / "sitecustomize.py").write_text(HOOK)
        self.log = folder / "network.log"
        self.log.touch()
        paths = [str(hook_dir), str(ROOT), os.environ.get("PYTHONPATH", "")]
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        self.env["FLUX_VECTOR_NETWORK_LOG"] = str(self.log)
        self.env["OMP_NUM_THREADS"] = "1"
        self.env.pop("FLUX_VECTOR_MODEL", None)
        if hub_offline:
            self.env["HF_HUB_OFFLINE"] = "1"
        else:
            self.env.pop("HF_HUB_OFFLINE", None)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, env=self.env, timeout=300, cwd=ROOT)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        proc = self.run(sys.executable, "-m", "flux_vector.cli", *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def attempts(self) -> str:
        return self.log.read_text()


def assert_quiet(proc: subprocess.CompletedProcess) -> None:
    for noise in NOISE:
        assert noise not in proc.stdout + proc.stderr, (noise, proc.stdout + proc.stderr)


def test_the_hook_catches_a_lookup(tmp_path):
    """The hook works: a lookup of a public name is refused and recorded (no packet leaves: it fails first)."""
    hooked = Hooked(tmp_path, hub_offline=False)
    proc = hooked.run(sys.executable, "-c", "import socket; socket.getaddrinfo('huggingface.co', 443)")
    assert proc.returncode != 0 and "refused by the test hook" in proc.stderr
    assert "getaddrinfo 'huggingface.co'" in hooked.attempts()
    proc = hooked.run(sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 80), timeout=1)")
    assert proc.returncode != 0 and "create_connection '192.0.2.1'" in hooked.attempts()


@pytest.mark.parametrize("hub_offline", [False, True], ids=["HF_HUB_OFFLINE unset", "HF_HUB_OFFLINE=1"])
def test_generate_vectorize_and_info_make_no_network_access(tmp_path, hub_offline):
    hooked = Hooked(tmp_path, hub_offline=hub_offline)
    png, svg = tmp_path / "heart.png", tmp_path / "heart.svg"
    proc = hooked.cli("generate", "--prompt", PROMPT, "--aspect-ratio", "1:1", "--steps", "2", "--out", str(png))
    assert_quiet(proc)
    assert png.exists()
    assert_quiet(hooked.cli("vectorize", str(png), "--out", str(svg)))
    assert svg.read_text().startswith("<")
    info = hooked.cli("info", str(png))
    assert "Steps: 2" in info.stdout
    assert hooked.attempts() == ""


def test_batch_makes_no_network_access(tmp_path):
    hooked = Hooked(tmp_path, hub_offline=False)
    rows = tmp_path / "rows.txt"
    rows.write_text(PROMPT + "\n")
    out = tmp_path / "out"
    proc = hooked.cli("batch", str(rows), "--out", str(out), "--steps", "2", "--aspect-ratio", "1:1")
    assert_quiet(proc)
    assert len(list(out.glob("*.png"))) == 1
    assert hooked.attempts() == ""


def test_serve_makes_no_network_access(tmp_path):
    """The demo model loaded, fused and warmed up, then a request served end to end."""
    hooked = Hooked(tmp_path, hub_offline=False)
    server = ServerProcess(tmp_path / "jobs.sqlite3", args=("--model", "demo"), warmup=True)
    server.env = hooked.env
    server.start()
    try:
        body = {"prompt": PROMPT, "steps": 2, "aspect_ratio": "1:1"}
        answer = httpx.post(server.base_url + "/Simple_Vector_Flux", json=body, timeout=120)
        assert answer.status_code == 200 and answer.content[:4] == b"\x89PNG", answer.text[:300]
    finally:
        server.stop()
    assert_quiet(subprocess.CompletedProcess([], 0, server.log(), ""))
    assert hooked.attempts() == ""


def test_worker_makes_no_network_access(tmp_path, redis_server):
    from tests.redis_cluster import WorkerProcess

    hooked = Hooked(tmp_path, hub_offline=False)
    worker = WorkerProcess(redis_server.url(7), tmp_path, "w1", args=("--model", "demo"), warmup=True)
    worker.env = {**hooked.env, "OMP_NUM_THREADS": "1"}
    worker.start().wait_ready()
    try:
        assert worker.health()["status"] == "ok"
    finally:
        worker.stop()
    assert hooked.attempts() == ""


SCRIPT = """
from flux_vector import FluxVectorPipeline
pipe = FluxVectorPipeline.from_pretrained("demo")
result = pipe("a red heart on a white background", steps=2, aspect_ratio="1:1")
print("size", result.image.size)
"""


def test_the_python_api_makes_no_network_access_and_no_noise(tmp_path):
    """``from_pretrained`` without HF_HUB_OFFLINE: no Hub request (bitsandbytes never imported) and only its own
    lines (model, offload, lora), no bitsandbytes/transformers/torchao output."""
    hooked = Hooked(tmp_path, hub_offline=False)
    proc = hooked.run(sys.executable, "-c", SCRIPT + "import sys; print('bnb', 'bitsandbytes' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert "size (128, 128)" in proc.stdout and "bnb False" in proc.stdout
    assert_quiet(proc)
    assert hooked.attempts() == ""


def test_8bit_imports_bitsandbytes_without_a_hub_request(tmp_path):
    """Asked for 8-bit, bitsandbytes is imported, with its ``kernels`` lookup (a 4-bit CPU kernel) kept off."""
    pytest.importorskip("bitsandbytes")
    hooked = Hooked(tmp_path, hub_offline=False)
    code = (
        "import json, sys, torch\n"
        "from flux_vector.quantize import quantize_linears_8bit, is_quantized\n"
        "model = torch.nn.Sequential(torch.nn.Linear(8, 8))\n"
        "print(json.dumps([is_quantized(model), quantize_linears_8bit(model, 'cpu'), is_quantized(model),"
        " 'kernels' in sys.modules]))\n"
    )
    proc = hooked.run(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [False, 1, True, False]
    assert "kernels" not in proc.stderr
    assert hooked.attempts() == ""


NF4_SCRIPT = """
from flux_vector import FluxVectorPipeline
pipe = FluxVectorPipeline.from_pretrained("tiny", quantize="nf4", quantize_text="nf4", device="cpu")
result = pipe("a red heart", steps=1, width=64, height=64)
print("size", result.image.size)
"""


@pytest.mark.slow
def test_nf4_loads_and_generates_without_a_hub_request(tmp_path):
    """nf4 (bitsandbytes' 4-bit layers, whose CPU backend would ask ``kernels`` for a kernel on the Hub) loads,
    quantizes and generates with no network access and none of bitsandbytes' noise."""
    pytest.importorskip("bitsandbytes")
    hooked = Hooked(tmp_path, hub_offline=False)
    proc = hooked.run(sys.executable, "-c", NF4_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    assert "size (64, 64)" in proc.stdout
    ours = [line for line in proc.stdout.splitlines() if line.startswith("quantize: ")]
    assert any("bitsandbytes nf4" in line for line in ours), proc.stdout  # the log lines name the tier
    others = "\n".join(line for line in proc.stdout.splitlines() if line not in ours)
    assert_quiet(subprocess.CompletedProcess([], 0, others, proc.stderr))
    assert hooked.attempts() == ""
