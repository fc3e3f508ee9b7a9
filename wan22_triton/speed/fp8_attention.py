"""FP8 self-attention for the Wan experts: cuDNN's fused FP8 flash attention behind a diffusers processor.

At 480p/81 frames the experts' self-attention (32,760 tokens) is about half of every step's FLOPs and, with the
linear layers in FP8 (torchao), two thirds of its time. cuDNN's `sdpa_fp8` graph (Hopper and newer) computes
softmax(Q K^T) V with Q, K, V and the probabilities P in float8 e4m3 and FP32 accumulation. Reached through the
cudnn-frontend Python API (`nvidia-cudnn-frontend`); PyTorch's own SDPA has no FP8 path.

Numerics (why each step):
* one scale per tensor (cuDNN's FP8 SDPA takes scalar descales): amax over the tensor, mapped to e4m3's 448;
* K is centred over the tokens first (per batch item, head and channel): softmax is unchanged by a per-query
  constant, and the centred K has a smaller range, so its FP8 rounding error shrinks (SageAttention's smoothing);
* P is quantized by cuDNN inside the flash loop, where its values are exp(s - running max) <= 1: scale 448;
* the output is FP8 too (cuDNN 9.19 on Hopper offers no BF16 output for this graph: measured), with V's scale:
  every output row is a convex combination of V's rows, so |O| <= amax(V) and it cannot overflow.

`attention` is the kernel of a `self_attention.SelfAttnProcessor` on the blocks' self-attention. The kernel is
the torch custom op `wan22::sdpa_fp8`, so `compile_repeated_blocks(fullgraph=True)` traces through the processor
as one graph (Inductor may fuse RoPE, smoothing and quantization around the op). On CUDA tensors the op runs cuDNN; on CPU
tensors it runs `reference_fp8_attention` (the same roundings in plain PyTorch), which is how
tests/test_fp8_attention.py checks everything around the kernel against diffusers on a machine without a GPU.
"""

from __future__ import annotations

import re
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448


def quantize_per_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x as float8 e4m3 with one scale, and the descale (shape 1,1,1,1, float32) that undoes it."""
    amax = x.detach().abs().amax().float().clamp_min(1e-12)
    return (x.float() * (FP8_MAX / amax)).to(FP8), (amax / FP8_MAX).reshape(1, 1, 1, 1)


def reference_fp8_attention(q8, k8, v8, descale_q, descale_k, descale_v, scale_o, scale: float) -> torch.Tensor:
    """What the cuDNN kernel computes (FP8 inputs, P and O rounded to FP8), in plain PyTorch: for CPU tests."""
    q = q8.float() * descale_q
    k = k8.float() * descale_k
    v = v8.float() * descale_v
    s = torch.einsum("bshd,bthd->bhst", q, k) * scale
    p = torch.exp(s - s.amax(dim=-1, keepdim=True))
    p8 = (p * FP8_MAX).to(FP8).float() / FP8_MAX
    o = torch.einsum("bhst,bthd->bshd", p8, v) / p.sum(dim=-1).transpose(1, 2).unsqueeze(-1)
    return (o * scale_o).to(FP8).contiguous()  # the layout the op declares (B, S, H, D)


# ---- the cuDNN kernel as a torch custom op (layout: B, S, H, D for inputs and output) ----


def import_cudnn_frontend():
    """`import cudnn` (nvidia-cudnn-frontend), bound to the libcudnn that torch itself loaded.

    The frontend looks for libcudnn under its interpreter's own site-packages, else as plain "libcudnn.so".
    Neither holds in the Python-backend stub's environment (a venv layered over the host's packages), so the
    frontend is shown a one-file tree holding a link to torch's copy: one libcudnn in the process either way.
    """
    if "cudnn" in sys.modules:
        return sys.modules["cudnn"]
    torch.backends.cudnn.version()  # makes sure torch's libcudnn is mapped
    with open("/proc/self/maps") as maps:
        loaded = next((line.split()[-1] for line in maps if re.search(r"/libcudnn\.so\.\d+$", line)), None)
    if loaded is None:
        import cudnn

        return cudnn
    tree = Path(tempfile.mkdtemp(prefix="wan22-cudnn-"))
    (tree / "nvidia" / "cudnn" / "lib").mkdir(parents=True)
    (tree / "nvidia" / "cudnn" / "lib" / Path(loaded).name).symlink_to(loaded)
    get_path = sysconfig.get_path
    sysconfig.get_path = lambda name, *a, **k: str(tree) if name == "purelib" else get_path(name, *a, **k)
    try:
        import cudnn
    finally:
        sysconfig.get_path = get_path
    return cudnn


_local = threading.local()
_graphs: dict[tuple, tuple] = {}
_graphs_lock = threading.Lock()


def _handle(device: torch.device):
    cudnn = import_cudnn_frontend()

    handles = getattr(_local, "handles", None)
    if handles is None:
        handles = _local.handles = {}
    if device not in handles:
        with torch.cuda.device(device):
            handles[device] = cudnn.create_handle()
    cudnn.set_stream(handle=handles[device], stream=torch.cuda.current_stream(device).cuda_stream)
    return handles[device]


def _constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This thread's descale and scale of P (in [0, 1] inside the flash loop: scale 448) and amax scratch."""
    constants = getattr(_local, "constants", None)
    if constants is None:
        constants = _local.constants = {}
    if device not in constants:
        f32 = dict(dtype=torch.float32, device=device)
        constants[device] = (torch.full((1, 1, 1, 1), 1.0 / FP8_MAX, **f32),
                             torch.full((1, 1, 1, 1), FP8_MAX, **f32), torch.empty((2, 1, 1, 1), **f32))
    return constants[device]


def _bhsd(t: torch.Tensor) -> tuple[list[int], list[int]]:
    """Dims and strides of a (B, S, H, D) tensor seen as cuDNN's (B, H, S, D)."""
    b, s, h, d = t.shape
    sb, ss, sh, sd = t.stride()
    return [b, h, s, d], [sb, sh, ss, sd]


def _build_graph(handle, q, k, v, o, scale: float):
    cudnn = import_cudnn_frontend()

    fp8, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    g = cudnn.pygraph(io_data_type=fp8, intermediate_data_type=f32, compute_data_type=f32, handle=handle)
    tensors = {}
    for name, t in (("q", q), ("k", k), ("v", v)):
        dim, stride = _bhsd(t)
        tensors[name] = g.tensor(name=name, dim=dim, stride=stride, data_type=fp8)
    for name in ("descale_q", "descale_k", "descale_v", "scale_o", "descale_s", "scale_s"):
        tensors[name] = g.tensor(name=name, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=f32)
    o_t, _stats, amax_s, amax_o = g.sdpa_fp8(
        q=tensors["q"], k=tensors["k"], v=tensors["v"],
        descale_q=tensors["descale_q"], descale_k=tensors["descale_k"], descale_v=tensors["descale_v"],
        descale_s=tensors["descale_s"], scale_s=tensors["scale_s"], scale_o=tensors["scale_o"],
        is_inference=True, attn_scale=scale, use_causal_mask=False, name="sdpa_fp8",
    )
    dim, stride = _bhsd(o)
    o_t.set_output(True).set_dim(dim).set_stride(stride).set_data_type(fp8)
    for amax in (amax_s, amax_o):  # cuDNN reports them; unused here (one scale per call, from the data)
        amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(f32)
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()
    tensors.update(o=o_t, amax_s=amax_s, amax_o=amax_o)
    return g, tensors, g.get_workspace_size()


@torch.library.custom_op("wan22::sdpa_fp8", mutates_args=(), device_types="cuda")
def sdpa_fp8(
    q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor,
    descale_q: torch.Tensor, descale_k: torch.Tensor, descale_v: torch.Tensor, scale_o: torch.Tensor, scale: float,
) -> torch.Tensor:
    """softmax(scale * Q K^T) V * scale_o, FP8 in and out, layout (B, S, H, D); descales float32 (1, 1, 1, 1)."""
    q8, k8, v8 = (t if t.stride(-1) == 1 else t.contiguous() for t in (q8, k8, v8))  # cuDNN: unit stride on D
    b, s, h, _ = q8.shape
    o = torch.empty((b, s, h, v8.shape[-1]), dtype=FP8, device=q8.device)
    handle = _handle(q8.device)
    key = (q8.device, q8.shape, q8.stride(), k8.shape, k8.stride(), v8.shape, v8.stride(), float(scale))
    with _graphs_lock:
        if key not in _graphs:
            _graphs[key] = _build_graph(handle, q8, k8, v8, o, float(scale))
        graph, t, workspace_size = _graphs[key]
    descale_s, scale_s, amax = _constants(q8.device)
    workspace = torch.empty(max(workspace_size, 1), dtype=torch.uint8, device=q8.device)
    graph.execute({
        t["q"]: q8, t["k"]: k8, t["v"]: v8, t["o"]: o,
        t["descale_q"]: descale_q, t["descale_k"]: descale_k, t["descale_v"]: descale_v,
        t["descale_s"]: descale_s, t["scale_s"]: scale_s, t["scale_o"]: scale_o,
        t["amax_s"]: amax[0:1], t["amax_o"]: amax[1:2],
    }, workspace, handle=handle)
    return o


sdpa_fp8.register_kernel("cpu")(reference_fp8_attention)


@sdpa_fp8.register_fake
def _(q8, k8, v8, descale_q, descale_k, descale_v, scale_o, scale):
    b, s, h, _ = q8.shape
    return q8.new_empty((b, s, h, v8.shape[-1]), dtype=FP8)


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(D)) V of (B, S, H, D) tensors in FP8 (module docstring: K centred, per-tensor scales),
    float32 out."""
    key = key.float() - key.float().mean(dim=1, keepdim=True)  # exact for softmax, smaller FP8 range
    q8, descale_q = quantize_per_tensor(query)
    k8, descale_k = quantize_per_tensor(key)
    v8, descale_v = quantize_per_tensor(value)
    o8 = sdpa_fp8(q8, k8, v8, descale_q, descale_k, descale_v, 1.0 / descale_v, query.shape[-1] ** -0.5)
    return o8.float() * descale_v
