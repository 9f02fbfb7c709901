"""The selective scan as a fixed graph for any sequence length: chunked, for ``torch.export``.

The fast CPU scan (:func:`medmamba.networks.selective_scan`, Brent–Kung) and the TorchScript/ONNX
form (Hillis–Steele) both take ``ceil(log2 L)`` steps chosen in Python from the sequence length
``L``, so a graph traced from them holds one ``L``: ``torch.export`` with a dynamic height and width
(``L = H/16 · W/16``) specialises or fails. Here the recurrence
``h_t = a_t·h_{t-1} + x_t`` (``a_t = exp(Δ_t·A) ≤ 1``) is computed with a number of operations
that does not depend on ``L``, in the chunked form of state-space duality (Dao and Gu, "Transformers
are SSMs", ICML 2024, the "SSD" algorithm):

1. ``L`` is padded to a multiple of the chunk length ``T`` (time step 0, input 0: no effect on the
   outputs before it; always by at least one step, to at least two chunks) and cut into ``n`` chunks;
2. within a chunk, ``h_t = Σ_{s≤t} exp(S_t − S_s)·x_s`` with ``S`` the cumulative sum of
   ``log a`` over the chunk: a masked ``T × T`` matrix whose entries are exponentials of
   non-positive numbers (no overflow);
3. between chunks, the state entering chunk ``c`` is ``Σ_{j<c} exp(Q_{c-1} − Q_j)·e_j`` (``e_j``
   the state at the end of chunk ``j``, ``Q`` the cumulative log decay over chunks): the same
   masked form over ``n × n``.

Every step is a tensor operation over symbolic sizes, so one exported graph serves every ``L``.
Memory grows as ``L·T + n²`` per channel and state instead of ``L``: this form is for export and
inference, the training path keeps the analytic backward of :func:`medmamba.networks.selective_scan`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["selective_scan_chunked"]


def _masked_decay(to: Tensor, since: Tensor, diagonal: int = 0) -> Tensor:
    """``exp(to[..., t] - since[..., s])`` where ``s <= t + diagonal``, else 0: ``(..., T, T)``."""
    length = to.shape[-1]
    diff = to.unsqueeze(-1) - since.unsqueeze(-2)  # [t, s]
    keep = torch.ones(length, length, dtype=torch.bool, device=to.device).tril(diagonal)
    return torch.exp(diff.masked_fill(~keep, float("-inf")))


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = True,
    chunk: int = 8,
) -> Tensor:
    """Selective scan (S6) with a graph independent of the sequence length (see the module docstring).

    Same contract as :func:`medmamba.networks.selective_scan` (VMamba / ``mamba_ssm`` layout).

    Args:
        u: input ``(batch, K*Dm, L)``.
        delta: time steps before bias and softplus, ``(batch, K*Dm, L)``.
        A: state matrix ``(K*Dm, N)``.
        B: input projections ``(batch, K, N, L)``.
        C: output projections ``(batch, K, N, L)``.
        D: optional skip weights ``(K*Dm,)``.
        delta_bias: optional bias of ``delta`` ``(K*Dm,)``.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        chunk: chunk length ``T``.

    Returns:
        ``y`` of shape ``(batch, K*Dm, L)``, float32 (float64 for float64 ``u``).

    Raises:
        ValueError: If ``chunk`` is not a positive integer.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    batch, kd, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    dm = kd // groups
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype).unsqueeze(-1)
    if delta_softplus:
        delta = F.softplus(delta)
    # pad L to a multiple of the chunk (time step 0: decay 1, input 0) and cut the padding off the output only
    # at least one padded step and two chunks, so that the traced graph never meets a zero-size pad
    # or a size-1 dimension (torch.export specialises on both); written as n * chunk, the sizes need
    # no proof of divisibility
    n_chunks = length // chunk + 2
    padded = n_chunks * chunk
    pad = padded - length
    delta, u = F.pad(delta, (0, pad)), F.pad(u, (0, pad))
    B, C = F.pad(B, (0, pad)), F.pad(C, (0, pad))
    dt = delta.reshape(batch, groups, dm, 1, padded)
    log_a = (dt * A.reshape(groups, dm, n_state, 1)).reshape(batch, groups, dm, n_state, n_chunks, chunk)  # <= 0
    x = (dt * u.reshape(batch, groups, dm, 1, padded) * B.unsqueeze(2)).reshape(batch, groups, dm, n_state, n_chunks, chunk)
    cum = torch.cumsum(log_a, dim=-1)
    h = (_masked_decay(cum, cum) @ x.unsqueeze(-1)).squeeze(-1)  # within each chunk, from a zero state
    # the state entering chunk c: sum over j < c of exp(Q[c-1] - Q[j]) * (state at the end of chunk j),
    # with Q the cumulative log decay over chunks (no shifted copies: no size n - 1 in the graph)
    ends = h[..., -1]  # (..., n)
    q = torch.cumsum(cum[..., -1], dim=-1)
    q_before = q - cum[..., -1]
    entering = (_masked_decay(q_before, q, diagonal=-1) @ ends.unsqueeze(-1)).squeeze(-1)
    h = (h + torch.exp(cum) * entering.unsqueeze(-1)).reshape(batch, groups, dm, n_state, padded)
    y = (h * C.unsqueeze(2)).sum(3)  # (batch, K, Dm, padded)
    if D is not None:
        y = y + u.reshape(batch, groups, dm, padded) * D.to(dtype).reshape(groups, dm, 1)
    y = y.reshape(batch, kd, padded)
    return y[..., :length]
