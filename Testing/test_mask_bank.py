"""The liver-mask bank as DI2IN-AN's real samples: reading, cropping, and reaching the discriminator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from LiverSegLib.data.phantoms import make_phantom
from LiverSegLib.data.samples import shared_data_dir
from LiverSegLib.errors import InputError
from LiverSegLib.training.cases import prepare_case
from LiverSegLib.training.mask_bank import MaskBankSampler, bank_mask, load_mask_bank
from LiverSegLib.training.train_config import load_train_config
from LiverSegLib.training.trainer import Trainer
from LiverSegLib.types import Volume

TINY_DI2IN = ["stage.network.kwargs.features=[4,8,16]", "stage.network.kwargs.branch_levels=[2,1,0]",
              "sampler.crop=[16,32,32]", "sampler.batch=2", "adversarial.discriminator.kwargs.features=[4,8]",
              "adversarial.k_d=2", "adversarial.k_g=1", "adversarial.batch_d=3", "adversarial.batch_g=1"]


def test_bank_mask_resamples_to_the_stage_grid():
    stage = load_train_config("di2in_an").stage  # 3 mm isotropic
    arr = np.zeros((30, 60, 60), np.uint8)
    arr[6:24, 15:45, 15:45] = 1
    arr[10:12, 20:22, 20:22] = 2  # a lesion is liver too
    m = bank_mask(Volume(arr, (1.5, 1.5, 1.5), (0.0, 0.0, 0.0)), stage)
    assert m.shape == (15, 30, 30)
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
    assert abs(int(m.sum()) - 9 * 15 * 15) <= 0.15 * 9 * 15 * 15  # linear resampling moves edges by < 1 voxel


def test_sampler_crops_hold_liver_and_have_the_crop_size():
    masks = [np.zeros((20, 40, 40), np.uint8) for _ in range(2)]
    masks[0][5:15, 10:30, 10:30] = 1
    masks[1][2:8, 30:38, 30:38] = 1  # near the corner: crops are padded with background
    s = MaskBankSampler(masks, (8, 16, 16), seed=1)
    batch = s.sample(6)
    assert batch.shape == (6, 1, 8, 16, 16) and batch.dtype == torch.float32
    assert set(torch.unique(batch).tolist()) <= {0.0, 1.0}
    assert all(b.sum() > 0 for b in batch)  # centred near the liver, every crop holds some of it
    with pytest.raises(ValueError, match="empty"):
        MaskBankSampler([], (8, 16, 16))


def test_discriminator_sees_the_bank_not_the_labels(tmp_path):
    cfg = load_train_config("di2in_an", TINY_DI2IN)
    cases = [prepare_case("p0", *make_phantom((20, 48, 48), (3.0, 3.0, 3.0), seed=0), cfg.stage)]
    bank = [np.ones((20, 40, 40), np.uint8)]  # all-liver crops: unmistakable
    trainer = Trainer(cfg, cases, [], tmp_path, torch.device("cpu"), bar=False, real_masks=bank)
    seen, drawn = [], []
    forward = trainer.disc.forward
    trainer.disc.forward = lambda x, *a: (seen.append(x.detach().clone()), forward(x, *a))[1]
    sample = trainer.mask_bank.sample
    trainer.mask_bank.sample = lambda n: (drawn.append(sample(n)), drawn[-1])[1]
    trainer.adversarial_iteration()
    assert len(drawn) == 2  # k_D = 2 discriminator steps, each with bank crops as the real half
    real = seen[0][:3]  # the D pass is one call on [real; fake]
    assert torch.equal(real, drawn[0]) and real.sum() > 0
    assert trainer.metadata["mask_bank_size"] == 1


def test_load_mask_bank_errors(tmp_path):
    stage = load_train_config("di2in_an").stage
    with pytest.raises(InputError, match="does not exist"):
        load_mask_bank([tmp_path / "nope"], stage)
    with pytest.raises(InputError, match="no liver masks found"):
        load_mask_bank([tmp_path], stage)


@pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data absent: the LiTS mask bank lives there")
def test_real_lits_masks_and_exclusion():
    stage = load_train_config("di2in_an").stage
    root = shared_data_dir() / "lits_liver_masks"
    files = [root / "segmentation-0.nii.gz", root / "segmentation-1.nii.gz"]
    masks = load_mask_bank(files, stage)
    assert len(masks) == 2
    for m in masks:
        litres = m.sum() * 27e-6  # 3 mm voxels
        assert 0.5 < litres < 4.5
    assert len(load_mask_bank(files, stage, exclude=["lits-0"])) == 1
