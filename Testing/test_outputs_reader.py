"""read_case_outputs: a results folder written by write_case_outputs reads back into the same SegmentationResult."""

from __future__ import annotations

import json

import numpy as np
import pytest

from LiverSegLib.config import default_labels
from LiverSegLib.data.phantoms import make_phantom
from LiverSegLib.errors import InputError
from LiverSegLib.outputs.reader import read_case_outputs
from LiverSegLib.outputs.writer import write_case_outputs
from LiverSegLib.types import LabelInfo, LesionRecord, SegmentationResult


@pytest.fixture
def written(tmp_path):
    oblique = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    ct, truth = make_phantom((12, 48, 48), (1.3, 1.7, 2.9), seed=4, direction=oblique, origin_xyz=(3.0, -9.5, 77.0))
    ct.metadata.update(format="nifti", path=str(tmp_path / "ct.nii.gz"))
    lesions = [LesionRecord(1, 40, 0.25641, 9.876, (1.234, -5.678, 90.12), 45.67, 0.93),
               LesionRecord(2, 3, 0.01923, 2.9, (-3.0, 4.0, 80.0), -12.34, 0.81)]
    result = SegmentationResult(truth, default_labels(), lesions, 123.4567, 0.27564, "m", "2",
                                timings_s={"coarse": 1.5}, warnings=["be careful"], details={"device": "cpu"})
    out = tmp_path / "case"
    write_case_outputs(result, ct, out)
    return result, out


def test_results_read_back_as_written(written):
    result, out = written
    back = read_case_outputs(out)
    assert back.labelmap.same_grid(result.labelmap)
    np.testing.assert_array_equal(back.labelmap.array_zyx, result.labelmap.array_zyx)
    assert back.labels == result.labels  # names, colours and terminology (from the standard table)
    assert [lesion.lesion_id for lesion in back.lesions] == [1, 2]
    first = back.lesions[0]
    assert first.voxels == 40 and first.volume_ml == pytest.approx(0.2564, abs=1e-4)
    assert first.centroid_lps == pytest.approx((1.23, -5.68, 90.12)) and first.max_probability == pytest.approx(0.93)
    assert back.liver_volume_ml == pytest.approx(123.457) and back.lesion_volume_ml == pytest.approx(0.276)
    assert (back.model_id, back.model_version) == ("m", "2")
    assert back.warnings == ["be careful"] and back.details["device"] == "cpu" and back.timings_s["coarse"] == 1.5


def test_labels_outside_the_standard_table_keep_their_name(written):
    _, out = written
    summary = json.loads((out / "summary.json").read_text())
    summary["labels"] = [{"value": 1, "name": "Organ"}, {"value": 2, "name": "Liver lesion", "color_rgb": [1, 0, 0],
                                                         "terminology": {"type": {"code": "x"}}}]
    (out / "summary.json").write_text(json.dumps(summary))
    organ, lesion = read_case_outputs(out).labels
    assert organ == LabelInfo(1, "Organ", (0.5, 0.5, 0.5), {})
    assert lesion.color_rgb == (1.0, 0.0, 0.0) and lesion.terminology == {"type": {"code": "x"}}


def test_incomplete_folders_are_refused(written, tmp_path):
    _, out = written
    with pytest.raises(InputError, match="no summary.json"):
        read_case_outputs(tmp_path / "nothing")
    (out / "segmentation.nii.gz").unlink()
    with pytest.raises(InputError, match="no segmentation file"):
        read_case_outputs(out)
