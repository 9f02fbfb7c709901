"""The one check of integer settings shared by the mirror read-out, the lesion rules and the symmetry plane."""

from __future__ import annotations

import re

import numpy as np
import pytest

from medmamba.inferers import BrightOutlierRule, DarkAsymmetryRule, MirrorContrastInferer
from medmamba.inferers.argument_checks import check_count


def test_check_count_takes_python_and_numpy_integers_as_int() -> None:
    assert check_count("core", 0) == 0
    value = check_count("core", np.int64(3))
    assert value == 3 and type(value) is int


@pytest.mark.parametrize("value", [-1, 1.5, True, np.bool_(True), "2", None, np.float32(2.0)])
def test_check_count_refuses_what_is_not_an_int_at_least_zero(value) -> None:
    with pytest.raises(ValueError, match=re.escape(f"solid must be an int >= 0, got {value!r}")):
        check_count("solid", value)


def test_the_rules_and_the_read_out_accept_numpy_integers_alike() -> None:
    """Before the shared check, the dark rule took numpy integers for ``core`` but its base class refused them
    for ``min_voxels``, and the read-out refused them for ``plane_core``."""
    rule = DarkAsymmetryRule(core=np.int64(2), min_voxels=np.int32(8), white_matter_channel=np.int16(3))
    assert (rule.core, rule.min_voxels, rule.white_matter_channel) == (2, 8, 3)
    assert type(rule.min_voxels) is int and type(rule.white_matter_channel) is int
    assert BrightOutlierRule(white_matter_channel=np.int64(3)).white_matter_channel == 3
    readout = MirrorContrastInferer(lambda x, net: x, plane="symmetry", plane_core=np.int64(2), white_matter_channel=np.int64(3))
    assert (readout.plane_core, readout.white_matter_channel) == (2, 3) and type(readout.plane_core) is int
    with pytest.raises(ValueError, match="min_voxels must be an int >= 0, got -8"):
        DarkAsymmetryRule(min_voxels=-8)
    with pytest.raises(ValueError, match="plane_core must be an int >= 0, got True"):
        MirrorContrastInferer(lambda x, net: x, plane_core=True)
