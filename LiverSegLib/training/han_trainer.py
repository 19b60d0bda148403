"""Han 2017's training recipe for one stage of the cascade (section 3.2).

Weighted cross-entropy (background 0.2, liver 1.2, lesion 2.2), SGD with momentum 0.9, weight decay 5e-4, an
initial learning rate of 1e-3 multiplied by 0.9 after each epoch, random crops and left-right flips (the
sampler), batch normalisation after each convolution (the network).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from LiverSegLib.config import StageConfig
from LiverSegLib.networks import build_network
from LiverSegLib.pipeline.stage import stage_config_dict
from LiverSegLib.training.slices import SliceSampler
from LiverSegLib.weights import save_checkpoint

__all__ = ["HanRecipe", "train_stage"]


@dataclass(frozen=True)
class HanRecipe:
    """Training hyper-parameters; the defaults are the paper's except where a field says otherwise.

    Args:
        class_weights: cross-entropy weight per class index (paper: 0.2 background, 1.2 liver, 2.2 lesion).
        lr: initial learning rate (paper: 1e-3).
        lr_decay: factor applied after each epoch (paper: 0.9).
        momentum / weight_decay: SGD settings (paper: 0.9 / 5e-4).
        epochs: number of epochs (paper: 50 over LiTS).
        steps_per_epoch: optimisation steps per epoch. With LiTS an epoch is a pass over every training slice;
            the demo data is tiny, so an "epoch" is a fixed number of steps instead.
        batch: crops per step.
        crop: crop size in pixels.
        seed: seed for weights initialisation and sampling.
    """

    class_weights: tuple[float, ...] = (0.2, 1.2, 2.2)
    lr: float = 1e-3
    lr_decay: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 50
    steps_per_epoch: int = 100
    batch: int = 8
    crop: int = 128
    seed: int = 0


def train_stage(stage: StageConfig, sampler: SliceSampler, recipe: HanRecipe, out_path: str,
                metadata: dict | None = None, log: Callable[[str], None] = print,
                device: str | torch.device = "cpu") -> tuple[nn.Module, str]:
    """Train one stage network from scratch and save a self-describing checkpoint.

    Returns:
        The trained network (eval mode, on CPU) and the checkpoint's sha256.
    """
    torch.manual_seed(recipe.seed)
    device = torch.device(device)
    net = build_network(stage.network.name, stage.network.kwargs).to(device).train()
    weights = torch.tensor(recipe.class_weights[: len(stage.classes)], dtype=torch.float32, device=device)
    criterion = nn.CrossEntropyLoss(weight=weights)
    optimizer = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=recipe.lr_decay)
    history = []
    start = time.perf_counter()
    for epoch in range(recipe.epochs):
        losses = []
        for _ in range(recipe.steps_per_epoch):
            x, y = sampler.sample(recipe.batch)
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(net(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        scheduler.step()
        history.append(float(np.mean(losses)))
        log(f"epoch {epoch + 1}/{recipe.epochs} loss {history[-1]:.4f} lr {scheduler.get_last_lr()[0]:.2e} "
            f"({time.perf_counter() - start:.0f} s)")
    net = net.cpu().eval()
    meta = {"recipe": asdict(recipe), "loss_per_epoch": [round(v, 5) for v in history],
            "train_seconds": round(time.perf_counter() - start, 1), **(metadata or {})}
    sha = save_checkpoint(out_path, stage_config_dict(stage), net.state_dict(), meta)
    return net, sha
