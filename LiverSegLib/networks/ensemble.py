"""Several trained networks of one architecture run as one: their softmax probabilities are averaged.

Why: on four leave-one-out folds the same CPU recipe trained twice gives coarse livers that differ by up to 0.07
Dice on one case, and averaging runs is the usual way to spend more training on less spread. Measured here it is no
sure gain: one two-run mean beat both runs on a fold, others joined the heart to the liver
(Resources/MODEL_CARD_han-liver.md). Packing the members into one module keeps a stage one checkpoint (one sha256,
loaded with ``weights_only=True``) and one ONNX graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class MeanEnsemble(nn.Module):
    """``count`` copies of the network ``member`` whose class probabilities are averaged.

    The output is the log of the mean softmax, so the pipeline's softmax over it gives the mean probability exactly
    (``softmax(log p) = p`` for a distribution ``p``).

    Args:
        member: the member network's spec, ``{"name": ..., "kwargs": {...}}`` as in a model config.
        count: how many members (at least 2).

    Raises:
        ValueError: fewer than two members, or a member spec that names an ensemble.
    """

    def __init__(self, member: dict[str, Any], count: int) -> None:
        super().__init__()
        from LiverSegLib.networks import build_network  # the registry imports this module

        if int(count) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {count}")
        if member.get("name") == "MeanEnsemble":
            raise ValueError("an ensemble's member cannot be an ensemble")
        self.members = nn.ModuleList(build_network(member["name"], dict(member.get("kwargs", {})))
                                     for _ in range(int(count)))
        first = self.members[0]
        # The stage runner reads these from the network: slices in, padding multiple, 2D or 3D.
        for name in ("spatial_dims", "in_channels", "size_multiple"):
            if hasattr(first, name):
                setattr(self, name, getattr(first, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members]).mean(dim=0)
        # log of the mean rather than logsumexp of log-softmaxes: OpenVINO's ONNX reader lacks ReduceLogSumExp here.
        # The floor only keeps log finite; 1e-30 is far below any probability that changes a label.
        return torch.log(mean.clamp_min(1e-30))
