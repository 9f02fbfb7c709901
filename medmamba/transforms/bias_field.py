"""MONAI's random bias field, with the field evaluated separably in float32.

``monai.transforms.RandBiasField`` evaluates its Legendre-polynomial field with
``numpy.polynomial.legendre.leggrid3d`` in float64 on the full grid, then ``exp`` and the product in
float64: about 40 ms for a 128×128×115 volume on one thread of the development VM, against 10 ms
here. The field is a sum of products of one polynomial
per axis, so it is evaluated here as a contraction of three small per-axis Legendre tables (float32,
torch): the same random draws (MONAI's ``randomize``), the same field to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import RandBiasField as _MonaiRandBiasField
from monai.transforms import RandBiasFieldd as _MonaiRandBiasFieldd
from monai.utils import convert_to_tensor, get_equivalent_dtype

__all__ = ["RandBiasField", "RandBiasFieldd", "legendre_coefficients"]


def legendre_coefficients(rank: int, degree: int, coeff: Sequence[float]) -> np.ndarray:
    """The ``(degree + 1,) * rank`` coefficient array MONAI's ``RandBiasField`` fills from ``coeff``.

    Args:
        rank: 2 or 3 spatial dimensions.
        degree: Polynomial degree.
        coeff: The drawn coefficients, in MONAI's order.

    Returns:
        The coefficient array of ``leggrid2d`` / ``leggrid3d``.

    Raises:
        ValueError: If ``rank`` is not 2 or 3.
    """
    mat = np.zeros((degree + 1,) * rank)
    if rank == 2:
        mat[np.tril_indices(degree + 1)] = coeff
        return mat
    if rank == 3:
        idx = np.asarray(
            [[i, j, k] for i in range(degree + 1) for j in range(degree + 1 - i) for k in range(degree + 1 - i - j)]
        )
        mat[idx[:, 0], idx[:, 1], idx[:, 2]] = coeff
        return mat
    raise ValueError(f"rank must be 2 or 3 spatial dimensions, got {rank}.")


def _legendre_table(size: int, degree: int) -> torch.Tensor:
    """``(size, degree + 1)``: the Legendre polynomials on ``linspace(-1, 1, size)`` (float32)."""
    coords = np.linspace(-1.0, 1.0, size, dtype=np.float32).astype(np.float64)
    return torch.from_numpy(np.polynomial.legendre.legvander(coords, degree).astype(np.float32))


class RandBiasField(_MonaiRandBiasField):
    """``monai.transforms.RandBiasField`` (same arguments, same draws) with a separable float32 field."""

    def field(self, spatial_shape: Sequence[int]) -> torch.Tensor:
        """The log bias field for the current coefficients, ``spatial_shape`` (2D or 3D), float32."""
        rank = len(spatial_shape)
        coeff = torch.from_numpy(legendre_coefficients(rank, self.degree, self._coeff).astype(np.float32))
        tables = [_legendre_table(int(n), self.degree) for n in spatial_shape]
        if rank == 2:
            return torch.einsum("ab,ia,jb->ij", coeff, *tables)
        return torch.einsum("abc,ia,jb,kc->ijk", coeff, *tables)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Multiply ``img`` (channel-first, 2D or 3D) by ``exp`` of a random field (the same for every channel)."""
        img_t = convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
        if randomize:
            self.randomize(img_size=img_t.shape[1:])
        if not self._do_transform:
            return img_t
        if len(img_t.shape) - 1 not in (2, 3):
            return super().__call__(img, randomize=False)
        scale = torch.exp(self.field(img_t.shape[1:])).to(img_t.device)
        # MONAI's output type: ``dtype``, or the input's when it is None
        dtype = img_t.dtype if self.dtype is None else get_equivalent_dtype(self.dtype, torch.Tensor)
        return (img_t.float() * scale).to(dtype)


class RandBiasFieldd(_MonaiRandBiasFieldd):
    """``monai.transforms.RandBiasFieldd`` (same arguments, same draws) with :class:`RandBiasField`'s field."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        old = self.rand_bias_field
        self.rand_bias_field = RandBiasField(degree=old.degree, coeff_range=old.coeff_range, dtype=old.dtype, prob=1.0)
