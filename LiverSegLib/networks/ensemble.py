"""Several trained networks of one architecture run as one stage: their softmax probabilities are averaged.

Why: on four leave-one-out folds the same CPU recipe trained twice gives coarse livers that differ by up to 0.07
Dice on one case, and averaging runs is the usual way to spend more training on less spread. Averaged naively it is
no sure gain: two coarse members that each keep the heart apart from the liver (one as a separate component, the
other behind a thin neck) can average into a heart joined to the liver over a broad contact. So the stage keeps each
member's probabilities as well as their mean, and the cascade restricts the mean to the union of the members' own
coarse livers (``CascadeConfig.coarse_member_union``; Resources/MODEL_CARD_han-liver.md). Packing the members into
one module keeps a stage one checkpoint (one sha256, loaded with ``weights_only=True``) and one ONNX graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class MeanEnsemble(nn.Module):
    """``count`` copies of the network ``member``, run side by side.

    The output holds each member's log-softmax, members one after another along the channel axis: shape
    ``(B, count * C, ...)``. A softmax over that axis (what every runtime applies to a stage's logits, the ONNX export
    included) gives each member's probabilities divided by ``count`` (``exp(log p) / count`` since each member's
    probabilities sum to 1), so :func:`~LiverSegLib.pipeline.stage.fold_members` recovers the members' probabilities
    and their mean exactly.

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
        return torch.cat([torch.log_softmax(m(x).float(), dim=1) for m in self.members], dim=1)
