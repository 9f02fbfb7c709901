"""Effective receptive fields (Luo et al., NeurIPS 2016), plotted as in MobileMamba's Figure 1.

The ERF of a network at a feature map is the gradient of the feature map's centre unit (summed over
its channels) with respect to the input, its absolute value summed over the input channels and
averaged over images. The plot follows the RepLKNet/VMamba/MobileMamba tooling: a log-scaled
colour map of the normalised map, models side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from torch import nn

from medmamba.visualize._common import new_figure

__all__ = [
    "ERFResult",
    "default_feature_fn",
    "effective_receptive_field",
    "erf_mass_radius",
    "fill_zero_norm_weights",
    "plot_effective_receptive_fields",
]

FeatureFn = Callable[[torch.Tensor], Any]
_REDUCTIONS = ("abs", "relu")


def erf_mass_radius(erf_map: np.ndarray, fraction: float, centre: Sequence[float] | None = None) -> float:
    """The radius (pixels) of the disc around ``centre`` holding ``fraction`` of the map's total mass.

    Args:
        erf_map: Non-negative 2D (or N-D) map.
        fraction: Share of the mass in ``(0, 1]``.
        centre: Centre in pixel coordinates (the array centre by default).

    Returns:
        The smallest pixel-centre distance ``r`` such that the pixels within ``r`` hold at least
        ``fraction`` of the total; 0 for an all-zero map.

    Raises:
        ValueError: For a fraction outside ``(0, 1]`` or negative values.
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    m = np.asarray(erf_map, dtype=np.float64)
    if np.any(m < 0):
        raise ValueError("erf_map must be non-negative")
    total = m.sum()
    if total <= 0:
        return 0.0
    c = [(s - 1) / 2 for s in m.shape] if centre is None else [float(v) for v in centre]
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) - ci for s, ci in zip(m.shape, c)], indexing="ij")
    dist = np.sqrt(sum(g**2 for g in grids)).ravel()
    order = np.argsort(dist, kind="stable")
    cum = np.cumsum(m.ravel()[order]) / total
    k = int(np.searchsorted(cum, float(fraction) - 1e-12))
    return float(dist[order][min(k, dist.size - 1)])


@dataclass(frozen=True)
class ERFResult:
    """An effective receptive field.

    Attributes:
        map: The ERF normalised to a maximum of 1, shape = the input's spatial shape.
        raw: Mean over images of the reduced input gradient (before normalisation).
        centre: Input coordinates (pixels) of the centre of the chosen output unit.
        feature_shape: Spatial shape of the feature map.
        unit: Index of the output unit in the feature map.
        n_images: Number of images averaged.
        radii: ``{fraction: radius}`` of the gradient mass (see :func:`erf_mass_radius`).
    """

    map: np.ndarray
    raw: np.ndarray
    centre: tuple[float, ...]
    feature_shape: tuple[int, ...]
    unit: tuple[int, ...]
    n_images: int
    radii: dict[float, float] = field(default_factory=dict)

    def mass_radius(self, fraction: float) -> float:
        """Radius (input pixels) around :attr:`centre` holding ``fraction`` of the gradient mass."""
        return erf_mass_radius(self.map, fraction, self.centre)

    def area_ratio(self, threshold: float = 0.01) -> float:
        """Share of the input where the normalised ERF is at least ``threshold``."""
        return float((self.map >= threshold).mean())

    def summary(self) -> dict[str, float]:
        """Scalars for printing: ``radius_50``, ``radius_90`` (pixels), the same relative to half the
        smaller input side (``rel_radius_50``, ``rel_radius_90``), and the share of the input where
        the normalised ERF reaches 1% of its maximum (``area_1pct``)."""
        half = min(self.map.shape) / 2
        r50 = self.radii.get(0.5, self.mass_radius(0.5))
        r90 = self.radii.get(0.9, self.mass_radius(0.9))
        return {
            "radius_50": r50,
            "radius_90": r90,
            "rel_radius_50": r50 / half,
            "rel_radius_90": r90 / half,
            "area_1pct": self.area_ratio(0.01),
        }


def default_feature_fn(model: Any) -> FeatureFn:
    """The feature map whose centre unit defines the ERF, for common networks.

    * anything with ``forward_features`` (MobileMamba: the last stage, stride 64) - its last output;
    * MONAI ``DenseNet`` (``features``) - the last dense block's output after the final norm;
    * MONAI ``EfficientNetBN`` / ``EfficientNet`` - the head convolution's output;
    * anything else - ``model(x)``, which must be a spatial map ``(B, C, *spatial)`` (e.g. a MONAI
      ``UNet``'s output), or a list/tuple whose last element is.

    Args:
        model: The network (or any callable).

    Returns:
        A callable mapping the input batch to the feature map.
    """
    if hasattr(model, "forward_features") and callable(model.forward_features):
        return lambda x: model.forward_features(x)
    if isinstance(model, nn.Module) and isinstance(getattr(model, "features", None), nn.Module):
        return lambda x: model.features(x)
    if all(hasattr(model, a) for a in ("_conv_stem", "_blocks", "_conv_head", "_bn1")):

        def efficientnet_features(x: torch.Tensor) -> torch.Tensor:
            x = model._conv_stem(model._conv_stem_padding(x))
            x = model._swish(model._bn0(x))
            x = model._blocks(x)
            x = model._conv_head(model._conv_head_padding(x))
            return model._swish(model._bn1(x))

        return efficientnet_features
    return model


def fill_zero_norm_weights(model: nn.Module, value: float = 1.0) -> int:
    """Set normalisation weights (γ) that are all zero to ``value``, in place.

    MobileMamba (like many efficient networks) zero-initialises the last norm of its residual
    branches (FFN, MRFFI projection, depthwise ConvBN), so an *untrained* network is its stem plus
    identities and its ERF is just the stem's. Call this on an untrained model to see the receptive
    field its architecture allows; trained weights need no such step.

    Args:
        model: The network (changed in place).
        value: The weight given to those norms.

    Returns:
        The number of norm layers changed.
    """
    changed = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                w = getattr(m, "weight", None)
                if isinstance(w, torch.Tensor) and w.numel() and bool((w == 0).all()):
                    w.fill_(float(value))
                    changed += 1
    return changed


def _feature_map(out: Any) -> torch.Tensor:
    if isinstance(out, (list, tuple)):
        if not out:
            raise ValueError("feature_fn returned an empty list; expected a feature map (B, C, *spatial)")
        out = out[-1]
    if isinstance(out, Mapping):
        raise TypeError("feature_fn returned a mapping; pass feature_fn=lambda x: model(x)[key]")
    if not isinstance(out, torch.Tensor) or out.ndim < 3:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"the feature map must be a tensor (B, C, *spatial), got {shape}; pass a feature_fn returning a "
            "spatial feature map (e.g. lambda x: model.forward_features(x)[-1])"
        )
    return out


def _check_unit(unit: Sequence[int] | None, feat_shape: tuple[int, ...]) -> tuple[int, ...]:
    if unit is None:
        return tuple(s // 2 for s in feat_shape)
    u = tuple(int(v) for v in unit)
    if len(u) != len(feat_shape) or any(not 0 <= v < s for v, s in zip(u, feat_shape)):
        raise ValueError(f"unit={tuple(unit)!r} is not an index into the feature map of spatial shape {feat_shape}")
    return u


def _batches(
    inputs: Any | None, input_shape: Sequence[int] | None, n_images: int, batch_size: int, seed: int
) -> Iterable[torch.Tensor]:
    if inputs is not None:
        if isinstance(inputs, torch.Tensor):
            x = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
            for i in range(0, x.shape[0], batch_size):
                yield x[i : i + batch_size]
        elif isinstance(inputs, np.ndarray):
            yield from _batches(torch.from_numpy(inputs), None, n_images, batch_size, seed)
        else:
            for b in inputs:
                t = b if isinstance(b, torch.Tensor) else torch.as_tensor(np.asarray(b))
                yield t.as_tensor() if hasattr(t, "as_tensor") else t
        return
    assert input_shape is not None
    gen = torch.Generator().manual_seed(int(seed))
    done = 0
    while done < n_images:
        b = min(batch_size, n_images - done)
        yield torch.randn((b, *input_shape), generator=gen)
        done += b


def effective_receptive_field(
    model: nn.Module | Callable[..., Any],
    input_shape: Sequence[int] | None = None,
    n_images: int = 8,
    device: str | torch.device | None = None,
    *,
    inputs: torch.Tensor | np.ndarray | Iterable[torch.Tensor] | None = None,
    feature_fn: FeatureFn | None = None,
    batch_size: int = 4,
    seed: int = 0,
    reduction: str = "abs",
    unit: Sequence[int] | None = None,
    fractions: Sequence[float] = (0.5, 0.9),
) -> ERFResult:
    """Effective receptive field of the centre unit of a feature map.

    For each image ``x``: ``g = d(sum_c F(x)[c, centre]) / dx``, reduced to ``|g|`` (or ``relu(g)``,
    as in RepLKNet's script) and summed over the input channels; then averaged over the images and
    normalised to a maximum of 1. The model is evaluated in ``eval()`` mode (its mode is restored
    afterwards) and no parameter gradient is accumulated. For an untrained MobileMamba call
    :func:`fill_zero_norm_weights` first: its residual branches start at zero.

    Args:
        model: The network, or any callable (used as is when ``feature_fn`` is given).
        input_shape: ``(C, *spatial)`` of the random inputs (standard normal; ignored with ``inputs``).
        n_images: Number of random images (ignored with ``inputs``).
        device: Device to run on (the model's device by default); the model is not moved.
        inputs: Images to use instead of random ones: a ``(N, C, *spatial)`` tensor/array or an
            iterable of batches.
        feature_fn: Callable mapping the input batch to the feature map ``(B, C, *spatial)`` (or a
            list whose last element is); :func:`default_feature_fn` of ``model`` by default.
        batch_size: Images per backward pass.
        seed: Seed of the random inputs.
        reduction: ``"abs"`` or ``"relu"`` of the input gradient.
        unit: Spatial index of the output unit; the centre ``size // 2`` per axis by default. An
            even-sized feature map has no centre unit, so its ERF is off-centre: pick an input size
            that gives an odd-sized map (e.g. ``64 * 3 = 192`` for MobileMamba's stride-64 stage).
        fractions: Gradient-mass fractions whose radii are stored in :attr:`ERFResult.radii`.

    Returns:
        The :class:`ERFResult`.

    Raises:
        ValueError: For a missing/invalid ``input_shape``, ``n_images < 1``, an unknown reduction, or a
            feature map that is not spatial.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not known; expected one of {_REDUCTIONS}")
    if inputs is None:
        if input_shape is None or len(input_shape) < 2 or any(int(s) < 1 for s in input_shape):
            raise ValueError(f"input_shape must be (C, *spatial) with positive sizes, got {input_shape!r}")
        if int(n_images) < 1:
            raise ValueError(f"n_images must be >= 1, got {n_images}")
        input_shape = tuple(int(s) for s in input_shape)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is None:
        params = list(model.parameters()) if isinstance(model, nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    device = torch.device(device)
    fn = feature_fn if feature_fn is not None else default_feature_fn(model)
    was_training = model.training if isinstance(model, nn.Module) else None
    dtype = torch.float32
    if isinstance(model, nn.Module):
        fp = next((p for p in model.parameters() if p.is_floating_point()), None)
        dtype = fp.dtype if fp is not None else dtype
        model.eval()
    total: torch.Tensor | None = None
    count = 0
    feat_shape: tuple[int, ...] = ()
    chosen: tuple[int, ...] = ()
    in_spatial: tuple[int, ...] = ()
    try:
        with torch.enable_grad():
            for batch in _batches(inputs, input_shape, int(n_images), int(batch_size), seed):
                x = batch.detach().to(device=device, dtype=dtype).requires_grad_(True)
                feat = _feature_map(fn(x))
                feat_shape = tuple(int(s) for s in feat.shape[2:])
                chosen = _check_unit(unit, feat_shape)
                centre_unit = feat[(slice(None), slice(None), *chosen)].sum()
                (grad,) = torch.autograd.grad(centre_unit, x)
                g = grad.abs() if reduction == "abs" else grad.clamp_min(0)
                g = g.sum(dim=1).sum(dim=0).double()  # sum channels, then images
                total = g if total is None else total + g
                count += x.shape[0]
                in_spatial = tuple(int(s) for s in x.shape[2:])
    finally:
        if was_training is not None:
            model.train(was_training)  # type: ignore[union-attr]
    if total is None or count == 0:
        raise ValueError("no input images were given (inputs is empty)")
    if len(feat_shape) != len(in_spatial):
        raise ValueError(
            f"the feature map has {len(feat_shape)} spatial dims but the input has {len(in_spatial)}; "
            "pass a feature_fn returning a spatial feature map"
        )
    raw = (total / count).cpu().numpy()
    peak = raw.max()
    norm = raw / peak if peak > 0 else raw.copy()
    centre = tuple((u + 0.5) * s / f - 0.5 for u, s, f in zip(chosen, in_spatial, feat_shape))
    radii = {float(fr): erf_mass_radius(norm, fr, centre) for fr in fractions}
    return ERFResult(norm, raw, centre, feat_shape, chosen, count, radii)


ERFLike = Union[ERFResult, np.ndarray, torch.Tensor]


def plot_effective_receptive_fields(
    results: Mapping[str, ERFLike],
    *,
    log_scale: bool = True,
    floor: float = 1e-3,
    cmap: str = "RdYlGn",
    show_radii: bool = True,
    colorbar: bool = True,
    ncols: int | None = None,
    title: str | None = None,
    fig: Figure | None = None,
) -> Figure:
    """ERF maps of several models side by side, as in MobileMamba's Figure 1.

    Each map is normalised to a maximum of 1 and drawn on a shared log-scaled colour map (values
    below ``floor`` are clipped to it), so maps are comparable across models; a wide, even spread
    of contribution means a large effective receptive field.

    Args:
        results: ``{model name: ERFResult or 2D map}`` (3D maps show their middle slice along the
            last axis).
        log_scale: Log colour scale from ``floor`` to 1 (linear 0..1 otherwise).
        floor: Lower end of the log scale, in ``(0, 1)``.
        cmap: Colour map (``RdYlGn`` like the RepLKNet/VMamba ERF figures).
        show_radii: Draw the circles holding 50% and 90% of the gradient mass (ERFResults only) and
            give their radii in the titles.
        colorbar: Add a shared colour bar (an extra axes).
        ncols: Columns of the grid (all in one row by default).
        title: Figure title.
        fig: Figure to draw into.

    Returns:
        The figure, with one image axes per model (plus the colour bar).

    Raises:
        ValueError: For no results, a map that is not 2D/3D, or a bad ``floor``.
    """
    if not results:
        raise ValueError("results is empty; expected {model name: ERFResult or map}")
    if not 0.0 < float(floor) < 1.0:
        raise ValueError(f"floor must be in (0, 1), got {floor}")
    n = len(results)
    ncols = n if ncols is None else int(ncols)
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    nrows = -(-n // ncols)
    fig = new_figure(fig, figsize=(3.4 * ncols + (0.8 if colorbar else 0.0), 3.6 * nrows))
    grid = fig.subplots(nrows, ncols, squeeze=False)
    norm: Normalize = LogNorm(vmin=float(floor), vmax=1.0, clip=True) if log_scale else Normalize(0.0, 1.0, clip=True)
    im = None
    image_axes = []
    for k, ax in enumerate(grid.ravel()):
        if k >= n:
            ax.remove()
            continue
        name, res = list(results.items())[k]
        if isinstance(res, ERFResult):
            m, centre = res.map, res.centre
        else:
            m = res.detach().cpu().numpy() if isinstance(res, torch.Tensor) else np.asarray(res)
            centre = None
        m = np.asarray(m, dtype=np.float64)
        if m.ndim == 3:
            m = m[..., m.shape[-1] // 2]
            centre = None if centre is None else centre[:2]
        if m.ndim != 2:
            raise ValueError(f"results[{name!r}] has shape {m.shape}; expected a 2D (or 3D) map")
        peak = m.max()
        m = np.abs(m) / peak if peak > 0 else np.abs(m)
        im = ax.imshow(np.maximum(m, float(floor)) if log_scale else m, cmap=cmap, norm=norm, interpolation="nearest")
        label = name
        if show_radii and isinstance(res, ERFResult) and centre is not None:
            r50, r90 = res.mass_radius(0.5), res.mass_radius(0.9)
            for r, ls in ((r50, "-"), (r90, "--")):
                ax.add_patch(Circle((centre[1], centre[0]), r, fill=False, color="black", lw=1.0, ls=ls))
            label += f"\nr50 = {r50:.1f} px, r90 = {r90:.1f} px"
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        image_axes.append(ax)
    if colorbar and im is not None:
        fig.colorbar(im, ax=image_axes, shrink=0.8, label="normalised ERF" + (" (log)" if log_scale else ""))
    if title is not None:
        fig.suptitle(title, fontsize=11)
    return fig
