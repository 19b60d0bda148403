"""Tests of the synthetic phantoms and of the real sample data fetched with pip.

Tests marked ``slow`` download about 40 MB once (``pip download`` of two pinned archives) into
``$LIVERSEG_TEST_CACHE`` when set, else into the default cache ``$LIVERSEG_HOME/samples`` (``~/.liverseg/samples``),
so later runs reuse it. The other tests need no network.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from LiverSegLib._paths import home_dir
from LiverSegLib.data import phantoms, samples
from LiverSegLib.data.phantoms import make_phantom, make_phantom_batch
from LiverSegLib.errors import InputError

# ----------------------------------------------------------------------------------------------- phantoms


def test_phantom_is_deterministic_and_seed_dependent() -> None:
    ct1, lab1 = make_phantom(seed=3)
    ct2, lab2 = make_phantom(seed=3)
    ct3, _ = make_phantom(seed=4)
    assert np.array_equal(ct1.array_zyx, ct2.array_zyx) and np.array_equal(lab1.array_zyx, lab2.array_zyx)
    assert ct1.metadata == ct2.metadata
    assert not np.array_equal(ct1.array_zyx, ct3.array_zyx)
    assert ct1.metadata["liver_hu"] != ct3.metadata["liver_hu"]


@pytest.mark.parametrize("seed", range(5))
def test_phantom_labels_and_intensities(seed: int) -> None:
    ct, lab = make_phantom(seed=seed)
    a, lb = ct.array_zyx, lab.array_zyx
    assert a.dtype == np.int16 and lb.dtype == np.uint8 and ct.same_grid(lab)
    assert set(np.unique(lb)) <= {0, 1, 2} and (lb == 1).sum() > 1000
    meta = ct.metadata
    assert 100 <= meta["liver_hu"] <= 130 and 10 <= meta["noise_sigma_hu"] <= 20
    # Liver interior (away from blurred edges and lesions) has the documented HU; noise averages out.
    core = ndimage.binary_erosion(lb == 1, iterations=2)
    assert abs(a[core].mean() - meta["liver_hu"]) < 3
    assert abs(a[core].std() - meta["noise_sigma_hu"]) < 4
    # Air corners: -1000 plus noise.
    corners = a[:, :4, :4]
    assert abs(corners.mean() + 1000) < 5 and abs(corners.std() - meta["noise_sigma_hu"]) < 4
    # Every lesion is hypodense by 40-80 HU or hyperdense by 30-60 HU.
    assert 1 <= len(meta["lesions"]) <= 4
    for les in meta["lesions"]:
        d = les["hu"] - meta["liver_hu"]
        assert -80 <= d <= -40 or 30 <= d <= 60, les
        assert 4 <= les["radius_mm"] <= 20
        assert lb[tuple(les["centre_ijk"][::-1])] == 2


@pytest.mark.parametrize("seed", range(5))
def test_phantom_lesions_inside_liver_on_patient_right(seed: int) -> None:
    ct, lab = make_phantom(seed=seed)
    lb = lab.array_zyx
    lesion = lb == 2
    assert lesion.any()
    # A lesion is surrounded by liver: its 6-neighbourhood never reaches the background.
    assert np.all(lb[ndimage.binary_dilation(lesion)] > 0)
    # Identity direction: i increases toward the patient's left, so the liver (patient's right) sits at low i,
    # and in LPS its centroid has a smaller x than the body's.
    liver_ijk = np.argwhere(lb > 0)[:, ::-1].mean(axis=0)
    body_ijk = np.argwhere(ct.array_zyx > -500)[:, ::-1].mean(axis=0)
    assert liver_ijk[0] < lb.shape[2] / 2
    assert ct.index_to_physical(liver_ijk)[0] < ct.index_to_physical(body_ijk)[0] - 10
    assert liver_ijk[2] > lb.shape[0] / 2  # upper part of the z range (k increases superior)


def test_phantom_fixed_lesion_hu_and_lesion_count() -> None:
    ct, lab = make_phantom(seed=1, n_lesions=(3, 3), lesion_hu=45.0)
    assert len(ct.metadata["lesions"]) == 3 and all(les["hu"] == 45.0 for les in ct.metadata["lesions"])
    core = ndimage.binary_erosion(lab.array_zyx == 2, iterations=2)
    if core.sum() > 50:
        assert abs(ct.array_zyx[core].mean() - 45.0) < 8
    ct0, lab0 = make_phantom(seed=1, n_lesions=(0, 0))
    assert not (lab0.array_zyx == 2).any() and ct0.metadata["lesions"] == []


def test_phantom_geometry_is_attached_not_applied() -> None:
    theta = np.deg2rad(20)
    oblique = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    shape, spacing = (40, 64, 80), (0.8, 1.1, 3.0)
    ct, lab = make_phantom(shape, spacing, seed=2, direction=oblique, origin_xyz=(10.0, -20.0, 30.0))
    ref_ct, ref_lab = make_phantom(shape, spacing, seed=2)
    assert ct.array_zyx.shape == shape and ct.spacing_xyz == spacing
    assert np.allclose(ct.direction, oblique) and ct.origin_xyz == (10.0, -20.0, 30.0) and ct.same_grid(lab)
    assert np.array_equal(ct.array_zyx, ref_ct.array_zyx) and np.array_equal(lab.array_zyx, ref_lab.array_zyx)
    # Default origin centres the grid on (0, 0, 0) whatever the direction.
    centred, _ = make_phantom(shape, spacing, seed=2, direction=oblique)
    assert np.allclose(centred.index_to_physical((np.array(shape[::-1]) - 1) / 2), 0)


def test_phantom_batch_and_bad_arguments() -> None:
    batch = make_phantom_batch(3, seed=7, shape_zyx=(24, 48, 48))
    again = make_phantom_batch(3, seed=7, shape_zyx=(24, 48, 48))
    assert len(batch) == 3 and all(ct.array_zyx.shape == (24, 48, 48) for ct, _ in batch)
    assert all(np.array_equal(a[1].array_zyx, b[1].array_zyx) for a, b in zip(batch, again, strict=True))
    assert len({ct.metadata["seed"] for ct, _ in batch}) == 3
    with pytest.raises(ValueError, match="at least 8"):
        make_phantom((4, 32, 32))
    with pytest.raises(ValueError, match="positive"):
        make_phantom(spacing_xyz=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="n_lesions"):
        make_phantom(n_lesions=(3, 1))
    assert phantoms.__all__ == ["make_phantom", "make_phantom_batch"]


# ------------------------------------------------------------------------------- fetching (no network)


def _fake_source(monkeypatch: pytest.MonkeyPatch, cache: Path, members: dict[str, bytes], kind: str = "zip") -> str:
    """Register a source named 'fake' whose archive is already in ``cache`` (the hand-placed path, no pip)."""
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    archive = f"fake-1.0.{'zip' if kind == 'zip' else 'tar.gz'}"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / archive).write_bytes(buf.getvalue())
    sha = hashlib.sha256(buf.getvalue()).hexdigest()
    src = {"requirement": "fake==1.0", "sdist": kind != "zip", "archive": archive, "sha256": sha, "licence": "x"}
    monkeypatch.setitem(samples.SOURCES, "fake", {**src, "strip": "pkg/", "members": ("data/", "README")})
    return archive


def test_fetch_extracts_only_wanted_members_and_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    members = {"pkg/data/a.txt": b"a", "pkg/data/sub/b.txt": b"b", "pkg/README": b"r", "pkg/other.py": b"x"}
    archive = _fake_source(monkeypatch, tmp_path, members)
    root = samples.fetch_source("fake", tmp_path)
    assert root == tmp_path / "fake"
    assert (root / "data/sub/b.txt").read_bytes() == b"b" and (root / "README").exists()
    assert not (root / "other.py").exists()
    assert (root / ".sha256").read_text().strip() == samples.SOURCES["fake"]["sha256"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]  # staging cleaned up
    (tmp_path / archive).unlink()  # a second call must not need the archive any more
    assert samples.fetch_source("fake", tmp_path) == root


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_fetch_refuses_path_traversal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    cache = tmp_path / "cache"
    _fake_source(monkeypatch, cache, {"pkg/README": b"r", "pkg/data/../../../evil.txt": b"x"}, kind)
    with pytest.raises(InputError, match="unsafe member"):
        samples.fetch_source("fake", cache)
    assert not (tmp_path / "evil.txt").exists() and not (cache / "fake").exists()


def test_fetch_refuses_wrong_sha256_and_deletes_the_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _fake_source(monkeypatch, tmp_path, {"pkg/README": b"r", "pkg/data/a": b"a"})
    actual = samples.SOURCES["fake"]["sha256"]
    monkeypatch.setitem(samples.SOURCES["fake"], "sha256", "0" * 64)
    with pytest.raises(InputError, match=f"expected {'0' * 64}, got {actual}"):
        samples.fetch_source("fake", tmp_path)
    assert not (tmp_path / archive).exists() and not (tmp_path / "fake").exists()


def test_fetch_reports_pip_failure_with_a_manual_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = {**samples.SOURCES["liver_ct_segmentation_package"], "requirement": "not a valid requirement!!"}
    monkeypatch.setitem(samples.SOURCES, "liver_ct_segmentation_package", bad)
    with pytest.raises(InputError, match=r"run `python -m pip download --no-deps .*` by hand") as err:
        samples.fetch_source("liver_ct_segmentation_package", tmp_path)
    assert "\n" not in str(err.value)


def test_catalogue() -> None:
    assert samples.CASES == ("ts_example_ct", "ts_example_ct_sm", "ts_example_dicom", "lits117", "ircadb1_19",
                             "dcmqi_3slice")
    assert samples.case_info("ircadb1_19")["licence"].startswith("CC BY-NC-ND 4.0")
    assert samples.case_info("lits117")["label_origin"] == "manual LiTS"
    assert samples.case_info("ts_example_dicom")["licence"] == "Apache-2.0"
    assert "ASSUMED" in samples.case_info("lits117")["description"]
    with pytest.raises(InputError, match="unknown sample case"):
        samples.case_info("nope")
    with pytest.raises(InputError, match="unknown sample source"):
        samples.fetch_source("nope")


# ------------------------------------------------------------------------------------ real data (network)


@pytest.fixture(scope="session")
def sample_cache() -> Path:
    """One cache for the whole session, reused across runs (see the module docstring)."""
    return Path(os.environ.get("LIVERSEG_TEST_CACHE") or home_dir() / "samples")


@pytest.mark.slow
@pytest.mark.parametrize("source", sorted(samples.SOURCES))
def test_real_sources_are_verified(sample_cache: Path, source: str) -> None:
    root = samples.fetch_source(source, sample_cache)
    assert (root / ".sha256").read_text().strip() == samples.SOURCES[source]["sha256"]
    assert any(root.rglob("LICENSE"))  # the licence travels with the data


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ts_example_ct", "ts_example_ct_sm", "ts_example_dicom", "lits117"])
def test_load_case_grids_and_orientation(sample_cache: Path, name: str) -> None:
    ct, lab = samples.load_case(name, sample_cache)
    a, lb = ct.array_zyx, lab.array_zyx
    assert ct.same_grid(lab) and a.dtype == np.int16 and lb.dtype == np.uint8
    assert set(np.unique(lb)) <= {0, 1, 2} and (lb > 0).sum() > 0
    assert ct.metadata["label_origin"] == samples.case_info(name)["label_origin"] and ct.metadata["licence"]
    # The liver is on the patient's right: smaller LPS x than the body, whatever the stored orientation.
    liver = ct.index_to_physical(np.argwhere(lb > 0)[:, ::-1].mean(axis=0))
    body = ct.index_to_physical(np.argwhere(a > -500)[:, ::-1].mean(axis=0))
    assert liver[0] < body[0] - 20
    # Liver intensities look like liver (a mislaid label would average fat, air or bone).
    assert 30 < a[lb == 1].mean() < 150


@pytest.mark.slow
def test_load_case_specific_facts(sample_cache: Path) -> None:
    ct, lab = samples.load_case("ts_example_ct", sample_cache)
    assert ct.array_zyx.shape == (112, 101, 122) and (lab.array_zyx == 1).sum() == 41692
    assert np.allclose(np.diag(ct.direction), (-1, -1, 1))  # stored RAS, kept as is (ITK reports it in LPS)

    ct, lab = samples.load_case("ts_example_dicom", sample_cache)
    assert ct.array_zyx.shape == (20, 512, 512) and np.allclose(ct.spacing_xyz, (0.9765625, 0.9765625, 2.0))
    assert np.allclose(ct.direction, np.eye(3)) and (lab.array_zyx == 1).sum() == 366708

    ct, lab = samples.load_case("lits117", sample_cache)
    lb = lab.array_zyx
    assert ct.metadata["spacing_assumed"] is True and ct.spacing_xyz == (1.5, 1.5, 1.5)
    assert (lb > 0).sum() == 615351 and (lb == 2).sum() == 130083
    assert np.argwhere(lb > 0)[:, 2].mean() < 64  # liver at low i (patient's right) after the flip


def test_dcmqi_3slice() -> None:
    shared = samples.shared_data_dir()
    if shared is None or not (shared / "dcmqi-ct3slice").is_dir():
        pytest.skip("../shared/data/dcmqi-ct3slice is absent (only present beside a development checkout)")
    ct, lab = samples.load_case("dcmqi_3slice")
    assert ct.same_grid(lab) and ct.array_zyx.shape == (3, 512, 512)
    assert (lab.array_zyx == 1).sum() == 107098 and ct.metadata["label_origin"] == "manual dcmqi"


def test_dcmqi_absent_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(samples, "shared_data_dir", lambda: None)
    with pytest.raises(InputError, match="dcmqi_3slice is not present"):
        samples.load_case("dcmqi_3slice")


def test_ircadb1_19_loads_liver_and_tumours_on_the_ct_grid() -> None:
    if samples.shared_data_dir() is None:
        pytest.skip("../shared/data is not present beside this checkout: ircadb1_19 is unavailable")
    ct, label = samples.load_case("ircadb1_19")
    assert ct.array_zyx.shape == label.array_zyx.shape == (124, 512, 512)
    assert ct.spacing_xyz == pytest.approx((0.703125, 0.703125, 4.0))
    counts = np.bincount(label.array_zyx.ravel(), minlength=3)
    assert counts[1] > 400_000 and counts[2] > 30_000 and len(counts) == 3  # liver, 50 tumours, nothing else
    assert 100 < float(ct.array_zyx[label.array_zyx == 1].mean()) < 180  # contrast-enhanced parenchyma (~137 HU)
