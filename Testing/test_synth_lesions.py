"""Synthetic lesions inserted into livers: placement, label/image consistency, intensity, reproducibility, MONAI."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose
from scipy import ndimage

from LiverSegLib._paths import home_dir
from LiverSegLib.data import samples
from LiverSegLib.data.phantoms import make_phantom
from LiverSegLib.training.synth_lesions import LesionSynthesisConfig, RandSynthLesiond, synthesize_lesions

NO_RIM = LesionSynthesisConfig(rim_probability=0.0)


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A lesion-free phantom liver: every lesion-labelled voxel after synthesis is a new one."""
    ct, lab = make_phantom((40, 64, 64), seed=1, n_lesions=(0, 0))
    return ct.array_zyx.astype(np.float32), lab.array_zyx, ct.spacing_xyz


def _run(phantom, config: LesionSynthesisConfig = NO_RIM, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    image, label, spacing = phantom
    return synthesize_lesions(image, label, spacing, config, np.random.default_rng(seed))


def _surroundings(new: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Original liver just around the new lesions (the reference they should contrast with)."""
    return ndimage.binary_dilation(new, iterations=4) & ~ndimage.binary_dilation(new, iterations=2) & (label == 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lesions_stay_inside_the_liver_and_match_the_image(phantom, seed: int) -> None:
    image, label, _ = phantom
    config = replace(NO_RIM, n_lesions=(2, 2))
    new_img, new_lab = _run(phantom, config, seed)
    new = (new_lab == 2) & (label != 2)
    assert new.sum() > 20  # at least one lesion was inserted
    assert np.all(label[new] == 1)  # new lesion voxels were liver
    assert np.array_equal(new_lab[label != 1], label[label != 1])  # the label changes only inside the liver
    assert set(np.unique(new_lab)) <= {0, 1, 2} and new_lab.dtype == label.dtype
    changed = np.abs(new_img - image) > 0.5
    assert not np.any(changed & (label == 0))  # nothing outside the liver moves
    # Changes outside the new label stay in a thin band at the lesion boundary (edge blur of 1.5 mm, 1.6 mm voxels).
    assert not np.any(changed & ~ndimage.binary_dilation(new, iterations=3))
    # Every new lesion voxel moved towards the (darker) lesion level: on average by a clear amount.
    assert (new_img[new] - image[new]).mean() < -10.0


def test_label_is_exactly_where_the_image_moved_at_least_half_way(phantom) -> None:
    # A flat 100 HU image without texture: each voxel moves by exactly soft_mask * shift, so the label must be the
    # voxels that moved more than half of the shift.
    _, label, spacing = phantom
    flat = np.full(label.shape, 100.0, dtype=np.float32)
    config = replace(NO_RIM, hu_shift=(-50.0, -50.0), texture_std_hu=0.0, n_lesions=(3, 3))
    new_img, new_lab = synthesize_lesions(flat, label, spacing, config, np.random.default_rng(4))
    change, new = new_img - flat, new_lab == 2
    assert new.sum() > 20 and change.min() < -49.0 and change.max() < 1e-3
    assert change[new].max() <= -25.0 + 1e-3  # labelled: moved at least half-way
    assert change[~new].min() >= -25.0 - 1e-3  # not labelled: moved at most half-way
    assert np.count_nonzero(change[~new] < -1.0) < new.sum()  # the soft margin is thin compared with the lesions
    # An enhancing rim: brighter than the liver just inside the margin, darker in the core.
    rim = replace(config, rim_probability=1.0, rim_hu=(60.0, 60.0))
    rim_img, rim_lab = synthesize_lesions(flat, label, spacing, rim, np.random.default_rng(4))
    assert rim_img[rim_lab == 2].max() > 120.0 and rim_img[rim_lab == 2].min() < 60.0


@pytest.mark.parametrize(("shift", "darker"), [((-60.0, -40.0), True), ((40.0, 60.0), False)])
def test_lesion_contrast_follows_the_shift(phantom, shift: tuple[float, float], darker: bool) -> None:
    image, label, _ = phantom
    new_img, new_lab = _run(phantom, replace(NO_RIM, hu_shift=shift), seed=3)
    new = (new_lab == 2) & (label != 2)
    contrast = new_img[new].mean() - image[_surroundings(new, label)].mean()
    assert (contrast < -20.0) if darker else (contrast > 20.0)


def test_same_seed_same_result_and_inputs_untouched(phantom) -> None:
    image, label, spacing = phantom
    image_before, label_before = image.copy(), label.copy()
    a_img, a_lab = _run(phantom, LesionSynthesisConfig(), seed=5)
    b_img, b_lab = _run(phantom, LesionSynthesisConfig(), seed=5)
    c_img, c_lab = _run(phantom, LesionSynthesisConfig(), seed=6)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_lab, c_lab)
    assert np.array_equal(image, image_before) and np.array_equal(label, label_before)
    assert a_img is not image and a_lab is not label


def test_existing_lesions_keep_their_label_and_int_input_gives_float() -> None:
    ct, lab = make_phantom((40, 64, 64), seed=2, n_lesions=(2, 2))
    label = lab.array_zyx
    assert (label == 2).any()
    new_img, new_lab = synthesize_lesions(ct.array_zyx, label, ct.spacing_xyz, NO_RIM, np.random.default_rng(0))
    assert np.all(new_lab[label == 2] == 2) and (new_lab == 2).sum() > (label == 2).sum()
    assert new_img.dtype == np.float32 and ct.array_zyx.dtype == np.int16


def test_no_liver_or_no_draw_gives_unchanged_copies(phantom) -> None:
    image, label, spacing = phantom
    empty = np.zeros_like(label)
    new_img, new_lab = synthesize_lesions(image, empty, spacing, NO_RIM, np.random.default_rng(0))
    assert np.array_equal(new_img, image) and np.array_equal(new_lab, empty) and new_lab is not empty
    tiny = empty.copy()
    tiny[20, 30:32, 30:32] = 1  # 4 voxels: no room for a lesion
    assert np.array_equal(synthesize_lesions(image, tiny, spacing, NO_RIM, np.random.default_rng(0))[1], tiny)
    never = replace(NO_RIM, probability=0.0)
    new_img, new_lab = _run(phantom, never)
    assert np.array_equal(new_img, image) and np.array_equal(new_lab, label)


def test_bad_config_and_arguments() -> None:
    with pytest.raises(ValueError, match="radius_mm"):
        LesionSynthesisConfig(radius_mm=(10.0, 5.0))
    with pytest.raises(ValueError, match="probability"):
        LesionSynthesisConfig(probability=1.5)
    with pytest.raises(ValueError, match="one shape"):
        synthesize_lesions(np.zeros((8, 8, 8)), np.zeros((8, 8, 9), np.uint8), (1, 1, 1))


def test_monai_transform_in_compose_is_reproducible(phantom) -> None:
    image, label, spacing = phantom

    def run(seed: int, with_key: bool) -> dict:
        transform = RandSynthLesiond(keys=("image", "label"), config=NO_RIM,
                                     spacing_xyz=None if with_key else spacing)
        pipeline = Compose([transform])
        pipeline.set_random_state(seed=seed)
        sample = {"image": torch.from_numpy(image[None].copy()), "label": torch.from_numpy(label[None].copy())}
        if with_key:
            sample["spacing"] = spacing
        return pipeline(sample)

    a, b, c = run(7, with_key=True), run(7, with_key=False), run(8, with_key=True)
    assert isinstance(a["image"], torch.Tensor) and a["image"].shape == (1, *image.shape)
    assert a["label"].dtype == torch.uint8 and a["image"].dtype == torch.float32
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])  # key or argument: same
    assert not torch.equal(a["label"], c["label"])
    new = (a["label"][0].numpy() == 2) & (label != 2)
    assert new.any() and np.all(label[new] == 1)
    assert np.array_equal(a["image"][0].numpy()[label == 0], image[label == 0])

    # Numpy without a channel axis, twice from one seeded transform: a sequence that repeats after re-seeding.
    transform = RandSynthLesiond(config=NO_RIM, spacing_xyz=spacing)
    transform.set_random_state(seed=3)
    first = [transform({"image": image, "label": label})["label"] for _ in range(2)]
    transform.set_random_state(seed=3)
    again = transform({"image": image, "label": label})
    assert isinstance(again["image"], np.ndarray) and again["image"].shape == image.shape
    assert np.array_equal(again["label"], first[0]) and not np.array_equal(first[0], first[1])
    with pytest.raises(ValueError, match="no spacing"):
        RandSynthLesiond()({"image": image, "label": label})


def _cached_case(name: str) -> Path | None:
    cache = Path(os.environ.get("LIVERSEG_TEST_CACHE") or home_dir() / "samples")
    source = samples.case_info(name)["source"]
    marker = cache / source / ".sha256"
    return cache if marker.is_file() and marker.read_text().strip() == samples.SOURCES[source]["sha256"] else None


def test_real_liver_gets_darker_lesions_inside_it() -> None:
    cache = _cached_case("ts_example_ct")
    if cache is None:
        pytest.skip("ts_example_ct is not cached (python -m LiverSegLib.data.samples fetches it)")
    ct, lab = samples.load_case("ts_example_ct", cache)
    image, label = ct.array_zyx, lab.array_zyx
    new_img, new_lab = synthesize_lesions(image, label, ct.spacing_xyz, replace(NO_RIM, n_lesions=(2, 2)),
                                          np.random.default_rng(0))
    new = (new_lab == 2) & (label != 2)
    assert new.sum() > 10 and np.all(label[new] == 1)
    assert not np.any((np.abs(new_img - image) > 0.5) & (label == 0))
    assert new_img[new].mean() < image[_surroundings(new, label)].mean() - 15.0


def test_hard_negative_organs_are_never_painted(phantom) -> None:
    # A training label marks the organs next to the liver as 3 (HARD_NEGATIVE_LABEL). They must stay untouched: a
    # lesion painted into the kidney and labelled 2 teaches the fine stage that the kidney is liver.
    from LiverSegLib.training.organs import HARD_NEGATIVE_LABEL

    image, label, spacing = phantom
    organ_label = label.copy()
    organ = ndimage.binary_dilation(label > 0, iterations=6) & (label == 0)  # a thick shell hugging the liver
    organ_label[organ] = HARD_NEGATIVE_LABEL
    config = replace(NO_RIM, n_lesions=(4, 4), radius_mm=(6.0, 10.0), edge_probability=1.0)
    for seed in range(4):
        new_img, new_lab = synthesize_lesions(image, organ_label, spacing, config, np.random.default_rng(seed))
        assert np.all(new_lab[organ] == HARD_NEGATIVE_LABEL)
        assert np.array_equal(new_img[organ], image[organ])
        assert np.count_nonzero((new_lab == 2) & (label == 1)) > 20  # the liver did get lesions


@pytest.mark.parametrize("edge, touches", [(0.0, False), (1.0, True)])
def test_subcapsular_lesions_reach_the_liver_surface(phantom, edge: float, touches: bool) -> None:
    image, label, spacing = phantom
    # no warp and a 4 mm margin: a deep lesion (axes up to 1.35 radii) then keeps clear of the surface
    config = replace(NO_RIM, n_lesions=(3, 3), radius_mm=(5.0, 8.0), edge_probability=edge, deform_strength=0.0,
                     margin_mm=4.0)
    surface = (label > 0) & ~ndimage.binary_erosion(label > 0)  # the liver's outer voxel layer
    hits = 0
    for seed in range(3):
        _, new_lab = synthesize_lesions(image, label, spacing, config, np.random.default_rng(seed))
        new = (new_lab == 2) & (label != 2)
        assert new.sum() > 20
        hits += int(np.count_nonzero(new & surface) > 0)
    assert hits == (3 if touches else 0)


def test_edge_probability_outside_0_1_is_refused() -> None:
    with pytest.raises(ValueError, match="edge_probability"):
        LesionSynthesisConfig(edge_probability=1.5)


def test_a_precomputed_depth_gives_the_same_lesions_and_a_wrong_one_is_refused(phantom):
    from LiverSegLib.training.synth_lesions import liver_depth

    image, label, spacing = phantom
    config = LesionSynthesisConfig(rim_probability=0.5, edge_probability=0.5)
    depth = liver_depth(label, spacing)
    box = ndimage.find_objects(((label == 1) | (label == 2)).astype(np.uint8))[0]
    assert depth.shape == tuple(s.stop - s.start for s in box) and depth.max() > 5.0 and depth.min() == 0.0
    for seed in (0, 3):
        a = synthesize_lesions(image, label, spacing, config, np.random.default_rng(seed))
        b = synthesize_lesions(image, label, spacing, config, np.random.default_rng(seed), depth=depth)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and (a[1] == 2).any()
    with pytest.raises(ValueError, match="does not fit this label's liver box"):
        synthesize_lesions(image, label, spacing, config, np.random.default_rng(0), depth=depth[1:])
    assert liver_depth(np.zeros_like(label), spacing) is None
