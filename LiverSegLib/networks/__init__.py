"""Network architectures, one per file, and the name -> class table used by model configs."""

from __future__ import annotations

from typing import Any

from torch import nn

from LiverSegLib.errors import ModelError
from LiverSegLib.networks.di2in import DI2IN
from LiverSegLib.networks.discriminator import Discriminator
from LiverSegLib.networks.ensemble import MeanEnsemble
from LiverSegLib.networks.han_resunet import HanResUNet2p5D
from LiverSegLib.networks.mixed_unet import MixedPool2d, MixedUNet

__all__ = ["DI2IN", "Discriminator", "HanResUNet2p5D", "MeanEnsemble", "MixedPool2d", "MixedUNet", "NETWORKS",
           "build_network"]

NETWORKS: dict[str, type[nn.Module]] = {
    "DI2IN": DI2IN,
    "Discriminator": Discriminator,
    "HanResUNet2p5D": HanResUNet2p5D,
    "MeanEnsemble": MeanEnsemble,
    "MixedUNet": MixedUNet,
}


def build_network(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Instantiate a network by its registered name.

    Raises:
        ModelError: for an unknown name or arguments the class refuses.
    """
    if name not in NETWORKS:
        raise ModelError(f"unknown network class {name!r} in the model config (known: {', '.join(sorted(NETWORKS))})")
    try:
        return NETWORKS[name](**kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"network {name} refused its arguments {kwargs}: {exc}") from None
