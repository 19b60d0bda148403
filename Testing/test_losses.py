"""Losses of LiverSegLib.training.losses against values worked out by hand (arithmetic in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - torch convention
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from LiverSegLib.training.losses import (
    LOSS_NAMES,
    CompositeLoss,
    DeepSupervisionLoss,
    FocalTverskyLoss,
    WeightedCrossEntropy,
    adversarial_d_loss,
    adversarial_g_loss,
    build_loss,
    log_class_weights,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


def voxels(*rows: list[float]) -> torch.Tensor:
    """Logits of a 1-D "image": one row of class logits per voxel -> (1, C, V)."""
    return torch.tensor(rows, dtype=torch.float32).T[None]


# Three classes, two voxels:
#   voxel a: logits (0, 0, ln 2) -> softmax (1/4, 1/4, 1/2), label 2 (lesion, weight 2.2): -ln p = ln 2
#   voxel b: logits (0, ln 3, 0) -> softmax (1/5, 3/5, 1/5), label 1 (liver, weight 1.2): -ln p = ln(5/3)
LOGITS3, TARGET3 = voxels([0, 0, LN2], [0, LN3, 0]), torch.tensor([[2, 1]])
# Two classes, two voxels, both logits (0, ln 3) -> softmax (1/4, 3/4):
#   voxel a: label 1 (weight 1.2): -ln(3/4) = ln(4/3); voxel b: label 0 (weight 0.2): -ln(1/4) = ln 4
LOGITS2, TARGET2 = voxels([0, LN3], [0, LN3]), torch.tensor([[1, 0]])


def confident(target: torch.Tensor, num_classes: int, scale: float = 30.0) -> torch.Tensor:
    """Logits that put (almost) all probability on the target class."""
    return scale * F.one_hot(target, num_classes).movedim(-1, 1).float()


class TestWeightedCrossEntropy:
    def test_three_classes_divides_by_weight_sum(self):
        # (2.2 ln 2 + 1.2 ln(5/3)) / (2.2 + 1.2) = (1.524924 + 0.612990) / 3.4 = 0.628799
        assert WeightedCrossEntropy()(LOGITS3, TARGET3).item() == pytest.approx(0.628799, abs=1e-5)

    def test_voxel_normalisation(self):
        # (2.2 ln 2 + 1.2 ln(5/3)) / 2 voxels = 2.137914 / 2 = 1.068957
        loss = WeightedCrossEntropy(normalization="voxels")(LOGITS3, TARGET3)
        assert loss.item() == pytest.approx(1.068957, abs=1e-5)

    def test_weights_truncated_for_two_classes(self):
        # weights (0.2, 1.2): (1.2 ln(4/3) + 0.2 ln 4) / (1.2 + 0.2) = (0.345218 + 0.277259) / 1.4 = 0.444626
        assert WeightedCrossEntropy()(LOGITS2, TARGET2).item() == pytest.approx(0.444626, abs=1e-5)
        assert WeightedCrossEntropy(num_classes=2).class_weights.tolist() == pytest.approx([0.2, 1.2])

    def test_unweighted_and_channel_target(self):
        # (ln(4/3) + ln 4) / 2 = (0.287682 + 1.386294) / 2 = 0.836988; (N, 1, *spatial) targets are accepted
        assert WeightedCrossEntropy(None)(LOGITS2, TARGET2[:, None]).item() == pytest.approx(0.836988, abs=1e-5)

    def test_too_few_weights_and_bad_shapes(self):
        with pytest.raises(ValueError, match="class weights"):
            WeightedCrossEntropy((1.0, 2.0))(LOGITS3, TARGET3)
        with pytest.raises(ValueError, match="class weights"):
            WeightedCrossEntropy((1.0, 2.0), num_classes=3)
        with pytest.raises(ValueError, match="does not match"):
            WeightedCrossEntropy()(LOGITS3, torch.tensor([[2, 1, 0]]))
        with pytest.raises(ValueError):
            WeightedCrossEntropy(normalization="sum")


class TestLogClassWeights:
    def test_known_counts(self):
        # 100 voxels: 90 background, 9 liver, 1 lesion
        # -> [max(1, ln(100/90) = 0.105) = 1, ln(100/9) = 2.407946, ln(100) = 4.605170]
        label = np.array([0] * 90 + [1] * 9 + [2]).reshape(10, 10)
        weights = log_class_weights(label, 3)
        assert weights.dtype == torch.float32
        assert weights.tolist() == pytest.approx([1.0, 2.407946, 4.605170], abs=1e-5)
        assert log_class_weights(torch.from_numpy(label), 3).tolist() == pytest.approx(weights.tolist())

    def test_absent_class_gets_single_voxel_weight(self):
        # 90 background, 10 liver, no lesion -> [1, ln(100/10) = 2.302585, absent: ln(100/1) = 4.605170]
        label = torch.tensor([0] * 90 + [1] * 10)
        assert log_class_weights(label, 3).tolist() == pytest.approx([1.0, 2.302585, 4.605170], abs=1e-5)
        # a label of one voxel: ln(1/1) = 0 and ln(1) = 0 -> every weight is the floor 1
        assert log_class_weights(torch.tensor([2]), 3).tolist() == [1.0, 1.0, 1.0]

    def test_errors(self):
        with pytest.raises(ValueError, match="empty"):
            log_class_weights(np.zeros(0, dtype=int), 3)
        with pytest.raises(ValueError, match="label values"):
            log_class_weights(np.array([0, 3]), 3)


class L1ToTarget(nn.Module):
    """Mock inner loss: mean |output - target|."""

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (output - target).abs().mean()


class TestDeepSupervision:
    target = torch.zeros(2, 4)
    final, branch1, branch2 = torch.full((2, 4), 2.0), torch.full((2, 4), 1.0), torch.full((2, 4), 3.0)

    def test_weighted_sum(self):
        # l_final = 2, l_1 = 1, l_2 = 3: 0.5 * 1 + 2.0 * 3 + 1.5 * 2 = 0.5 + 6 + 3 = 9.5
        criterion = DeepSupervisionLoss(L1ToTarget(), branch_weights=(0.5, 2.0), final_weight=1.5)
        assert criterion((self.final, self.branch1, self.branch2), self.target).item() == pytest.approx(9.5)

    def test_default_weights_are_one(self):
        # 2 + 1 + 3 = 6, for however many branches
        criterion = DeepSupervisionLoss(L1ToTarget())
        assert criterion([self.final, self.branch1, self.branch2], self.target).item() == pytest.approx(6.0)
        assert criterion([self.final], self.target).item() == pytest.approx(2.0)

    def test_single_tensor_is_the_unweighted_final_loss(self):
        criterion = DeepSupervisionLoss(L1ToTarget(), branch_weights=(0.5, 2.0), final_weight=1.5)
        assert criterion(self.final, self.target).item() == pytest.approx(2.0)

    def test_wrong_count(self):
        criterion = DeepSupervisionLoss(L1ToTarget(), branch_weights=(1.0, 1.0, 1.0))
        with pytest.raises(ValueError, match="2 branch outputs but 3 branch weights"):
            criterion((self.final, self.branch1, self.branch2), self.target)
        with pytest.raises(ValueError):
            criterion((), self.target)


class TestFocalTversky:
    def test_hand_value(self):
        # voxels a, b, c with labels 1, 1, 0; p1 = 3/4, 1/4, 3/4 (logits (0, ln 3), (ln 3, 0), (0, ln 3)).
        # class 1: TP = 3/4 + 1/4 = 1, FN = 1/4 + 3/4 = 1, FP = 3/4
        #          TI = 1 / (1 + 0.7 * 1 + 0.3 * 0.75) = 1 / 1.925, 1 - TI = 0.925 / 1.925 = 0.480519
        # class 0: p0 = 1/4, 3/4, 1/4, g0 = 0, 0, 1: TP = 1/4, FN = 3/4, FP = 1/4 + 3/4 = 1
        #          TI = 0.25 / (0.25 + 0.7 * 0.75 + 0.3 * 1) = 0.25 / 1.075, 1 - TI = 0.825 / 1.075 = 0.767442
        # loss = (0.480519 ** 0.75 + 0.767442 ** 0.75) / 2 = (0.577142 + 0.819944) / 2 = 0.698543
        logits, target = voxels([0, LN3], [LN3, 0], [0, LN3]), torch.tensor([[1, 1, 0]])
        assert FocalTverskyLoss(smooth=0.0)(logits, target).item() == pytest.approx(0.698543, abs=1e-5)
        # focal_gamma = 1 is the Tversky loss: (0.480519 + 0.767442) / 2 = 0.623981
        plain = FocalTverskyLoss(focal_gamma=1.0, smooth=0.0)(logits, target)
        assert plain.item() == pytest.approx(0.623981, abs=1e-5)
        # without background only class 1 counts: 0.480519 ** 0.75 = 0.577142
        fg = FocalTverskyLoss(include_background=False, smooth=0.0)(logits, target)
        assert fg.item() == pytest.approx(0.577142, abs=1e-5)

    def test_perfect_prediction_and_gradient(self):
        target = torch.tensor([[[0, 1], [2, 1]]])
        assert FocalTverskyLoss()(confident(target, 3), target).item() < 1e-6
        logits = confident(target, 3, scale=2.0).requires_grad_()
        FocalTverskyLoss()(logits, target).backward()
        assert torch.isfinite(logits.grad).all()


class TestCompositeLoss:
    def test_single_components_hand_values(self):
        # LOGITS2/TARGET2: probabilities (p0, p1) = (1/4, 3/4) at both voxels, labels 1 and 0.
        # wCE with log weights: 1 voxel of each class in 2 -> max(1, ln 2 = 0.693) = 1 for both -> plain CE 0.836988
        # Dice (batch pooled), class 1: 2 * 3/4 / (3/2 + 1) = 0.6; class 0: 2 * 1/4 / (1/2 + 1) = 1/3
        #   -> loss 1 - (0.6 + 1/3) / 2 = 0.533333
        # Huber (delta 1 -> 0.5 r^2): residuals 1/4, 1/4 (voxel a), 3/4, 3/4 (voxel b)
        #   -> (2 * 0.03125 + 2 * 0.28125) / 4 = 0.15625
        # focal Tversky, class 1: TP 3/4, FN 1/4, FP 3/4 -> TI = 0.75 / (0.75 + 0.175 + 0.225) = 0.652174
        #                class 0: TP 1/4, FN 3/4, FP 1/4 -> TI = 0.25 / (0.25 + 0.525 + 0.075) = 0.294118
        #   -> (0.347826 ** 0.75 + 0.705882 ** 0.75) / 2 = (0.452920 + 0.770103) / 2 = 0.611512
        expected = {"alpha": 0.836988, "beta": 0.533333, "gamma": 0.15625, "delta": 0.611512}
        for name, value in expected.items():
            coefficients = {"alpha": 0.0, "beta": 0.0, "gamma": 0.0, "delta": 0.0, name: 2.0}
            loss = CompositeLoss(2, **coefficients)(LOGITS2, TARGET2)
            assert loss.item() == pytest.approx(2.0 * value, abs=1e-4), name

    def test_components_match_the_separate_losses(self):
        torch.manual_seed(0)
        logits, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
        probs, onehot = logits.softmax(1), F.one_hot(target, 3).movedim(-1, 1).float()
        parts = {"alpha": WeightedCrossEntropy((0.2, 1.2, 2.2))(logits, target),
                 "beta": DiceLoss(batch=True)(probs, onehot),
                 "gamma": nn.HuberLoss()(probs, onehot),
                 "delta": FocalTverskyLoss()(logits, target)}
        for name, value in parts.items():
            coefficients = {"alpha": 0.0, "beta": 0.0, "gamma": 0.0, "delta": 0.0, name: 1.0}
            loss = CompositeLoss(3, class_weights=(0.2, 1.2, 2.2), **coefficients)(logits, target)
            assert loss.item() == pytest.approx(value.item(), rel=1e-5), name
        total = CompositeLoss(3, 1.0, 0.5, 0.25, 2.0, class_weights=(0.2, 1.2, 2.2))(logits, target)
        expected = parts["alpha"] + 0.5 * parts["beta"] + 0.25 * parts["gamma"] + 2.0 * parts["delta"]
        assert total.item() == pytest.approx(expected.item(), rel=1e-5)

    @pytest.mark.parametrize("shape", [(2, 4, 4), (1, 2, 3, 4)])
    def test_perfect_prediction_2d_and_3d(self, shape):
        target = torch.arange(int(np.prod(shape))).reshape(shape) % 3
        loss = CompositeLoss(3, 1.0, 1.0, 1.0, 1.0)(confident(target, 3), target)
        assert 0.0 <= loss.item() < 1e-4
        logits = torch.zeros((shape[0], 3, *shape[1:]), requires_grad=True)
        CompositeLoss(3, 1.0, 1.0, 1.0, 1.0)(logits, target).backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0

    def test_channel_mismatch(self):
        with pytest.raises(ValueError, match="channels"):
            CompositeLoss(3)(LOGITS2, TARGET2)


class TestAdversarial:
    def test_d_loss(self):
        # D = sigmoid(0) = 1/2 for both: -ln(1/2) - ln(1 - 1/2) = 2 ln 2 = 1.386294
        assert adversarial_d_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(1.386294, abs=1e-6)
        # real logit ln 3 (D = 3/4), fake logit -ln 3 (D = 1/4): -ln(3/4) - ln(3/4) = 2 ln(4/3) = 0.575364
        d_loss = adversarial_d_loss(torch.full((2, 1), LN3), torch.full((2, 1), -LN3))
        assert d_loss.item() == pytest.approx(0.575364, abs=1e-6)
        # a discriminator that is right is barely penalised, one that is wrong a lot
        assert adversarial_d_loss(torch.tensor([20.0]), torch.tensor([-20.0])).item() < 1e-6
        assert adversarial_d_loss(torch.tensor([-5.0]), torch.tensor([5.0])).item() > 10.0

    def test_g_loss_value_and_gradient(self):
        # -ln sigmoid(0) = ln 2 = 0.693147; fake logit ln 3 -> -ln(3/4) = 0.287682
        assert adversarial_g_loss(torch.zeros(3)).item() == pytest.approx(0.693147, abs=1e-6)
        assert adversarial_g_loss(torch.tensor([LN3])).item() == pytest.approx(0.287682, abs=1e-6)
        # d/dz -ln sigmoid(z) = sigmoid(z) - 1 = -1/2 at z = 0, averaged over 2 -> -1/4: descent raises D(G(x))
        logits = torch.zeros(2, requires_grad=True)
        adversarial_g_loss(logits).backward()
        assert logits.grad.tolist() == pytest.approx([-0.25, -0.25])


class TestBuildLoss:
    logits, target = LOGITS3, TARGET3

    def test_every_name_builds_a_working_loss(self):
        for name in LOSS_NAMES:
            loss = build_loss({"name": name}, 3)(self.logits, self.target)
            assert loss.ndim == 0 and torch.isfinite(loss), name

    def test_values(self):
        spec = {"name": "weighted_ce", "class_weights": [0.2, 1.2, 2.2]}
        assert build_loss(spec, 3)(self.logits, self.target).item() == pytest.approx(0.628799, abs=1e-5)
        # plain CE: (ln 2 + ln(5/3)) / 2 = (0.693147 + 0.510826) / 2 = 0.601986
        assert build_loss({"name": "ce"}, 3)(self.logits, self.target).item() == pytest.approx(0.601986, abs=1e-5)
        dice_ce = DiceCELoss(softmax=True, to_onehot_y=True)(self.logits, self.target[:, None])
        assert build_loss({"name": "dice_ce"}, 3)(self.logits, self.target).item() == pytest.approx(dice_ce.item())
        composite = build_loss({"name": "composite", "alpha": 1, "beta": 1, "gamma": 1, "delta": 1,
                                "class_weights": "log"}, 3)
        assert isinstance(composite, CompositeLoss) and composite.beta == 1.0
        assert build_loss({"name": "weighted_ce"}, 2).class_weights.tolist() == pytest.approx([0.2, 1.2])

    def test_deep_supervision(self):
        spec = {"name": "weighted_ce", "deep_supervision": {"branch_weights": [1, 1, 1], "final_weight": 2}}
        loss = build_loss(spec, 3)
        assert isinstance(loss, DeepSupervisionLoss)
        # 2 * 0.628799 + 3 * 0.628799 = 3.143995
        assert loss([self.logits] * 4, self.target).item() == pytest.approx(3.143995, abs=1e-4)
        with pytest.raises(ValueError, match="branch"):
            loss([self.logits] * 3, self.target)
        assert isinstance(build_loss({"name": "ce", "deep_supervision": True}, 3), DeepSupervisionLoss)
        assert spec["deep_supervision"] == {"branch_weights": [1, 1, 1], "final_weight": 2}

    def test_errors(self):
        with pytest.raises(ValueError, match="known losses: ce, weighted_ce"):
            build_loss({"name": "hinge"}, 3)
        with pytest.raises(ValueError, match="known losses"):
            build_loss({}, 3)
        with pytest.raises(ValueError, match="bad options"):
            build_loss({"name": "composite", "epsilon": 1}, 3)
