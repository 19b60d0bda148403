"""The trainer in one process: recipes, DI2IN-AN's Algorithm 1, resuming, samplers with synthetic lesions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from LiverSegLib.config import StageConfig
from LiverSegLib.data.phantoms import make_phantom
from LiverSegLib.errors import InputError
from LiverSegLib.networks import build_network
from LiverSegLib.pipeline.stage import histogram_equalize
from LiverSegLib.training.cases import prepare_cached, prepare_case
from LiverSegLib.training.samplers import CaseStream, SliceSampler, VolumeSampler
from LiverSegLib.training.train_config import apply_overrides, config_names, load_train_config
from LiverSegLib.training.trainer import Trainer

TINY_DI2IN = ["stage.network.kwargs.features=[4,8,16]", "stage.network.kwargs.branch_levels=[2,1,0]",
              "sampler.crop=[16,32,32]", "sampler.batch=2", "adversarial.discriminator.kwargs.features=[4,8]",
              "adversarial.k_d=3", "adversarial.k_g=2", "adversarial.batch_d=3", "adversarial.batch_g=1"]
TINY_HAN = ["stage.network.kwargs.features=[4,8,16]", "sampler.crop=32", "sampler.batch=4",
            "optimizer.lr=0.05", "validate_every=3", "synthetic_lesions=null"]


def _cases(stage: StageConfig, n: int = 2, spacing=(3.0, 3.0, 3.0), n_lesions=(1, 3)):
    return [prepare_case(f"p{i}", *make_phantom((20, 48, 48), spacing, seed=i, n_lesions=n_lesions), stage)
            for i in range(n)]


def test_every_shipped_recipe_loads_and_builds():
    assert set(config_names()) >= {"cascade_coarse", "cascade_fine", "di2in", "di2in_an", "mixed_unet"}
    for name in config_names():
        cfg = load_train_config(name)
        net = build_network(cfg.stage.network.name, cfg.stage.network.kwargs)
        assert sum(p.numel() for p in net.parameters()) > 1e5
        if cfg.adversarial:
            d = cfg.adversarial["discriminator"]
            build_network(d["name"], d["kwargs"])
    an = load_train_config("di2in_an").adversarial
    assert (an["k_d"], an["k_g"], an["batch_d"], an["batch_g"], an["lambda"]) == (10, 1, 8, 4, 0.01)
    mixed = load_train_config("mixed_unet").stage
    assert mixed.hu_window == (-100.0, 300.0) and mixed.normalization == "histeq"


@pytest.mark.parametrize(("args", "message"), [
    (("no_such_recipe",), "unknown training config"),
    (("cascade_fine", ["stage.classes=[0,2]"]), "stage.classes"),
    (("cascade_fine", ["sampler.kind=patches"]), "sampler.kind"),
    (("cascade_fine", ["stage.network.name=Nope"]), "unknown network"),
    (("di2in_an", ["adversarial.k_d"]), "key.path=value"),
])
def test_recipe_errors_are_one_line(args, message):
    with pytest.raises(InputError, match=message) as info:
        load_train_config(*args)
    assert "\n" not in str(info.value)


def test_overrides_parse_json_and_do_not_touch_the_original():
    raw = {"a": {"b": 1}, "c": None}
    out = apply_overrides(raw, ["a.b=[1,2]", "c.d=x", "e=null"])
    assert out == {"a": {"b": [1, 2]}, "c": {"d": "x"}, "e": None} and raw == {"a": {"b": 1}, "c": None}


def test_di2in_an_iteration_respects_k_d_and_k_g_and_changes_both_networks(tmp_path):
    cfg = load_train_config("di2in_an", TINY_DI2IN)
    trainer = Trainer(cfg, _cases(cfg.stage), [], tmp_path, torch.device("cpu"), bar=False)
    sizes = []
    sample = trainer.sampler.sample
    trainer.sampler.sample = lambda b=None: (sizes.append(b), sample(b))[1]
    g0 = [p.detach().clone() for p in trainer.net.parameters()]
    d0 = [p.detach().clone() for p in trainer.disc.parameters()]
    d_after_d_steps = []
    step = trainer.opt.step
    trainer.opt.step = lambda *a, **k: (d_after_d_steps.append([p.detach().clone() for p in trainer.disc.parameters()]),
                                        step(*a, **k))[1]
    losses = trainer.adversarial_iteration()
    assert sizes == [3, 3, 3, 1, 1]  # k_D = 3 minibatches of 3, then k_G = 2 minibatches of 1
    assert trainer.counts == {"g_steps": 2, "d_steps": 3}
    assert any(not torch.equal(a, b) for a, b in zip(g0, trainer.net.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(d0, trainer.disc.parameters(), strict=True))
    # the generator steps leave the discriminator alone
    assert all(torch.equal(a, b) for a, b in zip(d_after_d_steps[0], trainer.disc.parameters(), strict=True))
    assert set(losses) == {"loss", "loss_d", "loss_adv"} and all(np.isfinite(v) for v in losses.values())


def test_supervised_training_lowers_the_loss_and_keeps_the_best_model(tmp_path):
    cfg = load_train_config("cascade_fine", TINY_HAN + ["steps=30", "validate_every=10"])
    cases = _cases(cfg.stage, 3, spacing=(2.0, 2.0, 3.0))
    summary = Trainer(cfg, cases[:2], cases[2:], tmp_path, torch.device("cpu"), bar=False).run()
    rows = [r for r in _csv(tmp_path / "log.csv") if r["loss"]]
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert len([r for r in _csv(tmp_path / "log.csv") if r["val_dice_liver"]]) == 3
    assert summary["best"]["step"] in (10, 20, 30) and (tmp_path / "model.pt").is_file()
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    meta = torch.load(tmp_path / "model.pt", weights_only=True)["metadata"]
    assert meta["best"]["step"] == summary["best"]["step"]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    cfg = load_train_config("cascade_fine", TINY_HAN + ["steps=6", "sampler.scale_range=[0.8,1.25]",
                                                       "sampler.rotate_deg=10", "sampler.intensity_jitter=[0.1,0.1]"])
    cases = _cases(cfg.stage, 2)
    full = Trainer(cfg, cases, [], tmp_path / "a", torch.device("cpu"), bar=False)
    full.run()
    Trainer(cfg, cases, [], tmp_path / "b", torch.device("cpu"), max_steps=3, bar=False).run()  # "interrupted"
    resumed = Trainer(cfg, cases, [], tmp_path / "b", torch.device("cpu"), resume=True, bar=False)
    assert resumed.position == (0, 3)
    resumed.run()
    for (k, a), b in zip(full.net.state_dict().items(), resumed.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert len(_csv(tmp_path / "b" / "log.csv")) == 6


def test_resume_refuses_another_network(tmp_path):
    cfg = load_train_config("cascade_fine", TINY_HAN + ["steps=3"])
    cases = _cases(cfg.stage, 1)
    Trainer(cfg, cases, [], tmp_path, torch.device("cpu"), bar=False).run()
    other = load_train_config("cascade_fine", TINY_HAN + ["steps=3", "stage.network.kwargs.features=[4,8]"])
    with pytest.raises(InputError, match="different network"):
        Trainer(other, cases, [], tmp_path, torch.device("cpu"), resume=True, bar=False)


def test_synthetic_lesions_reach_the_samples_and_stay_in_the_liver():
    cfg = load_train_config("cascade_fine", TINY_HAN)
    cases = _cases(cfg.stage, 2, spacing=(1.5, 1.5, 2.0), n_lesions=(0, 0))
    assert all(not (c.label == 2).any() for c in cases)
    synth = {"apply_probability": 1.0, "reuse": 4, "radius_mm": [4.0, 8.0], "n_lesions": [2, 3]}
    sampler = SliceSampler(cases, cfg.stage, {**cfg.section("sampler"), "foreground_prob": 1.0, "crop": 48}, synth)
    x, y = sampler.sample(24)
    assert x.shape == (24, 5, 48, 48) and (y == 2).any()
    plain = SliceSampler(cases, cfg.stage, {**cfg.section("sampler"), "foreground_prob": 1.0, "crop": 48})
    assert not (plain.sample(24)[1] == 2).any()
    # every synthetic lesion voxel lies inside the original liver of its case
    for i, (box, _, label, _) in sampler.synth._store.items():
        assert (np.asarray(cases[i].label[box])[label == 2] == 1).all()


def test_a_liver_only_stage_gets_synthetic_lesions_labelled_liver():
    # The coarse stage (background, liver) learns that a tumour is liver: its synthetic lesions change the image
    # but are labelled 1, never 2 (a class it does not have).
    cfg = load_train_config("cascade_coarse", TINY_HAN)
    assert not cfg.stage.has_lesion
    cases = _cases(cfg.stage, 2, spacing=(2.0, 2.0, 2.5), n_lesions=(0, 0))
    synth = {"apply_probability": 1.0, "reuse": 4, "radius_mm": [4.0, 8.0], "n_lesions": [2, 3]}
    sampler = SliceSampler(cases, cfg.stage, {**cfg.section("sampler"), "foreground_prob": 1.0, "crop": 32}, synth)
    x, y = sampler.sample(16)
    assert set(np.unique(y)) <= {0, 1}
    painted = 0
    for i, (box, image, label, _) in sampler.synth._store.items():
        moved = np.abs(image - np.asarray(cases[i].image[box], np.float32)) > 5.0
        painted += int(moved.sum())
        assert (label[moved] == 1).all() and not (label == 2).any()
    assert painted > 0


def test_monai_augmentation_zooms_rotates_flips_and_jitters_consistently():
    from LiverSegLib.training.augment import Augmenter

    image = np.full((5, 64, 64), -1.0, np.float32)
    image[:, 16:48, 8:30] = 0.5  # an off-centre block
    label = np.zeros((1, 64, 64), np.uint8)
    label[0, 16:48, 8:30] = 1
    aug = Augmenter({"scale_range": [0.7, 1.3], "rotate_deg": 15, "flip": True, "intensity_jitter": [0.1, 0.1]}, 2, 0)
    flipped = 0
    for _ in range(20):
        img, lab = aug(image.copy(), label.copy())
        assert img.shape == image.shape and lab.shape == label.shape and set(np.unique(lab)) <= {0, 1}
        assert img[:, 0, 0].std() < 1e-6  # the corner stays air (border padding), jittered by one gain/offset
        inside = lab[0] == 1
        assert inside.sum() > 200 and img[2][inside].mean() > img[2][~inside].mean() + 0.5  # label follows image
        flipped += int(lab[0, :, 40:].sum() > lab[0, :, :24].sum())  # block moved to the other side
    assert 3 <= flipped <= 17
    off = Augmenter({"flip": False}, 2, 0)
    assert off(image, label)[0] is image


def test_volume_sampler_crops_and_pads():
    cfg = load_train_config("di2in", ["sampler.crop=[32,64,64]"])
    cases = _cases(cfg.stage, 1)
    x, y = VolumeSampler(cases, cfg.stage, cfg.section("sampler")).sample(2)
    assert x.shape == (2, 1, 32, 64, 64) and y.shape == (2, 32, 64, 64)
    assert float(x.min()) >= -1.0 - 1e-6 and float(x.max()) <= 1.0 + 1e-6
    assert (x == -1.0).any()  # the 20-slice case is padded with air to 32 slices


def test_case_stream_splits_each_epoch_between_ranks():
    a = CaseStream([1, 1, 1, 1], seed=3, rank=0, world_size=2)
    b = CaseStream([1, 1, 1, 1], seed=3, rank=1, world_size=2)
    single = CaseStream([1, 1, 1, 1], seed=3)
    first = [single.next() for _ in range(4)]
    assert sorted([a.next(), a.next(), b.next(), b.next()]) == sorted(first)


def test_prepared_cases_are_cached_and_memory_mapped(tmp_path):
    cfg = load_train_config("cascade_fine")
    ct, label = make_phantom((12, 40, 40), (2.0, 2.0, 3.0), seed=1)
    src = tmp_path / "src.txt"
    src.write_text("x")
    calls = []
    load = lambda: (calls.append(1), (ct, label))[1]  # noqa: E731
    a = prepare_cached("c", load, [src], cfg.stage, tmp_path / "cache")
    b = prepare_cached("c", load, [src], cfg.stage, tmp_path / "cache")
    assert len(calls) == 1 and isinstance(b.image, np.memmap)
    assert np.array_equal(np.asarray(a.label), np.asarray(b.label)) and b.spacing_xyz == a.spacing_xyz


def test_histogram_equalisation_spreads_a_narrow_histogram():
    rng = np.random.default_rng(0)
    x = (rng.normal(0.1, 0.02, (2, 64, 64))).astype(np.float32)  # a low-contrast slice pair
    x[1] = 0.3
    y = histogram_equalize(x.copy())
    assert y[0].min() == -1.0 and y[0].max() == 1.0
    assert abs(float(np.median(y[0]))) < 0.15  # uniform-ish: the median lands mid-range (10 occupied bins)
    order = np.argsort(x[0].ravel())
    assert (np.diff(y[0].ravel()[order]) >= 0).all()  # monotonic mapping
    assert (y[1] == -1.0).all()  # a constant slice


def _csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_config_json_round_trip():
    cfg = load_train_config("di2in_an")
    assert json.loads(cfg.to_json()) == cfg.raw
