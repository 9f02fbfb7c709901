"""The networks on a CUDA GPU (skipped without one): the same numbers as on the CPU and as the reference.

On the GPU the selective scan runs the pure-PyTorch parallel scan (or ``mamba_ssm``'s kernel where it
is installed), WTE-Mamba's wavelet runs as (transposed) depthwise convolutions instead of the CPU's
sums and differences, and the stem keeps NCHW. Each of these must give the CPU's results. TF32 is
switched off here: with it a float32 convolution or matmul on Ampere and later rounds its inputs to 10
mantissa bits, a relative error near 1e-3, which is a precision choice and not a difference of the
computation.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from medmamba.networks import MobileMamba, MobileMambaSeg, fuse_norms
from medmamba.networks.convert import emulate_reference_cpu_merge
from medmamba.networks.selective_scan import is_cuda_scan_available, selective_scan, selective_scan_ref
from reference_fixtures import load_reference, model_from_fixture

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32() -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _relerr(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float().cpu() - b.float().cpu()).abs().max() / b.float().cpu().abs().max()).item()


@pytest.mark.parametrize("name", ["mobilemamba_tiny", "mobilemamba_tiny_dist"])
def test_reference_fixture_on_the_gpu(name: str) -> None:
    """Number for number against the reference's outputs, features and fused outputs, computed on the GPU."""
    fx = load_reference(name)
    model = emulate_reference_cpu_merge(model_from_fixture(fx)).to(CUDA)
    x = fx["input"].to(CUDA)
    with torch.no_grad():
        assert _relerr(model(x), fx["output"]) <= 1e-4
        for ours, ref in zip(model.forward_features(x), fx["features"][1:]):
            assert ours.shape == ref.shape and _relerr(ours, ref) <= 1e-4
        assert _relerr(fuse_norms(model)(x), fx["output_fused"]) <= 1e-4


@pytest.mark.parametrize("variant,size", [("t2", 192), ("s6", 224)])
def test_fused_variant_gives_the_cpu_numbers(variant: str, size: int) -> None:
    """A whole fused variant (CPU: arithmetic Haar, channels-last stem; GPU: convolutions, NCHW)."""
    torch.manual_seed(0)
    model = fuse_norms(MobileMamba(variant, num_classes=10).eval())
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        cpu = model(x)
        gpu = model.to(CUDA)(x.to(CUDA))
    assert gpu.shape == cpu.shape == (3, 10)
    assert _relerr(gpu, cpu) <= 1e-4


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_parallel_scan_on_the_gpu_equals_the_sequential_reference(dtype: torch.dtype, tol: float) -> None:
    """Forward and every input's gradient, against the sequential loop on the CPU."""
    g = torch.Generator().manual_seed(3)
    b, k, dm, n, length = 2, 4, 6, 8, 37
    inputs = {
        "u": torch.randn(b, k * dm, length, generator=g, dtype=dtype),
        "delta": torch.randn(b, k * dm, length, generator=g, dtype=dtype),
        "A": -torch.rand(k * dm, n, generator=g, dtype=dtype) - 0.1,
        "B": torch.randn(b, k, n, length, generator=g, dtype=dtype),
        "C": torch.randn(b, k, n, length, generator=g, dtype=dtype),
        "D": torch.randn(k * dm, generator=g, dtype=dtype),
        "delta_bias": torch.randn(k * dm, generator=g, dtype=dtype) * 0.1,
    }
    weight = torch.randn(b, k * dm, length, generator=g, dtype=dtype)

    def run(device: torch.device, backend: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        leaves = {key: v.detach().clone().to(device).requires_grad_() for key, v in inputs.items()}
        y = selective_scan(**leaves, backend=backend) if backend != "reference" else selective_scan_ref(**leaves)
        (y * weight.to(device)).sum().backward()
        return y.detach().cpu(), [leaves[key].grad.cpu() for key in inputs]

    y_ref, grads_ref = run(torch.device("cpu"), "reference")
    y_gpu, grads_gpu = run(CUDA, "parallel")
    assert y_gpu.dtype == dtype
    assert _relerr(y_gpu, y_ref) <= tol
    for name, ours, ref in zip(inputs, grads_gpu, grads_ref):
        assert _relerr(ours, ref) <= tol, name
    if is_cuda_scan_available():  # mamba_ssm's kernel, where installed, is the "auto" choice on the GPU
        y_auto, _ = run(CUDA, "cuda")
        assert _relerr(y_auto, y_ref) <= 1e-3


def test_segmentation_network_gives_the_cpu_numbers() -> None:
    torch.manual_seed(1)
    net = MobileMambaSeg("t2", spatial_dims=2, in_channels=3, out_channels=4).eval()
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        cpu = net(x)
        gpu = net.to(CUDA)(x.to(CUDA))
    assert gpu.shape == cpu.shape == (2, 4, 128, 96)
    assert _relerr(gpu, cpu) <= 1e-4


def test_torchscript_on_the_gpu_equals_eager() -> None:
    torch.manual_seed(2)
    model = fuse_norms(MobileMamba("t2", num_classes=5).eval()).to(CUDA)
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 128, 128, device=CUDA)
    with torch.no_grad():
        assert _relerr(scripted(x), model(x)) <= 1e-5
