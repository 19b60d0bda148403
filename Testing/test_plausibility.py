"""The plausibility guard on synthetic labelmaps: liver volume outside the plausible range, lesion burden, bounds."""

from __future__ import annotations

import numpy as np
import pytest

from LiverSegLib.config import CascadeConfig
from LiverSegLib.errors import ModelError
from LiverSegLib.pipeline.plausibility import plausibility_warnings

SPACING = (2.0, 2.0, 2.5)  # 10 uL per voxel: 100,000 voxels = 1 L, round volumes are exact
SHAPE = (62, 100, 100)  # 600,000 voxels between the first and the last slice


def _labels(liver_l: float, lesion_percent: float = 0.0, touch_ends: bool = False) -> np.ndarray:
    """A labelmap holding ``liver_l`` litres of liver (incl. lesions), ``lesion_percent`` of it lesion; inside the
    first and last slice unless ``touch_ends``."""
    labels = np.zeros(SHAPE, np.uint8)
    n = round(liver_l * 100_000)
    body = labels if touch_ends else labels[1:-1]
    flat = body.reshape(-1)  # a view: the slab is contiguous
    flat[:n] = 1
    flat[:round(n * lesion_percent / 100.0)] = 2
    if touch_ends:  # the liver spans the whole scan range
        labels[0, 0, 0] = labels[-1, -1, -1] = 1
    return labels


@pytest.mark.parametrize("liver_l", [0.5, 2.0, 4.5])
def test_plausible_liver_volumes_do_not_warn(liver_l):
    assert plausibility_warnings(_labels(liver_l), SPACING, CascadeConfig()) == []


@pytest.mark.parametrize(("liver_l", "shown"), [(0.3, "0.30 L"), (5.0, "5.00 L"),
                                                     (0.49999, "0.49999 L"), (4.5001, "4.5001 L")])
def test_implausible_liver_volume_warns_once_with_the_volume_and_the_range(liver_l, shown):
    warnings = plausibility_warnings(_labels(liver_l), SPACING, CascadeConfig())
    assert len(warnings) == 1, warnings
    assert f"liver volume {shown} is outside the plausible 0.5-4.5 L" in warnings[0]
    assert "contrast CT of the abdomen" in warnings[0] and "field of view" not in warnings[0]
    assert "\n" not in warnings[0]


def test_small_liver_touching_the_first_or_last_slice_may_be_cut_by_the_field_of_view():
    (warning,) = plausibility_warnings(_labels(0.3, touch_ends=True), SPACING, CascadeConfig())
    assert "liver volume 0.30 L is outside" in warning and "field of view may cut it" in warning
    # a too-large liver is not explained by a cut
    (large,) = plausibility_warnings(_labels(5.0, touch_ends=True), SPACING, CascadeConfig())
    assert "field of view" not in large


def test_empty_liver_warns():
    (warning,) = plausibility_warnings(np.zeros(SHAPE, np.uint8), SPACING, CascadeConfig())
    assert "no liver was segmented (0 L" in warning and "0.5-4.5 L" in warning


@pytest.mark.parametrize(("percent", "warns"), [(60.0, True), (50.0, False), (50.5, True), (10.0, False)])
def test_lesion_burden_over_the_bound_warns(percent, warns):
    warnings = plausibility_warnings(_labels(2.0, percent), SPACING, CascadeConfig())
    assert len(warnings) == int(warns), warnings
    if warns:
        assert f"lesion burden {percent:.1f} % of the liver is over the plausible 50 %" in warnings[0]


def test_both_findings_give_two_lines():
    warnings = plausibility_warnings(_labels(5.0, 60.0), SPACING, CascadeConfig())
    assert len(warnings) == 2 and "liver volume" in warnings[0] and "lesion burden" in warnings[1]


def test_bounds_come_from_the_config():
    cascade = CascadeConfig.from_dict({"plausible_liver_l": [0.1, 1.5], "max_lesion_burden_percent": 70})
    assert cascade.plausible_liver_l == (0.1, 1.5) and cascade.max_lesion_burden_percent == 70.0
    assert plausibility_warnings(_labels(0.3, 60.0), SPACING, cascade) == []
    (warning,) = plausibility_warnings(_labels(2.0), SPACING, cascade)
    assert "outside the plausible 0.1-1.5 L" in warning
    assert CascadeConfig.from_dict({}).plausible_liver_l == (0.5, 4.5)  # optional in a catalogue


@pytest.mark.parametrize("bad", [{"plausible_liver_l": [4.5, 0.5]}, {"plausible_liver_l": [-1, 2]},
                                 {"max_lesion_burden_percent": 150}])
def test_bad_bounds_are_refused(bad):
    with pytest.raises(ModelError):
        CascadeConfig.from_dict(bad)
