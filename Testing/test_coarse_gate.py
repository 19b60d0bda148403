"""The coarse gate: the fine stage's liver is kept only near the coarse liver (CascadeConfig.coarse_gate_mm)."""

from __future__ import annotations

import numpy as np
import pytest

from LiverSegLib.config import CascadeConfig
from LiverSegLib.errors import ModelError
from LiverSegLib.pipeline.box import Box, coarse_gate


def _coarse() -> np.ndarray:
    """Coarse probabilities on a 2 mm grid: a liver block with a hole (a hypodense tumour) and a separate blob."""
    fg = np.zeros((20, 40, 40), np.float32)
    fg[5:15, 5:25, 5:25] = 0.9
    fg[9:11, 14:16, 14:16] = 0.1  # a tumour the coarse stage left out: inside the gate (holes are filled)
    fg[8:10, 32:36, 32:36] = 0.9  # a smaller separate blob (spleen tip): not the largest component
    return fg


def test_gate_covers_liver_hole_and_margin_but_not_the_other_blob():
    cascade = CascadeConfig(coarse_gate_mm=4.0)
    native_shape = (40, 80, 80)  # native 1 mm grid, coarse 2 mm: scale 2
    box = Box((0, 0, 0), native_shape)
    gate = coarse_gate(_coarse(), native_shape, box, cascade, (1.0, 1.0, 1.0))
    assert gate.shape == native_shape and gate.dtype == bool
    assert gate[20, 29, 29]  # the filled tumour hole
    assert gate[20, 10 + 1, 30] and gate[20, 10 - 3, 30]  # liver edge (native y 10) and 3 mm outside it
    assert not gate[20, 10 - 8, 30]  # 8 mm outside: beyond the 4 mm gate
    assert not gate[18, 68, 68]  # the separate blob
    wider = coarse_gate(_coarse(), native_shape, box, CascadeConfig(coarse_gate_mm=10.0), (1.0, 1.0, 1.0))
    assert wider.sum() > gate.sum() and np.all(wider[gate])


def test_gate_in_a_box_is_the_box_part_of_the_whole_gate():
    cascade = CascadeConfig(coarse_gate_mm=4.0)
    native_shape = (40, 80, 80)
    whole = coarse_gate(_coarse(), native_shape, Box((0, 0, 0), native_shape), cascade, (1.0, 1.0, 1.0))
    box = Box((6, 4, 4), (34, 56, 56))
    part = coarse_gate(_coarse(), native_shape, box, cascade, (1.0, 1.0, 1.0))
    assert np.array_equal(part, whole[box.slices])


def test_empty_coarse_liver_gates_nothing_out():
    gate = coarse_gate(np.zeros((10, 20, 20), np.float32), (10, 20, 20), Box((0, 0, 0), (10, 20, 20)),
                       CascadeConfig(coarse_gate_mm=5.0), (2.0, 2.0, 2.5))
    assert gate.all()


def test_gate_config_round_trip_and_errors():
    c = CascadeConfig.from_dict({"coarse_gate_mm": 5})
    assert c.coarse_gate_mm == 5.0 and CascadeConfig.from_dict(c.to_dict()) == c
    assert CascadeConfig.from_dict({}).coarse_gate_mm is None  # Han's cascade as published
    with pytest.raises(ModelError, match="coarse_gate_mm"):
        CascadeConfig(coarse_gate_mm=-1.0)
