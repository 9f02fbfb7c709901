"""SS2D: the two-direction 2D selective-scan (Mamba) module of MobileMamba's global branch."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..selective_scan import selective_scan, selective_scan_scriptable
from .conv_bn import ConvBN
from .depthwise_conv import DepthwiseConv2d

__all__ = ["SelectiveScan2D"]


class SelectiveScan2D(nn.Module):
    """2D selective scan (SS2D, as in VMamba) with ``K = 2`` directions and state size ``N``.

    The feature map is flattened row-major to a sequence of ``L = H·W`` tokens, scanned forwards and
    backwards by the input-dependent state-space recurrence of Mamba (S6), and the two directions are
    summed, layer-normalised over channels and gated.

    ``x, z = split(conv-BN(C→2·d_inner, 1))``; ``x = SiLU(dwconv3×3(x))``;
    ``y = LayerNorm(scan_fwd(x) + scan_bwd(x)) · SiLU(z)``; ``out = conv-BN(d_inner→C, 1)(y)``.

    Args:
        channels: input and output width ``C``.
        ssm_ratio: expansion ``d_inner = ssm_ratio · C``.
        d_state: state size ``N`` (MobileMamba: 1).
        dt_rank: rank ``R`` of the Δ projection; ``None`` gives ``ceil(C / 16)``.
        scan_backend: backend of :func:`medmamba.networks.selective_scan` (``"auto"``, ``"parallel"``,
            ``"reference"``, ``"cuda"``); TorchScript and ONNX export always use the scriptable scan.

    Attributes:
        batch_coupled_merge: ``False`` (default): every image's two scan directions are merged on
            their own, ``y_i = y0_i + reverse(y1_i)``. ``True`` reproduces the reference
            implementation's CPU code path, whose merge broadcasts over the batch
            (``y_i = Σ_j y0_j + B·reverse(y1_i)``), so that an image's output depends on the other
            images of its batch. It exists only to verify against fixtures written by that code;
            set it with :func:`medmamba.networks.convert.emulate_reference_cpu_merge`, never for
            real use. Both agree for a batch of one image.
    """

    def __init__(
        self,
        channels: int,
        ssm_ratio: float = 2.0,
        d_state: int = 1,
        dt_rank: int | None = None,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        d_inner = int(ssm_ratio * channels)
        dt_rank = math.ceil(channels / 16) if dt_rank is None else dt_rank
        k = 2  # directions: row-major forwards and backwards
        self.directions = k
        self.batch_coupled_merge = False
        self.d_inner = d_inner
        self.d_state = d_state
        self.dt_rank = dt_rank
        self.scan_backend = scan_backend

        self.in_proj = ConvBN(channels, 2 * d_inner, 1)
        self.act = nn.SiLU()
        self.dw_conv = DepthwiseConv2d(d_inner, 3, bias=True)
        bound = d_inner**-0.5
        self.x_proj_weight = nn.Parameter(torch.empty(k, dt_rank + 2 * d_state, d_inner).uniform_(-bound, bound))
        self.dt_proj_weight = nn.Parameter(0.1 * torch.rand(k, d_inner, dt_rank))
        self.dt_proj_bias = nn.Parameter(0.1 * torch.rand(k, d_inner))
        self.A_log = nn.Parameter(torch.zeros(k * d_inner, d_state))
        self.D = nn.Parameter(torch.ones(k * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = ConvBN(d_inner, channels, 1)

    @torch.jit.unused
    def _scan_eager(
        self, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
    ) -> torch.Tensor:
        # a traced or exported graph takes the dispatcher's graph-friendly scans ("auto": the chunked
        # scan under torch.export, the out-of-place one under tracing), whatever scan_backend says
        graph = torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        return selective_scan(
            u, delta, A, B, C, self.D, self.dt_proj_bias.reshape(-1), delta_softplus=True,
            backend="auto" if graph else self.scan_backend,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        length = h * w
        xz = self.in_proj(x)
        x_in, z = xz.chunk(2, dim=1)
        z = self.act(z)
        x_in = self.act(self.dw_conv(x_in))

        seq = x_in.flatten(2)  # (b, d, L), row-major
        xs = torch.stack([seq, seq.flip(-1)], dim=1)  # (b, K, d, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_proj_weight)

        channels = self.directions * self.d_inner  # explicit, not -1: an empty batch has no size to infer
        u = xs.reshape(b, channels, length)
        delta = dts.reshape(b, channels, length)
        A = -torch.exp(self.A_log.float())
        if torch.jit.is_scripting():
            y = selective_scan_scriptable(
                u, delta, A, Bs.contiguous(), Cs.contiguous(), self.D, self.dt_proj_bias.reshape(-1), True
            )
        else:
            y = self._scan_eager(u, delta, A, Bs.contiguous(), Cs.contiguous())
        y = y.reshape(b, self.directions, self.d_inner, length)
        if self.batch_coupled_merge:
            # the reference CPU merge: (B, d, L) + (B, 1, d, L) broadcasts to (B, B, d, L), summed over dim 1
            y = (y[:, 0] + y[:, 1].flip(-1).unsqueeze(1)).sum(1)
        else:
            y = y[:, 0] + y[:, 1].flip(-1)  # (b, d, L)

        y = self.out_norm(y.transpose(1, 2))  # (b, L, d)
        y = y * z.flatten(2).transpose(1, 2).to(y.dtype)
        y = y.transpose(1, 2).reshape(b, self.d_inner, h, w)
        return self.out_proj(y.to(x.dtype))
