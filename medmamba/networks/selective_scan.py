"""The selective scan (the S6 recurrence of Mamba) used by the SS2D token mixer.

For every channel ``d`` (``K`` groups of ``Dm`` channels, group ``k`` sharing ``B[:, k]`` and
``C[:, k]``) and every state ``n``::

    Δ_t = softplus(delta_t + delta_bias)            (only the bias if ``delta_softplus`` is False)
    h_t = exp(Δ_t·A)·h_{t-1} + Δ_t·B_t·u_t,          h_{-1} = 0
    y_t = Σ_n C_t·h_t + D·u_t

Three implementations are provided:

* ``"reference"``: the sequential loop over ``L`` with autograd (the test oracle, like
  ``mamba_ssm``'s ``selective_scan_ref``);
* ``"parallel"``: an exact vectorised Brent–Kung prefix scan, run in place on strided views
  inside a custom :class:`torch.autograd.Function` whose backward pass is one reverse scan of the
  same form. It only ever multiplies decays ``≤ 1`` (for ``A ≤ 0``), so it is as stable as the
  loop. It works in the memory layout of ``u``: for time-major inputs (``u.transpose(1, 2)``
  contiguous, e.g. from a ``(batch, L, channels)`` tensor) every scan step touches contiguous
  blocks of channels and the whole pass is 1.2-1.4x faster than for contiguous
  ``(batch, channels, L)`` inputs, where the steps are strided (see ``docs/benchmarks-scan.md``);
* ``"cuda"``: ``mamba_ssm``'s fused kernel (optional dependency, CUDA tensors only).

:func:`selective_scan_scriptable` is an out-of-place, forward-only Hillis–Steele version that
``torch.jit.script`` compiles and that exports to ONNX.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from medmamba.networks.selective_scan_chunked import selective_scan_chunked

__all__ = [
    "SCAN_BACKENDS",
    "SelectiveScanFn",
    "is_cuda_scan_available",
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_scriptable",
]

#: Accepted values of the ``backend`` argument of :func:`selective_scan`.
SCAN_BACKENDS: tuple[str, ...] = ("auto", "parallel", "reference", "cuda")

# Log-decays below this are clamped before ``exp``: float32 ``exp`` of arguments below about -87
# produces denormals, which are 12-36x slower on x86 CPUs. exp(-80) < 2e-35, so nothing changes.
_LOG_DECAY_MIN = -80.0

# Products of decays are clamped from below at this value: long products underflow into float32
# denormals, which make every later multiply 10-100x slower; the change (< 1e-30 of a state) is far
# below float32 resolution.
_DECAY_PRODUCT_MIN = 1e-30

# In the L-last layout the recursive scans copy the every-4th-element subsequence (a strided view)
# to a contiguous tensor and back: deeper levels then touch far fewer pages (about 10% faster).
_COMPACT_STRIDE = 4

# ``F.softplus`` (ATen's scalar ``log1p``) vs the compensated ``_fast_softplus`` built from ten
# vectorised ops: the latter was 2.3x faster on a Zen 4 CPU with torch 2.14 (where ``log1p`` cost
# 5 ns per element), but is 2.3x slower on the AVX-512 Xeon with torch 2.13 of
# docs/benchmarks-scan.md (``F.softplus`` 8.9 ms vs 20.5 ms for 5.2 M elements on one thread).
_USE_FAST_SOFTPLUS = False


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _check_tensor(name: str, value: Any, ndim: int, expected: str) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(
            f"selective_scan: `{name}` must be a torch.Tensor of shape {expected}, got {type(value).__name__}."
        )
    if not value.is_floating_point():
        raise TypeError(f"selective_scan: `{name}` must be a floating-point tensor, got dtype {value.dtype}.")
    if value.dim() != ndim:
        raise ValueError(
            f"selective_scan: `{name}` must have shape {expected} ({ndim} dims), got shape {tuple(value.shape)}."
        )


def _validate(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
) -> tuple[int, int, int, int, int]:
    """Check the shapes of the scan's arguments.

    Returns:
        ``(batch, K, Dm, N, L)``.
    """
    _check_tensor("u", u, 3, "(batch, K*Dm, L)")
    batch, kd, length = u.shape
    _check_tensor("delta", delta, 3, "(batch, K*Dm, L)")
    if delta.shape != u.shape:
        raise ValueError(
            f"selective_scan: `delta` must have the shape of `u` {tuple(u.shape)} (batch, K*Dm, L), "
            f"got {tuple(delta.shape)}."
        )
    _check_tensor("A", A, 2, "(K*Dm, N)")
    if A.shape[0] != kd:
        raise ValueError(f"selective_scan: `A` must have shape (K*Dm, N) = ({kd}, N), got {tuple(A.shape)}.")
    n_state = A.shape[1]
    if n_state < 1:
        raise ValueError(f"selective_scan: `A` must have at least one state (N >= 1), got shape {tuple(A.shape)}.")
    _check_tensor("B", B, 4, "(batch, K, N, L)")
    groups = B.shape[1]
    if groups < 1 or kd % groups != 0:
        raise ValueError(
            f"selective_scan: `B` has K={groups} groups, which must divide the {kd} channels of `u` "
            f"(expected shape (batch, K, N, L) with K*Dm = {kd})."
        )
    expected = (batch, groups, n_state, length)
    if tuple(B.shape) != expected:
        raise ValueError(f"selective_scan: `B` must have shape (batch, K, N, L) = {expected}, got {tuple(B.shape)}.")
    _check_tensor("C", C, 4, "(batch, K, N, L)")
    if tuple(C.shape) != expected:
        raise ValueError(f"selective_scan: `C` must have shape (batch, K, N, L) = {expected}, got {tuple(C.shape)}.")
    for name, value in (("D", D), ("delta_bias", delta_bias)):
        if value is None:
            continue
        _check_tensor(name, value, 1, f"({kd},)")
        if value.shape[0] != kd:
            raise ValueError(f"selective_scan: `{name}` must have shape (K*Dm,) = ({kd},), got {tuple(value.shape)}.")
    return batch, groups, kd // groups, n_state, length


# --------------------------------------------------------------------------------------------
# reference: the sequential loop
# --------------------------------------------------------------------------------------------
def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
) -> Tensor:
    """Plain sequential selective scan: a Python loop over ``L`` (autograd gives its gradient).

    Args:
        u: input ``(batch, K*Dm, L)``.
        delta: time steps before the bias/softplus, ``(batch, K*Dm, L)``.
        A: state matrix ``(K*Dm, N)`` (normally negative).
        B: input projections ``(batch, K, N, L)``.
        C: output projections ``(batch, K, N, L)``.
        D: optional skip weights ``(K*Dm,)``.
        delta_bias: optional bias added to ``delta`` ``(K*Dm,)``.
        delta_softplus: apply softplus to ``delta + delta_bias``.

    Returns:
        ``y`` of shape ``(batch, K*Dm, L)``, computed in float32 (float64 for float64 inputs).
    """
    batch, groups, dm, n_state, length = _validate(u, delta, A, B, C, D, delta_bias)
    dtype = _compute_dtype(u, delta, A, B, C, D, delta_bias)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bd = B.repeat_interleave(dm, dim=1)  # (batch, KD, N, L)
    Cd = C.repeat_interleave(dm, dim=1)
    delta_a = torch.exp(delta.unsqueeze(2) * A.unsqueeze(-1))  # (batch, KD, N, L)
    delta_b_u = (delta * u).unsqueeze(2) * Bd  # (batch, KD, N, L)
    h = u.new_zeros(batch, groups * dm, n_state)
    ys = []
    for t in range(length):
        h = delta_a[..., t] * h + delta_b_u[..., t]
        ys.append((h * Cd[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.to(dtype)[:, None]
    return y


# --------------------------------------------------------------------------------------------
# parallel: in-place Brent-Kung scans + analytic backward
# --------------------------------------------------------------------------------------------
def _fast_softplus(z: Tensor) -> Tensor:
    """``softplus(z) = max(z, 0) + log1p(exp(-|z|))`` with a compensated, vectorised ``log1p``.

    ATen's ``log1p`` (and so ``F.softplus``) is not vectorised on the CPU. ``log1p(t)`` is computed
    as ``log(v) + (t - (v - 1))`` with ``v = 1 + t`` (relative error about 2e-7).
    """
    t = z.abs().neg_().exp_()
    v = t + 1.0
    t.sub_(v - 1.0)  # rounding error of 1 + t
    return v.log_().add_(t).add_(z.clamp_min(0.0))


def _softplus(z: Tensor) -> Tensor:
    """Softplus of the time steps (``F.softplus``, or :func:`_fast_softplus` where faster)."""
    return _fast_softplus(z) if _USE_FAST_SOFTPLUS else F.softplus(z)


def _scan_fwd_(a: Tensor, b: Tensor) -> None:
    """In place along the last dim: ``b[t] <- a[t]·b[t-1] + b[t]`` (``a`` is not modified).

    Recursive Brent–Kung: combine neighbouring pairs, scan the pair totals (a strided view of
    ``b`` and a fresh half-length tensor of pair decays), then fix up the remaining positions.
    ``a[..., 0]`` is never used. About ``3·log2 L`` in-place operations, any ``L``, no padding.
    Works for any memory layout; it is fastest when ``L`` is not the contiguous dimension.
    """
    length = b.shape[-1]
    if length < 2:
        return
    n = length // 2
    b_odd = b[..., 1 : 2 * n : 2]
    a_odd = a[..., 1 : 2 * n : 2]
    b_odd.addcmul_(a_odd, b[..., 0 : 2 * n : 2])
    if n > 1:
        a_pair = torch.mul(a_odd, a[..., 0 : 2 * n : 2]).clamp_min_(_DECAY_PRODUCT_MIN)
        if b_odd.stride(-1) == _COMPACT_STRIDE:  # L-last: go on with a contiguous copy
            b_sub = b_odd.contiguous()
            _scan_fwd_(a_pair, b_sub)
            b_odd.copy_(b_sub)
        else:
            _scan_fwd_(a_pair, b_odd)
    m = (length - 1) // 2
    if m > 0:
        b[..., 2 : 2 * m + 1 : 2].addcmul_(a[..., 2 : 2 * m + 1 : 2], b[..., 1 : 2 * m : 2])


def _scan_rev_(a_next: Tensor, b: Tensor) -> None:
    """In place along the last dim, backwards: ``b[t] <- a_next[t]·b[t+1] + b[t]``.

    ``a_next`` has length ``L - 1`` (``a_next[t]`` links ``t`` and ``t + 1``; pass ``a[..., 1:]``
    for the adjoint of :func:`_scan_fwd_`) and is not modified. The mirror image of
    :func:`_scan_fwd_` (pairs formed from the end), so no flips are needed.
    """
    length = b.shape[-1]
    if length < 2:
        return
    n = length // 2
    off = length - 2 * n
    b_tgt = b[..., off:length:2]
    b_tgt.addcmul_(a_next[..., off : length - 1 : 2], b[..., off + 1 : length : 2])
    if n > 1:
        # the pair starting at p = off + 2u links to the next one through a_next[p]·a_next[p+1]
        a_pair = torch.mul(a_next[..., off : length - 3 : 2], a_next[..., off + 1 : length - 2 : 2])
        a_pair.clamp_min_(_DECAY_PRODUCT_MIN)
        if b_tgt.stride(-1) == _COMPACT_STRIDE:  # L-last: go on with a contiguous copy
            b_sub = b_tgt.contiguous()
            _scan_rev_(a_pair, b_sub)
            b_tgt.copy_(b_sub)
        else:
            _scan_rev_(a_pair, b_tgt)
    start = 1 - off
    if start < length - 2:
        b[..., start : length - 2 : 2].addcmul_(a_next[..., start : length - 2 : 2], b[..., start + 1 : length - 1 : 2])


def _empty(shape: tuple[int, ...], like: Tensor, time_major: bool) -> Tensor:
    """An empty ``(batch, ..., L)`` tensor, stored time-major (``(batch, L, ...)`` in memory) or not.

    Time-major, every step of the scan works on contiguous blocks of channels (vectorised);
    ``L``-last, on single elements ``2^k`` apart (about 2.3x slower). The scan works in the layout
    of its input ``u`` because transposing costs as much as it would save.
    """
    if not time_major:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    batch, *rest, length = shape
    order = [0, *range(2, len(shape)), 1]
    return torch.empty((batch, length, *rest), dtype=like.dtype, device=like.device).permute(order)


def _is_time_major(x: Tensor) -> bool:
    """Whether ``x`` (``(batch, channels, L)`` or a view of it) does not have ``L`` contiguous."""
    return x.shape[-1] > 1 and x.stride(-1) != 1


class SelectiveScanFn(torch.autograd.Function):
    """Exact parallel selective scan with an analytic backward pass (one reverse scan).

    Inputs must already be in the compute dtype: ``u, delta (batch, K*Dm, L)``, contiguous or
    time-major (``x.transpose(1, 2)`` contiguous: 1.2-1.4x faster, since the scan then steps
    over contiguous blocks of channels), ``A (K*Dm, N)``, ``B, C (batch, K, N, L)``,
    ``D, delta_bias (K*Dm,)`` or ``None``. All intermediate tensors, the output and the
    gradients of ``u`` and ``delta`` follow the memory layout of ``u``. Use :func:`selective_scan`
    rather than this class.

    The forward pass saves the decays ``a = exp(Δ·A)`` and the states ``h``; the backward pass
    runs one reverse scan ``g_t = C_t·dy_t + a_{t+1}·g_{t+1}`` (``g = dL/dh``) and otherwise only
    elementwise products and reductions.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        u: Tensor,
        delta: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor | None,
        delta_bias: Tensor | None,
        delta_softplus: bool,
    ) -> Tensor:
        batch, kd, length = u.shape
        groups, n_state = B.shape[1], A.shape[1]
        dm = kd // groups
        shape4 = (batch, groups, dm, length)
        shape5 = (batch, groups, dm, n_state, length)
        tm = _is_time_major(u)
        u4, delta4 = u.view(shape4), delta.view(shape4)
        if delta_bias is not None:
            z = torch.add(delta4, delta_bias.view(groups, dm, 1), out=_empty(shape4, u, tm))
        elif _is_time_major(delta) != tm:
            z = _empty(shape4, u, tm).copy_(delta4)
        else:
            z = delta4
        dt = _softplus(z) if delta_softplus else z
        # decays a = exp(Δ·A) (log-decay clamped), scan inputs x = Δ·u·B, then states h in place
        a = torch.mul(dt.unsqueeze(3), A.view(groups, dm, n_state, 1), out=_empty(shape5, u, tm))
        a.clamp_min_(_LOG_DECAY_MIN).exp_()
        w = torch.mul(dt, u4, out=_empty(shape4, u, tm))
        h = torch.mul(w.unsqueeze(3), B.unsqueeze(2), out=_empty(shape5, u, tm))
        _scan_fwd_(a, h)
        # y = Σ_n C·h + D·u
        y = _empty(shape4, u, tm)
        if n_state == 1:
            torch.mul(h.squeeze(3), C, out=y)
        else:
            torch.sum(h * C.unsqueeze(2), 3, out=y)
        if D is not None:
            y.addcmul_(u4, D.view(groups, dm, 1))
        ctx.delta_softplus = delta_softplus
        ctx.has_bias = delta_bias is not None
        ctx.save_for_backward(u, z if delta_softplus else None, dt, w, A, B, C, D, a, h)
        return y.view(batch, kd, length)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        u, z, dt, w, A, B, C, D, a, h = ctx.saved_tensors
        batch, kd, length = u.shape
        groups, n_state = B.shape[1], A.shape[1]
        dm = kd // groups
        shape4 = (batch, groups, dm, length)
        shape5 = (batch, groups, dm, n_state, length)
        tm = _is_time_major(u)
        dy = dy.to(u.dtype)
        if _is_time_major(dy) != tm or _dense(dy) is not dy:
            dy = _empty((batch, kd, length), u, tm).copy_(dy)
        dy4, u4 = dy.view(shape4), u.view(shape4)
        # g_t = dL/dh_t = C_t·dy_t + a_{t+1}·g_{t+1}
        g = torch.mul(dy4.unsqueeze(3), C.unsqueeze(2), out=_empty(shape5, u, tm))
        _scan_rev_(a[..., 1:], g)
        # q_t = dL/d(Δ_t·A) = g_t·a_t·h_{t-1}  (q_0 = 0)
        q = torch.empty_like(g)
        q[..., 0] = 0.0
        torch.mul(g[..., 1:], h[..., :-1], out=q[..., 1:])
        q.mul_(a)
        A4 = A.view(groups, dm, n_state, 1)
        if n_state == 1:
            g4, q4 = g.squeeze(3), q.squeeze(3)
            r = q4 * A4.squeeze(3)  # Σ_n q·A: the Δ gradient through the decays
            gb = g4 * B  # Σ_n g·B
            dA = q4.mul_(dt).sum(-1).sum(0)
            dB = g4.mul_(w).sum(2, keepdim=True)  # Σ_d g·Δ·u
            dC = (h.squeeze(3) * dy4).sum(2, keepdim=True)  # Σ_d h·dy
        else:
            r = torch.sum(q * A4, 3, out=_empty(shape4, u, tm))
            gb = torch.sum(g * B.unsqueeze(2), 3, out=_empty(shape4, u, tm))
            dA = q.mul_(dt.unsqueeze(3)).sum(-1).sum(0)
            dB = g.mul_(w.unsqueeze(3)).sum(2)
            dC = (h * dy4.unsqueeze(3)).sum(2)
        r.addcmul_(gb, u4)  # dL/dΔ = Σ_n q·A + Σ_n g·B·u
        d_delta = r.mul_(torch.sigmoid(z)) if ctx.delta_softplus else r  # softplus' = sigmoid
        du = gb.mul_(dt)  # dL/du = Σ_n g·B·Δ + D·dy
        dD = None
        if D is not None:
            du.addcmul_(dy4, D.view(groups, dm, 1))
            dD = (dy4 * u4).sum(-1).sum(0).reshape(kd)
        d_bias = d_delta.sum(-1).sum(0).reshape(kd) if ctx.has_bias else None
        return (
            du.view(batch, kd, length),
            d_delta.view(batch, kd, length),
            dA.reshape(kd, n_state),
            dB,
            dC,
            dD,
            d_bias,
            None,
        )


# --------------------------------------------------------------------------------------------
# scriptable / ONNX-exportable forward
# --------------------------------------------------------------------------------------------
def selective_scan_scriptable(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor],
    delta_bias: Optional[Tensor],
    delta_softplus: bool,
) -> Tensor:
    """Forward-only selective scan made of out-of-place ops (TorchScript and ONNX friendly).

    A log-step Hillis–Steele scan over ``L`` (``ceil(log2 L)`` steps of slicing, ``F.pad`` and
    multiply-add). It only multiplies decays ``≤ 1``. The only Python control flow depends on
    ``L``, which is fixed for a traced graph (TorchScript, the legacy ONNX exporter); ``torch.export``
    uses :func:`~medmamba.networks.selective_scan_chunked` instead. Shapes are not validated here.

    Args:
        u: input ``(batch, K*Dm, L)``.
        delta: time steps ``(batch, K*Dm, L)``.
        A: state matrix ``(K*Dm, N)``.
        B: input projections ``(batch, K, N, L)``.
        C: output projections ``(batch, K, N, L)``.
        D: optional skip weights ``(K*Dm,)``.
        delta_bias: optional bias of ``delta`` ``(K*Dm,)``.
        delta_softplus: apply softplus to ``delta + delta_bias``.

    Returns:
        ``y`` of shape ``(batch, K*Dm, L)`` in float32 (float64 for float64 ``u``).
    """
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    u = u.to(dtype)
    delta = delta.to(dtype)
    A = A.to(dtype)
    B = B.to(dtype)
    C = C.to(dtype)
    batch, kd, length = u.shape[0], u.shape[1], u.shape[2]
    groups, n_state = B.shape[1], A.shape[1]
    dm = kd // groups
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype).unsqueeze(-1)
    if delta_softplus:
        delta = F.softplus(delta)
    dt = delta.reshape(batch, groups, dm, 1, length)
    u4 = u.reshape(batch, groups, dm, length)
    a = torch.exp(torch.clamp(dt * A.reshape(groups, dm, n_state, 1), min=-80.0))
    h = dt * u4.unsqueeze(3) * B.unsqueeze(2)  # (batch, K, Dm, N, L)
    step = 1
    while step < length:
        h = h + a * F.pad(h[..., : length - step], [step, 0])
        if step * 2 < length:
            a = a * F.pad(a[..., : length - step], [step, 0], value=1.0)
        step *= 2
    y = (h * C.unsqueeze(2)).sum(3)
    if D is not None:
        y = y + u4 * D.to(dtype).reshape(groups, dm, 1)
    return y.reshape(batch, kd, length)


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------
def _dense(x: Tensor) -> Tensor:
    """``x`` itself if it is contiguous or time-major contiguous (``(batch, L, C)`` in memory)."""
    if x.is_contiguous() or (x.dim() == 3 and x.transpose(1, 2).is_contiguous()):
        return x
    return x.contiguous()


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (half precision is upcast)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _cuda_scan_fn() -> Callable[..., Tensor] | None:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - ImportError, or a broken CUDA extension build
        return None
    return selective_scan_fn


def is_cuda_scan_available() -> bool:
    """Whether ``mamba_ssm``'s fused CUDA selective scan can be imported and CUDA is present.

    Returns:
        True if ``backend="cuda"`` can be used for CUDA tensors.
    """
    return torch.cuda.is_available() and _cuda_scan_fn() is not None


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    backend: str = "auto",
) -> Tensor:
    """Selective scan (the S6 recurrence of Mamba) in the VMamba / ``mamba_ssm`` layout.

    ``Δ = softplus(delta + delta_bias)``, ``h_t = exp(Δ_t·A)·h_{t-1} + Δ_t·B_t·u_t``,
    ``y_t = Σ_n C_t·h_t + D·u_t`` with ``h_{-1} = 0``; channel group ``k`` (``Dm`` channels) uses
    ``B[:, k]`` and ``C[:, k]``. The scan runs in float32 with autocast disabled (float64 inputs
    stay float64); gradients flow back to the inputs' own dtypes.

    Args:
        u: input ``(batch, K*Dm, L)``.
        delta: time steps before bias and softplus, ``(batch, K*Dm, L)``.
        A: state matrix ``(K*Dm, N)`` (normally ``-exp(A_log)``).
        B: input projections ``(batch, K, N, L)``.
        C: output projections ``(batch, K, N, L)``.
        D: optional skip weights ``(K*Dm,)``.
        delta_bias: optional bias added to ``delta``, ``(K*Dm,)``.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        backend: ``"auto"`` (CUDA kernel for CUDA tensors when ``mamba_ssm`` is installed,
            otherwise ``"parallel"``; while ``torch.export`` traces,
            :func:`~medmamba.networks.selective_scan_chunked`, whose graph serves every ``L``), ``"parallel"`` (exact vectorised scan with analytic
            backward), ``"reference"`` (sequential loop) or ``"cuda"`` (``mamba_ssm``).

    Returns:
        ``y`` of shape ``(batch, K*Dm, L)``, float32 (float64 for float64 inputs).

    Raises:
        ValueError: unknown ``backend`` or inconsistent shapes, or ``backend="cuda"`` with
            tensors that are not on a CUDA device.
        TypeError: a non-tensor or non-floating-point argument.
        RuntimeError: ``backend="cuda"`` without an importable ``mamba_ssm``.
    """
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"selective_scan: `backend` must be one of {SCAN_BACKENDS}, got {backend!r}.")
    _validate(u, delta, A, B, C, D, delta_bias)
    if backend == "auto":
        if torch.compiler.is_exporting():  # torch.export / the default ONNX exporter: one graph for every L
            return selective_scan_chunked(u, delta, A, B, C, D, delta_bias, delta_softplus)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return selective_scan_scriptable(u, delta, A, B, C, D, delta_bias, delta_softplus)
        backend = "cuda" if u.is_cuda and _cuda_scan_fn() is not None else "parallel"
    if backend == "reference":
        return selective_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus)
    dtype = _compute_dtype(u, delta, A, B, C, D, delta_bias)
    if backend == "cuda":
        tensors = [t for t in (u, delta, A, B, C, D, delta_bias) if t is not None]
        if not all(t.is_cuda for t in tensors):
            devices = sorted({str(t.device) for t in tensors})
            raise ValueError(
                f"selective_scan: backend='cuda' needs all tensors on a CUDA device, got tensors on {devices}; "
                "use backend='parallel' or 'auto' for CPU tensors."
            )
        fn = _cuda_scan_fn()
        if fn is None:
            raise RuntimeError(
                "selective_scan: backend='cuda' needs mamba_ssm (pip install 'medmamba[cuda]'), "
                "which could not be imported; use backend='parallel' or 'auto'."
            )
        with torch.autocast(device_type="cuda", enabled=False):
            args = [t.to(dtype).contiguous() for t in (u, delta, A, B, C)]
            extra = [None if t is None else t.to(dtype).contiguous() for t in (D, delta_bias)]
            y = fn(*args, D=extra[0], z=None, delta_bias=extra[1], delta_softplus=delta_softplus)
        return y.to(dtype)
    with torch.autocast(device_type=u.device.type, enabled=False):
        args = [_dense(t.to(dtype)) for t in (u, delta)] + [t.to(dtype).contiguous() for t in (A, B, C)]
        extra = [None if t is None else t.to(dtype).contiguous() for t in (D, delta_bias)]
        return SelectiveScanFn.apply(*args, extra[0], extra[1], bool(delta_softplus))
