"""Segmentation losses from the papers this project follows, plus a builder for training configs.

- Weighted cross-entropy, background 0.2 / liver 1.2 / lesion 2.2: X. Han, "Automatic Liver Lesion Segmentation
  Using a Deep Convolutional Neural Network Method", ISBI LiTS challenge 2017, https://arxiv.org/abs/1704.07239
- Deep supervision ``l_total = sum_i w_i * l_i + w_final * l_final`` and the adversarial losses (eq. 1 and the
  non-saturating generator term): D. Yang et al., "Automatic Liver Segmentation Using an Adversarial
  Image-to-Image Network", MICCAI 2017, https://arxiv.org/abs/1707.08037. Gibson et al. 2017 (laparoscopic liver
  segmentation) weight the losses of their multi-resolution outputs the same way.
- Logarithmic class weights ``W_i = max(1, log(|M| / |M_i|))`` (eq. 1) and the composite loss
  ``alpha * wCE + beta * Dice + gamma * Huber + delta * FocalTversky`` (eq. 2): SLiPPA, 2025,
  https://github.com/ARMADILLO-VISION/SLiPPA
- Focal Tversky loss: N. Abraham, N. M. Khan, ISBI 2019, https://doi.org/10.1109/ISBI.2019.8759329

Every segmentation loss here takes logits ``(N, C, *spatial)`` (2D or 3D) and an integer label map ``(N, *spatial)``
(``(N, 1, *spatial)`` is accepted too) and returns a scalar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch convention
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from LiverSegLib.training.organs import HARD_NEGATIVE_LABEL, IGNORE_LABEL

__all__ = ["HAN_CLASS_WEIGHTS", "LOSS_NAMES", "CompositeLoss", "DeepSupervisionLoss", "FocalTverskyLoss",
           "WeightedCrossEntropy", "adversarial_d_loss", "adversarial_g_loss", "build_loss", "log_class_weights"]

#: Han 2017, section 2: background, liver, lesion.
HAN_CLASS_WEIGHTS: tuple[float, float, float] = (0.2, 1.2, 2.2)


def _labels(logits: torch.Tensor, target: torch.Tensor, allow_ignore: bool = False) -> torch.Tensor:
    """Check shapes and return the target as a ``(N, *spatial)`` long tensor (``allow_ignore``: voxels labelled
    :data:`~LiverSegLib.training.organs.IGNORE_LABEL` become 0; the caller must give them no weight)."""
    if logits.ndim < 3:
        raise ValueError(f"logits must be (N, C, *spatial), got shape {tuple(logits.shape)}")
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    target = target.long()
    ignored = target == IGNORE_LABEL
    if bool(ignored.any()):
        if not allow_ignore:
            raise ValueError(f"label value {IGNORE_LABEL} (ignored voxels of pseudo-labels) is only supported by "
                             "the weighted cross-entropy")
        target = torch.where(ignored, torch.zeros_like(target), target)
    # a hard-negative voxel (organs.HARD_NEGATIVE_LABEL) is background for every loss; only the weighted
    # cross-entropy gives it extra weight (it looks at the raw target first)
    return torch.where(target == HARD_NEGATIVE_LABEL, torch.zeros_like(target), target)


def _one_hot(target: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``(N, *spatial)`` labels -> ``(N, C, *spatial)`` one-hot."""
    return F.one_hot(target, num_classes).movedim(-1, 1).to(dtype)


def log_class_weights(label: torch.Tensor | np.ndarray, num_classes: int) -> torch.Tensor:
    """SLiPPA's logarithmic class weights ``W_i = max(1, ln(|M| / |M_i|))`` (natural logarithm).

    ``|M|`` is the number of voxels of ``label``, ``|M_i|`` that of class ``i``: a class making up more than 1/e
    (about 37 %) of the voxels gets weight 1, rarer classes get more. A class absent from ``label``
    (``|M_i| = 0``) gets ``max(1, ln |M|)``, the weight of a class with a single voxel: the largest finite weight
    the formula gives, the class counting as the rarest possible one. When the weights are computed from the
    labels they weight (as :class:`CompositeLoss` does per batch), this choice cannot change the cross-entropy,
    which only uses the weights of the target voxels' classes.

    Args:
        label: integer label map of any shape (values in ``[0, num_classes)``).
        num_classes: length of the returned vector.

    Returns:
        float32 tensor ``(num_classes,)`` on the label's device (CPU for a numpy array).

    Raises:
        ValueError: for an empty label or a value outside ``[0, num_classes)``.

    Example::

        log_class_weights(np.array([0] * 90 + [1] * 9 + [2]), 3)  # -> [1.0, ln(100/9), ln(100)]
    """
    lab = torch.as_tensor(label).detach().reshape(-1).long()
    if lab.numel() == 0:
        raise ValueError("cannot compute class weights of an empty label")
    if int(lab.min()) < 0 or int(lab.max()) >= num_classes:
        raise ValueError(f"label values must be in [0, {num_classes}), got [{int(lab.min())}, {int(lab.max())}]")
    counts = torch.bincount(lab, minlength=num_classes).double()
    return torch.log(lab.numel() / counts.clamp(min=1.0)).clamp(min=1.0).float()


class WeightedCrossEntropy(nn.Module):
    """Class-weighted cross-entropy (Han 2017) on logits and integer labels.

    With ``normalization="weights"`` (the default, torch's ``nn.CrossEntropyLoss(weight=...)``) the result is
    ``sum_v w[y_v] * (-ln p_v[y_v]) / sum_v w[y_v]``: the weighted mean divides by the sum of the weights of the
    target voxels, not by the number of voxels. ``normalization="voxels"`` divides by the number of voxels instead
    (the two differ by a batch-dependent factor; with uniform weights both are the plain mean).

    Args:
        class_weights: one weight per class index (default Han's 0.2 / 1.2 / 2.2); longer than the number of
            classes is fine, the vector is truncated to ``C`` (a two-class liver model uses 0.2 / 1.2).
            ``"log"``: SLiPPA's :func:`log_class_weights`, computed from each batch's target.
            ``None``: unweighted cross-entropy.
        num_classes: if given, the weights are truncated (and checked) here instead of at each call.
        normalization: ``"weights"`` or ``"voxels"`` (see above).
        hard_negative_weight: factor on the weight of background voxels labelled
            :data:`~LiverSegLib.training.organs.HARD_NEGATIVE_LABEL` (organs next to the liver that look like it:
            spleen, kidneys, stomach, heart, muscle...); they count as class 0. 1 (default) treats them as plain
            background.

    Voxels labelled :data:`~LiverSegLib.training.organs.IGNORE_LABEL` (uncertain pseudo-labels) get weight 0; with
    ``normalization="voxels"`` they still count in the denominator.

    Example::

        loss = WeightedCrossEntropy()(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))
    """

    def __init__(self, class_weights: Sequence[float] | str | None = HAN_CLASS_WEIGHTS,
                 num_classes: int | None = None, normalization: str = "weights",
                 hard_negative_weight: float = 1.0) -> None:
        super().__init__()
        if hard_negative_weight <= 0:
            raise ValueError(f"hard_negative_weight must be > 0, got {hard_negative_weight}")
        self.hard_negative_weight = float(hard_negative_weight)
        if normalization not in ("weights", "voxels"):
            raise ValueError(f"normalization must be 'weights' or 'voxels', got {normalization!r}")
        if isinstance(class_weights, str) and class_weights != "log":
            raise ValueError(f"class_weights must be a sequence, 'log' or None, got {class_weights!r}")
        self.normalization = normalization
        self.log_weights = class_weights == "log"
        weights = None
        if class_weights is not None and not self.log_weights:
            weights = torch.tensor([float(w) for w in class_weights])
            weights = weights if num_classes is None else self._truncated(weights, num_classes)
        self.register_buffer("class_weights", weights, persistent=False)

    @staticmethod
    def _truncated(weights: torch.Tensor, num_classes: int) -> torch.Tensor:
        if len(weights) < num_classes:
            raise ValueError(f"{len(weights)} class weights for {num_classes} classes")
        return weights[:num_classes]

    def weights_for(self, target: torch.Tensor, num_classes: int) -> torch.Tensor | None:
        """The weight vector used for this target (``None`` when unweighted)."""
        if self.log_weights:
            return log_class_weights(target, num_classes).to(target.device)
        return None if self.class_weights is None else self._truncated(self.class_weights, num_classes)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raw = target[:, 0] if target.ndim == logits.ndim else target
        hard, ignored = raw == HARD_NEGATIVE_LABEL, raw == IGNORE_LABEL
        target = _labels(logits, target, allow_ignore=True)
        weight = self.weights_for(target, logits.shape[1])
        weight = None if weight is None else weight.to(logits.dtype)
        use_hard = self.hard_negative_weight != 1.0 and bool(hard.any())
        if use_hard or bool(ignored.any()):
            voxel_w = (weight[target] if weight is not None else torch.ones_like(target, dtype=logits.dtype))
            if use_hard:
                voxel_w = torch.where(hard, voxel_w * self.hard_negative_weight, voxel_w)
            voxel_w = torch.where(ignored, torch.zeros_like(voxel_w), voxel_w)  # no supervision there
            ce = F.cross_entropy(logits, target, reduction="none")
            if self.normalization == "weights":
                return (voxel_w * ce).sum() / voxel_w.sum().clamp_min(1e-12)
            return (voxel_w * ce).mean()
        if self.normalization == "weights":
            return F.cross_entropy(logits, target, weight=weight)
        return F.cross_entropy(logits, target, weight=weight, reduction="none").mean()


class DeepSupervisionLoss(nn.Module):
    """Yang 2017's deep supervision: ``l_total = sum_i w_i * l_i + w_final * l_final``.

    Unlike ``monai.losses.DeepSupervisionLoss`` (which treats the first output as level 0 of a weight series,
    silently falls back to default weights and resamples the target), the final output has its own weight, the
    number of branch weights must match the number of branch outputs, and every output is compared with the
    target as given: the branches must already have the target's size (Yang upsample them to the input size).

    Args:
        loss: the loss applied to each output, called as ``loss(output, target)``.
        branch_weights: ``w_i`` for the branch outputs, in the network's order. ``None``: 1 for every branch,
            however many there are (Yang: "w_i is set as 1").
        final_weight: ``w_final``.

    Example::

        criterion = DeepSupervisionLoss(WeightedCrossEntropy(), branch_weights=(1, 1, 1))
        total = criterion(net(x), y)  # net in training mode returns (final, branch_1, branch_2, branch_3)
    """

    def __init__(self, loss: nn.Module | Callable, branch_weights: Sequence[float] | None = None,
                 final_weight: float = 1.0) -> None:
        super().__init__()
        self.loss = loss
        self.branch_weights = None if branch_weights is None else tuple(float(w) for w in branch_weights)
        self.final_weight = float(final_weight)

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """``outputs``: ``(final, branch_1, ...)`` as a network returns them in training mode, or the final output
        alone (a network in eval mode), which gives ``loss(final)`` unweighted, comparable with the unwrapped loss.
        ``target`` is passed unchanged to ``loss``. Raises ValueError for an empty sequence, or when the number of
        branch outputs differs from the number of branch weights.
        """
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        if not outputs:
            raise ValueError("no outputs given")
        final, branches = outputs[0], list(outputs[1:])
        weights = self.branch_weights if self.branch_weights is not None else (1.0,) * len(branches)
        if len(weights) != len(branches):
            raise ValueError(f"{len(branches)} branch outputs but {len(weights)} branch weights")
        total = self.final_weight * self.loss(final, target)
        for weight, output in zip(weights, branches, strict=True):
            total = total + weight * self.loss(output, target)
        return total


class FocalTverskyLoss(nn.Module):
    """Focal Tversky loss (Abraham & Khan 2019), as used in SLiPPA's composite loss (which gives no parameters).

    Per class ``c``, on softmax probabilities ``p`` and the one-hot target ``g`` summed over the batch and all
    voxels: ``TI_c = (TP_c + s) / (TP_c + alpha * FN_c + beta * FP_c + s)`` with ``TP_c = sum p g``,
    ``FN_c = sum (1 - p) g``, ``FP_c = sum p (1 - g)``. The loss is ``mean_c (1 - TI_c) ** (1 / focal_gamma)``
    (Abraham & Khan sum over classes; the mean keeps the value in [0, 1] like MONAI's Dice loss).

    The defaults are Abraham & Khan's: ``alpha = 0.7`` on false negatives, ``beta = 0.3`` on false positives, and
    ``focal_gamma = 4/3`` in their notation, i.e. an exponent ``1 / focal_gamma = 0.75``. Careful: many code bases
    call the exponent itself ``gamma`` (0.75); passing 0.75 here gives the exponent 4/3.
    (MONAI's ``TverskyLoss`` puts ``alpha`` on false positives, the other way round, and has no focal term.)

    Args:
        alpha: weight of the false negatives.
        beta: weight of the false positives.
        focal_gamma: the focal parameter; the exponent is ``1 / focal_gamma`` (> 1 focuses on poorly segmented
            classes, 1 gives the Tversky loss).
        include_background: whether class 0 takes part.
        smooth: added to numerator and denominator (an absent, unpredicted class then scores TI = 1).

    Example::

        loss = FocalTverskyLoss()(torch.randn(2, 3, 8, 8, 8), torch.randint(0, 3, (2, 8, 8, 8)))
    """

    def __init__(self, alpha: float = 0.7, beta: float = 0.3, focal_gamma: float = 4.0 / 3.0,
                 include_background: bool = True, smooth: float = 1e-5) -> None:
        super().__init__()
        if focal_gamma <= 0:
            raise ValueError(f"focal_gamma must be > 0, got {focal_gamma}")
        self.alpha, self.beta, self.focal_gamma = float(alpha), float(beta), float(focal_gamma)
        self.include_background, self.smooth = include_background, float(smooth)

    def forward_probs(self, probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """The loss from probabilities and a one-hot target, both ``(N, C, *spatial)``."""
        if not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        dims = [0, *range(2, probs.ndim)]
        tp = (probs * onehot).sum(dims)
        fn = ((1 - probs) * onehot).sum(dims)
        fp = (probs * (1 - onehot)).sum(dims)
        tversky = (tp + self.smooth) / (tp + self.alpha * fn + self.beta * fp + self.smooth)
        # The clamp keeps the fractional power's gradient finite at TI = 1 (and rounding above 1 from giving NaN).
        return (1 - tversky).clamp(min=1e-12).pow(1.0 / self.focal_gamma).mean()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _labels(logits, target)
        return self.forward_probs(logits.softmax(1), _one_hot(target, logits.shape[1], logits.dtype))


class CompositeLoss(nn.Module):
    """SLiPPA's composite loss (eq. 2): ``alpha * wCE + beta * Dice + gamma * Huber + delta * FocalTversky``.

    The cross-entropy works on the logits; Dice, Huber and focal Tversky on the softmax probabilities against
    the one-hot target. Components with a zero coefficient are not computed.

    Defaults: SLiPPA ablated the four coefficients (best per model in its Table 3, e.g. 1/0/0/0, 0.5/0/0/0.5,
    0.25/0.25/0/0.5) and fine-tuned with ``alpha = 0.75, delta = 0.25``; that fine-tuning loss is the default here.
    The paper gives no Huber threshold, Tversky or focal parameters and no Dice details: the Huber ``delta`` is
    torch's 1.0 (with probabilities every residual is <= 1, so it is half the squared error), focal Tversky uses
    Abraham & Khan's values (see :class:`FocalTverskyLoss`), Dice is MONAI's soft Dice (intersection and sums
    pooled over the batch, averaged over classes). SLiPPA computes the log weights over the whole training set;
    ``class_weights="log"`` computes them from each batch's target instead; pass a sequence (e.g.
    ``log_class_weights(all_training_labels, C).tolist()``) for dataset-level weights.

    Args:
        num_classes: ``C``, including background.
        alpha, beta, gamma, delta: coefficients of cross-entropy, Dice, Huber and focal Tversky.
        class_weights: cross-entropy weights: a sequence (truncated to ``C``), ``"log"`` or ``None`` (unweighted).
        huber_delta: threshold of ``nn.HuberLoss``.
        tversky_alpha, tversky_beta, focal_gamma: see :class:`FocalTverskyLoss`.
        include_background: whether class 0 takes part in Dice and focal Tversky.

    Example::

        loss = CompositeLoss(3, alpha=0.5, delta=0.5)(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16)))
    """

    def __init__(self, num_classes: int, alpha: float = 0.75, beta: float = 0.0, gamma: float = 0.0,
                 delta: float = 0.25, class_weights: Sequence[float] | str | None = "log", huber_delta: float = 1.0,
                 tversky_alpha: float = 0.7, tversky_beta: float = 0.3, focal_gamma: float = 4.0 / 3.0,
                 include_background: bool = True) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.alpha, self.beta, self.gamma, self.delta = (float(c) for c in (alpha, beta, gamma, delta))
        self.ce = WeightedCrossEntropy(class_weights, num_classes=num_classes)
        self.dice = DiceLoss(include_background=include_background, batch=True)
        self.huber = nn.HuberLoss(delta=huber_delta)
        self.focal_tversky = FocalTverskyLoss(tversky_alpha, tversky_beta, focal_gamma, include_background)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _labels(logits, target)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} channels, expected {self.num_classes}")
        total = logits.new_zeros(())
        if self.alpha:
            total = total + self.alpha * self.ce(logits, target)
        if self.beta or self.gamma or self.delta:
            probs = logits.softmax(1)
            onehot = _one_hot(target, self.num_classes, probs.dtype)
            if self.beta:
                total = total + self.beta * self.dice(probs, onehot)
            if self.gamma:
                total = total + self.gamma * self.huber(probs, onehot)
            if self.delta:
                total = total + self.delta * self.focal_tversky.forward_probs(probs, onehot)
        return total


def adversarial_d_loss(d_real_logits: torch.Tensor, d_fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss, Yang 2017 eq. 1: ``-E log D(y_gt) - E log(1 - D(G(x)))``.

    Binary cross-entropy with the ground truth (``d_real_logits``, D's logits before the sigmoid, any shape)
    labelled 1 and the prediction (``d_fake_logits``, detached from G when updating D) labelled 0. Each expectation
    is the mean over its tensor (batch, and positions for a patch discriminator); the two terms are summed, so the
    result is ``2 ln 2`` when D answers 0.5 everywhere.
    """
    real = F.binary_cross_entropy_with_logits(d_real_logits, torch.ones_like(d_real_logits))
    fake = F.binary_cross_entropy_with_logits(d_fake_logits, torch.zeros_like(d_fake_logits))
    return real + fake


def adversarial_g_loss(d_fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator's adversarial term, the non-saturating form of Yang 2017 eq. 3: ``-E log D(G(x))``.

    Yang replace ``-log(1 - D(G(x)))`` of eq. 2 by the "log D(G(x))" term (Goodfellow et al. 2014) and write
    ``l_G = l_seg + lambda * E log D(G(x))`` loosely: the term that is minimised is ``-log D(G(x))``, the binary
    cross-entropy of ``D(G(x))`` against 1, which pushes ``D(G(x))`` up. The weight ``lambda`` (0.01 in the paper)
    and the segmentation loss are applied by the trainer, not here.

    ``d_fake_logits``: D's logits (any shape) for the generator's predictions, not detached. Gives ``ln 2`` when
    D answers 0.5.
    """
    return F.binary_cross_entropy_with_logits(d_fake_logits, torch.ones_like(d_fake_logits))


class _LabelMapTarget(nn.Module):
    """Feeds a MONAI loss that wants ``(N, 1, *spatial)`` targets from an integer label map ``(N, *spatial)``."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, _labels(logits, target)[:, None])


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "ce": lambda n, **kw: WeightedCrossEntropy(None, num_classes=n, **kw),
    "weighted_ce": lambda n, class_weights=HAN_CLASS_WEIGHTS, **kw: WeightedCrossEntropy(class_weights, n, **kw),
    "composite": lambda n, **kw: CompositeLoss(n, **kw),
    "focal_tversky": lambda n, **kw: FocalTverskyLoss(**kw),
    "dice": lambda n, **kw: _LabelMapTarget(DiceLoss(softmax=True, to_onehot_y=True, **kw)),
    "dice_ce": lambda n, **kw: _LabelMapTarget(DiceCELoss(softmax=True, to_onehot_y=True, **kw)),
}
#: Names accepted by :func:`build_loss`.
LOSS_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_loss(spec: dict, num_classes: int) -> nn.Module:
    """Build a loss from a JSON-able spec of a training config.

    ``spec["name"]`` is one of :data:`LOSS_NAMES`, the other keys are the loss's keyword arguments: ``"ce"`` and
    ``"weighted_ce"`` give :class:`WeightedCrossEntropy` without weights / with ``class_weights`` (default Han's
    0.2 / 1.2 / 2.2), ``"composite"`` :class:`CompositeLoss`, ``"focal_tversky"`` :class:`FocalTverskyLoss`,
    ``"dice"`` / ``"dice_ce"`` MONAI's ``DiceLoss`` / ``DiceCELoss`` with ``softmax=True, to_onehot_y=True``.

    An optional ``"deep_supervision"`` key (``{"branch_weights": [...], "final_weight": ...}``, or ``true`` for all
    weights 1) wraps the loss in :class:`DeepSupervisionLoss`. The returned module takes logits
    ``(N, C, *spatial)`` and integer labels ``(N, *spatial)``. ``spec`` is not modified.

    Raises:
        ValueError: for a missing or unknown name (the message lists the known ones) or unusable options.

    Example::

        build_loss({"name": "composite", "alpha": 0.5, "delta": 0.5, "deep_supervision": {"branch_weights": [1, 1]}}, 3)
    """
    options = dict(spec)
    name = options.pop("name", None)
    if name not in _BUILDERS:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSS_NAMES)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    deep = options.pop("deep_supervision", None)
    try:
        loss = _BUILDERS[name](num_classes, **options)
        if deep:
            loss = DeepSupervisionLoss(loss, **({} if deep is True else dict(deep)))
    except TypeError as err:
        raise ValueError(f"bad options for loss {name!r}: {err}") from err
    return loss

