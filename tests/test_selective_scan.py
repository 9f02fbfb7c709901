"""Tests of the selective scan: parallel and scriptable versions against the sequential loop."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from medmamba.networks.selective_scan import (
    SelectiveScanFn,
    selective_scan,
    selective_scan_ref,
    selective_scan_scriptable,
)

ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def make_inputs(
    batch: int,
    groups: int,
    dm: int,
    n_state: int,
    length: int,
    *,
    with_d: bool = True,
    with_bias: bool = True,
    a_log_max: float = 1.0,
    delta_scale: float = 0.5,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> list[Tensor | None]:
    """Random scan inputs (leaf tensors requiring grad) in the VMamba layout."""
    gen = torch.Generator().manual_seed(seed)
    kd = groups * dm

    def rnd(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    u = rnd(batch, kd, length)
    delta = rnd(batch, kd, length) * delta_scale
    A = -torch.exp(torch.rand(kd, n_state, generator=gen, dtype=torch.float64) * a_log_max)
    B = rnd(batch, groups, n_state, length)
    C = rnd(batch, groups, n_state, length)
    D = rnd(kd) if with_d else None
    bias = rnd(kd) * 0.5 if with_bias else None
    return [None if t is None else t.to(dtype).requires_grad_() for t in (u, delta, A, B, C, D, bias)]


def grads(y: Tensor, inputs: list[Tensor | None], dy: Tensor) -> list[Tensor | None]:
    leaves = [t for t in inputs if t is not None]
    g = iter(torch.autograd.grad(y, leaves, dy))
    return [None if t is None else next(g) for t in inputs]


def assert_close_rel(actual: Tensor, expected: Tensor, rel: float, what: str) -> None:
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert err <= rel * max(scale, 1e-30), f"{what}: max|diff| {err:.3e} > {rel:g} * max|ref| {scale:.3e}"


CASES = [
    # (batch, K, Dm, N, L)
    (2, 2, 3, 1, 1),
    (2, 2, 3, 4, 2),
    (2, 2, 3, 1, 7),
    (2, 1, 4, 4, 7),
    (2, 2, 4, 1, 64),
    (2, 2, 4, 4, 64),
    (1, 2, 2, 1, 1000),
    (1, 2, 2, 4, 1000),
    (1, 2, 1, 1, 4096),
    (1, 1, 2, 4, 4096),
]


@pytest.mark.parametrize("batch,groups,dm,n_state,length", CASES)
@pytest.mark.parametrize("with_d,with_bias,softplus", [(True, True, True), (False, False, False)])
def test_parallel_matches_reference(
    batch: int, groups: int, dm: int, n_state: int, length: int, with_d: bool, with_bias: bool, softplus: bool
) -> None:
    inputs = make_inputs(batch, groups, dm, n_state, length, with_d=with_d, with_bias=with_bias, seed=length)
    if not softplus:  # keep Δ positive without the softplus
        inputs[1] = (inputs[1].detach().abs() + 0.05).requires_grad_()
    y_ref = selective_scan(*inputs, delta_softplus=softplus, backend="reference")
    y = selective_scan(*inputs, delta_softplus=softplus, backend="parallel")
    assert y.shape == (batch, groups * dm, length) and y.dtype == torch.float32
    assert_close_rel(y, y_ref, 1e-5, "y")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    for name, g, g_ref in zip(ARG_NAMES, grads(y, inputs, dy), grads(y_ref, inputs, dy)):
        if g_ref is None:
            assert g is None
            continue
        assert g.shape == g_ref.shape, name
        assert_close_rel(g, g_ref, 1e-4, f"grad {name}")


@pytest.mark.parametrize("length", [7, 300])
def test_strong_decay_is_finite(length: int) -> None:
    inputs = make_inputs(2, 2, 4, 4, length, a_log_max=3.0, seed=3)
    with torch.no_grad():  # raw delta up to 10: Δ·A reaches about -200
        inputs[1].copy_(torch.rand(inputs[1].shape, generator=torch.Generator().manual_seed(4)) * 10.0)
    y_ref = selective_scan(*inputs, backend="reference")
    y = selective_scan(*inputs, backend="parallel")
    assert_close_rel(y, y_ref, 1e-5, "y")
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    for name, g, g_ref in zip(ARG_NAMES, grads(y, inputs, dy), grads(y_ref, inputs, dy)):
        assert torch.isfinite(g).all(), name
        assert_close_rel(g, g_ref, 1e-4, f"grad {name}")


def _time_major(x: Tensor) -> Tensor:
    """The same values stored as (batch, L, channels): a (batch, channels, L) view with L strided."""
    return x.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(x.requires_grad)


@pytest.mark.parametrize("n_state,length", [(1, 1), (1, 50), (3, 33)])
@pytest.mark.parametrize("layouts", ["tm-tm", "tm-last", "last-tm", "strided"])
def test_parallel_memory_layouts(n_state: int, length: int, layouts: str) -> None:
    inputs = make_inputs(2, 2, 8, n_state, length, seed=7)
    y_ref = selective_scan(*inputs, backend="reference")
    dy = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(8))
    g_ref = grads(y_ref, inputs, dy)
    fast = list(inputs)
    if layouts == "strided":  # every other channel of a wider tensor, and a strided dy
        fast[0] = torch.stack([inputs[0].detach(), inputs[0].detach()], 2).flatten(1, 2)[:, ::2].requires_grad_()
        fast[1] = torch.stack([inputs[1].detach(), inputs[1].detach()], 2).flatten(1, 2)[:, ::2].requires_grad_()
        dy_fast = torch.stack([dy, dy], -1)[..., 0]
    else:
        if layouts.startswith("tm"):
            fast[0] = _time_major(inputs[0])
        if layouts.endswith("tm"):
            fast[1] = _time_major(inputs[1])
        dy_fast = dy
    y = selective_scan(*fast, backend="parallel")
    assert_close_rel(y, y_ref, 1e-5, "y")
    if layouts.startswith("tm") and length > 1:
        assert y.transpose(1, 2).is_contiguous()  # output follows the layout of u
    for name, g, g0 in zip(ARG_NAMES, grads(y, fast, dy_fast), g_ref):
        assert_close_rel(g, g0, 1e-4, f"grad {name}")


def test_default_backend_is_parallel_on_cpu() -> None:
    inputs = make_inputs(2, 2, 3, 1, 9)
    y_auto = selective_scan(*inputs)
    y_par = selective_scan(*inputs, backend="parallel")
    torch.testing.assert_close(y_auto, y_par, rtol=0, atol=0)


def test_fast_softplus_is_accurate() -> None:
    from medmamba.networks.selective_scan import _fast_softplus

    z = torch.linspace(-80.0, 100.0, 20001)  # results stay normal float32 numbers
    exact = torch.nn.functional.softplus(z.double())
    assert ((_fast_softplus(z).double() - exact).abs() / exact).max() < 5e-7


def test_gradcheck_float64() -> None:
    inputs = make_inputs(1, 2, 2, 2, 5, dtype=torch.float64)
    for softplus in (True, False):
        assert torch.autograd.gradcheck(lambda *a, sp=softplus: SelectiveScanFn.apply(*a, sp), tuple(inputs))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_scriptable_matches_reference_and_scripts() -> None:
    inputs = make_inputs(2, 2, 3, 4, 37)
    scripted = torch.jit.script(selective_scan_scriptable)
    with torch.no_grad():
        for softplus in (True, False):
            for d, bias in ((inputs[5], inputs[6]), (None, None)):
                y_ref = selective_scan_ref(*inputs[:5], d, bias, softplus)
                y = selective_scan_scriptable(*inputs[:5], d, bias, softplus)
                y_js = scripted(*inputs[:5], d, bias, softplus)
                assert_close_rel(y, y_ref, 1e-5, "scriptable")
                assert_close_rel(y_js, y_ref, 1e-5, "scripted")


class _ScanModule(nn.Module):
    def __init__(self, kd: int, n_state: int) -> None:
        super().__init__()
        self.A = nn.Parameter(-torch.rand(kd, n_state) - 0.1)
        self.D = nn.Parameter(torch.randn(kd))
        self.bias = nn.Parameter(torch.randn(kd) * 0.5)

    def forward(self, u: Tensor, delta: Tensor, B: Tensor, C: Tensor) -> Tensor:
        return selective_scan_scriptable(u, delta, self.A, B, C, self.D, self.bias, True)


def _onnx_check(tmp_path, dynamo: bool) -> None:  # type: ignore[no-untyped-def]
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = _ScanModule(6, 2).eval()
    inputs = make_inputs(2, 2, 3, 2, 13)
    feeds = tuple(t.detach() for t in (inputs[0], inputs[1], inputs[3], inputs[4]))
    path = tmp_path / f"scan_{'dynamo' if dynamo else 'ts'}.onnx"
    torch.onnx.export(model, feeds, str(path), opset_version=17, dynamo=dynamo, input_names=["u", "delta", "B", "C"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    (out,) = session.run(None, {n: t.numpy() for n, t in zip(names, feeds)})
    with torch.no_grad():
        expected = selective_scan_ref(feeds[0], feeds[1], model.A, feeds[2], feeds[3], model.D, model.bias, True)
    assert_close_rel(torch.from_numpy(out), expected, 1e-5, "onnxruntime")


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::UserWarning", "ignore::DeprecationWarning")
def test_onnx_export_torchscript_exporter(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _onnx_check(tmp_path, dynamo=False)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")
def test_onnx_export_dynamo_exporter(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxscript")
    _onnx_check(tmp_path, dynamo=True)


def test_bf16_autocast_gives_float32_and_grads_in_input_dtype() -> None:
    inputs = make_inputs(2, 2, 4, 1, 33, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = selective_scan(*inputs)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    ref = selective_scan(*[None if t is None else t.detach().float() for t in inputs], backend="reference")
    assert_close_rel(y, ref, 1e-5, "bf16 inputs")
    y.sum().backward()
    for name, t in zip(ARG_NAMES, inputs):
        assert t.grad is not None and t.grad.dtype == torch.bfloat16, name
        assert torch.isfinite(t.grad.float()).all(), name


def test_bad_backend_name() -> None:
    inputs = make_inputs(1, 1, 2, 1, 4)
    with pytest.raises(ValueError, match=r"`backend` must be one of .*'fast'"):
        selective_scan(*inputs, backend="fast")


@pytest.mark.parametrize(
    "index,shape,pattern",
    [
        (1, (1, 2, 5), r"`delta` must have the shape of `u`"),
        (2, (3, 1), r"`A` must have shape \(K\*Dm, N\) = \(2, N\)"),
        (3, (1, 1, 2, 4), r"`B` must have shape \(batch, K, N, L\) = \(1, 1, 1, 4\)"),
        (3, (1, 3, 1, 4), r"`B` has K=3 groups, which must divide the 2 channels"),
        (4, (1, 1, 1, 5), r"`C` must have shape \(batch, K, N, L\)"),
        (5, (3,), r"`D` must have shape \(K\*Dm,\) = \(2,\)"),
        (6, (2, 1), r"`delta_bias` must have shape \(2,\)"),
        (0, (1, 2), r"`u` must have shape \(batch, K\*Dm, L\)"),
    ],
)
def test_shape_errors(index: int, shape: tuple[int, ...], pattern: str) -> None:
    inputs = make_inputs(1, 1, 2, 1, 4)
    inputs[index] = torch.zeros(shape)
    with pytest.raises(ValueError, match=pattern):
        selective_scan(*inputs)


def test_type_error_for_non_tensor() -> None:
    inputs = make_inputs(1, 1, 2, 1, 4)
    inputs[3] = [[0.0]]  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"`B` must be a torch.Tensor"):
        selective_scan(*inputs)


def test_cuda_backend_on_cpu_tensors_raises() -> None:
    inputs = make_inputs(1, 1, 2, 1, 4)
    with pytest.raises(ValueError, match=r"backend='cuda' needs all tensors on a CUDA device"):
        selective_scan(*inputs, backend="cuda")
