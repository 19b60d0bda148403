"""One trainer for every recipe: supervised steps, then (DI2IN-AN) Yang's adversarial Algorithm 1.

The recipe (:class:`~LiverSegLib.training.train_config.TrainConfig`) names the network, sampler, loss, optimiser and
schedule; the hook methods (:meth:`Trainer.build_network`, :meth:`Trainer.supervised_step`,
:meth:`Trainer.adversarial_iteration`, :meth:`Trainer.validate`, ...) do the work and can be overridden by a
research variant without touching the loop. Mixed precision on CUDA; DistributedDataParallel under ``torchrun``;
resumable (``training_state.pt``); the best network by validation Dice is kept as ``model.pt``, a self-describing
inference checkpoint that ``liverseg segment --model-file`` uses directly.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from LiverSegLib.errors import InputError
from LiverSegLib.networks import build_network
from LiverSegLib.pipeline.stage import stage_config_dict
from LiverSegLib.training.cases import PreparedCase
from LiverSegLib.training.distributed import DistInfo, barrier, broadcast_buffers, gather_objects, weights_digest
from LiverSegLib.training.losses import adversarial_d_loss, adversarial_g_loss, build_loss
from LiverSegLib.training.samplers import build_sampler
from LiverSegLib.training.train_config import TrainConfig
from LiverSegLib.training.train_log import TrainLog
from LiverSegLib.training.validation import mean_dice, validate_cases
from LiverSegLib.weights import load_checkpoint, save_checkpoint

__all__ = ["Trainer", "STATE_FORMAT"]

STATE_FORMAT = "liverseg-training-state"


def _final(outputs):
    """The final output of a network that may also return deep-supervision branches."""
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def _foreground(logits: torch.Tensor) -> torch.Tensor:
    """``(N, 1, ...)`` foreground probability (liver incl. lesion): what the discriminator judges."""
    return (1.0 - torch.softmax(logits.float(), dim=1)[:, :1])


class Trainer:
    """Train one network from a recipe.

    Args:
        config: the recipe.
        train_cases / val_cases: prepared cases (``val_cases`` may be empty: the last network is then kept).
        out_dir: the run's folder (created when missing).
        device: torch device of this rank.
        dist_info: rank information (single process by default).
        max_steps: cap on the steps of each phase (quick trials, tests).
        resume: continue from ``out_dir/training_state.pt``.
        init: a checkpoint to start the network from (e.g. a pretrained DI2IN before the adversarial phase).
        bar: show a progress bar (rank 0).
        metadata: facts stored in the checkpoint (data folder, case names).
        real_masks: a liver-mask bank on the stage grid (:mod:`~LiverSegLib.training.mask_bank`): the
            discriminator's real samples in the adversarial phase. Default: the batch's own labels.
    """

    def __init__(self, config: TrainConfig, train_cases: list[PreparedCase], val_cases: list[PreparedCase],
                 out_dir: Path, device: torch.device, dist_info: DistInfo | None = None, max_steps: int | None = None,
                 resume: bool = False, init: Path | None = None, bar: bool = True,
                 metadata: dict[str, Any] | None = None, real_masks: list[np.ndarray] | None = None) -> None:
        self.cfg, self.stage = config, config.stage
        self.train_cases, self.val_cases = train_cases, val_cases
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.dist = dist_info or DistInfo()
        self.max_steps = max_steps
        self.metadata = dict(metadata or {})
        self.amp = bool(config.raw.get("amp", True)) and device.type == "cuda"
        torch.manual_seed(config.seed)
        self.net = self.build_network()
        try:
            self.loss_fn = build_loss(config.section("loss"), config.num_classes)
        except ValueError as exc:
            raise InputError(f"training config {config.name}: loss: {exc}") from None
        self.opt = self.build_optimizer(self.net.parameters(), config.section("optimizer"))
        self.sched = self.build_scheduler(self.opt, config.section("scheduler"))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.sampler = build_sampler(train_cases, self.stage, config.section("sampler"),
                                     config.section("synthetic_lesions") or None, config.seed, self.dist.rank,
                                     self.dist.world_size)
        adv = config.adversarial
        self.disc = self.opt_d = None
        self.mask_bank = None
        if adv and real_masks and not bool(adv["discriminator"].get("kwargs", {}).get("conditional", False)):
            from LiverSegLib.training.mask_bank import MaskBankSampler

            crop = config.section("sampler").get("crop")
            self.mask_bank = MaskBankSampler(real_masks, tuple(crop), config.seed * 1000 + self.dist.rank)
            self.metadata["mask_bank_size"] = len(real_masks)
        if adv:
            spec = adv["discriminator"]
            self.disc = build_network(spec["name"], spec.get("kwargs", {})).to(device).train()
            self.opt_d = self.build_optimizer(self.disc.parameters(), adv.get("optimizer") or config.section(
                "optimizer"))
            self.scaler_d = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.phases = [("supervised", config.steps)] + ([("adversarial", int(adv["iterations"]))] if adv else [])
        if max_steps is not None:
            self.phases = [(name, min(n, max_steps)) for name, n in self.phases]
        self.position = (0, 0)  # (phase index, steps done in it)
        self.best: dict[str, Any] = {"score": -1.0, "step": None, "scores": {}}
        self.counts = {"g_steps": 0, "d_steps": 0}
        if init is not None:
            self.net.load_state_dict(load_checkpoint(init)["state_dict"], strict=True)
        if resume:
            self.load_state()
        self.ddp_net = self._wrap(self.net)
        self.ddp_disc = self._wrap(self.disc) if self.disc is not None else None
        total = sum(n for _, n in self.phases)
        self.log = TrainLog(self.out, total, bar=bar, resume=resume) if self.dist.is_main else None

    # ------------------------------------------------------------------ hooks
    def build_network(self) -> nn.Module:
        spec = self.stage.network
        return build_network(spec.name, spec.kwargs).to(self.device).train()

    def build_optimizer(self, params, spec: dict[str, Any]) -> torch.optim.Optimizer:
        """``sgd`` (lr, momentum, weight_decay) or ``adam`` (lr, betas, weight_decay)."""
        name = spec.get("name", "sgd")
        if name == "sgd":
            return torch.optim.SGD(params, lr=spec.get("lr", 0.01), momentum=spec.get("momentum", 0.9),
                                   weight_decay=spec.get("weight_decay", 0.0))
        if name == "adam":
            return torch.optim.Adam(params, lr=spec.get("lr", 1e-3), betas=tuple(spec.get("betas", (0.9, 0.999))),
                                    weight_decay=spec.get("weight_decay", 0.0))
        raise InputError(f"unknown optimizer {name!r} in the training config (known: sgd, adam)")

    def build_scheduler(self, opt, spec: dict[str, Any]):
        """``step``: multiply the learning rate by ``gamma`` every ``every`` steps (Han: 0.9 per epoch; Yang: 0.1
        after 100 iterations); ``none`` (or absent): constant."""
        name = spec.get("name", "none")
        if name == "none":
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        if name == "step":
            every, gamma = int(spec.get("every", 1000)), float(spec.get("gamma", 0.1))
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: gamma ** (s // every))
        raise InputError(f"unknown scheduler {name!r} in the training config (known: none, step)")

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()

    def _batch(self, size: int | None = None):
        x, y = self.sampler.sample(size)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def supervised_step(self) -> dict[str, float]:
        """One optimisation step of the segmentation loss (with deep supervision when the network has branches)."""
        x, y = self._batch()
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.loss_fn(self.ddp_net(x), y)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.counts["g_steps"] += 1
        return {"loss": float(loss.detach())}

    def adversarial_iteration(self) -> dict[str, float]:
        """Yang 2017, Algorithm 1: ``k_d`` discriminator steps (minibatch ``batch_d``), then ``k_g`` generator steps
        (minibatch ``batch_g``) on ``l_seg + lambda * (-log D(G(x)))`` (the non-saturating form of eq. 3)."""
        adv = self.cfg.adversarial
        assert adv is not None and self.ddp_disc is not None and self.opt_d is not None
        conditional = bool(getattr(self.disc, "conditional", False))
        loss_d = torch.zeros(())
        for _ in range(int(adv["k_d"])):
            x, y = self._batch(int(adv["batch_d"]))
            with torch.no_grad(), self._autocast():
                fake = _foreground(_final(self.ddp_net(x)))
            if self.mask_bank is not None:  # real liver shapes from the bank (an unconditional D needs no image)
                real = self.mask_bank.sample(len(y)).to(self.device)
            else:
                real = ((y == 1) | (y == 2)).float()[:, None]  # HARD_NEGATIVE_LABEL (3) is background
            self.opt_d.zero_grad(set_to_none=True)
            with self._autocast():
                # one pass over [real; fake]: a DDP module may be called only once per backward
                extra = (torch.cat([x, x]),) if conditional else ()
                logits = self.ddp_disc(torch.cat([real, fake.to(real.dtype)]), *extra)
                loss_d = adversarial_d_loss(logits[: len(real)], logits[len(real):])
            self.scaler_d.scale(loss_d).backward()
            self.scaler_d.step(self.opt_d)
            self.scaler_d.update()
            self.counts["d_steps"] += 1
        seg = adv_term = torch.zeros(())
        for _ in range(int(adv["k_g"])):
            x, y = self._batch(int(adv["batch_g"]))
            self.opt.zero_grad(set_to_none=True)
            with self._autocast():
                out = self.ddp_net(x)
                seg = self.loss_fn(out, y)
                extra = (x,) if conditional else ()
                adv_term = adversarial_g_loss(self.ddp_disc(_foreground(_final(out)), *extra))
                loss = seg + float(adv["lambda"]) * adv_term
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)  # the discriminator's gradients from this pass are discarded (zeroed above)
            self.scaler.update()
            self.counts["g_steps"] += 1
        return {"loss": float(seg.detach()), "loss_d": float(loss_d.detach()), "loss_adv": float(adv_term.detach())}

    def validate(self) -> dict[str, float]:
        """Mean validation Dice per class (rank 0; the stage's own inference code)."""
        rows = validate_cases(self.net, self.stage, self.val_cases, self.device,
                              bool(self.cfg.section("sampler").get("liver_slices_only", False)))
        return mean_dice(rows)

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        """Run the remaining phases; returns the summary (also written to ``summary.json``)."""
        start = time.perf_counter()
        done_before = sum(n for _, n in self.phases[: self.position[0]]) + self.position[1]
        step = done_before
        for pi in range(self.position[0], len(self.phases)):
            phase, n = self.phases[pi]
            first = self.position[1] if pi == self.position[0] else 0
            for k in range(first, n):
                losses = self.supervised_step() if phase == "supervised" else self.adversarial_iteration()
                step += 1
                if self.log is not None:
                    self.log.step(step, phase, self.opt.param_groups[0]["lr"], losses)
                self.position = (pi, k + 1)
                if (k + 1) % self.cfg.validate_every == 0 or k + 1 == n:
                    self._checkpoint(step, phase)
            self.position = (pi + 1, 0)
        broadcast_buffers(self.net, self.dist)
        digests = gather_objects(weights_digest(self.net), self.dist)
        summary = {"config": self.cfg.name, "steps": step, "seconds": round(time.perf_counter() - start, 1),
                   "seconds_per_step": round((time.perf_counter() - start) / max(1, step - done_before), 3),
                   "best": self.best, "counts": self.counts, "device": str(self.device),
                   "world_size": self.dist.world_size, "rank_weight_sha256": digests}
        if self.dist.is_main:
            if not self.val_cases:  # nothing to choose by: the final network is the model
                self._export()
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
            assert self.log is not None
            self.log.close()
        barrier(self.dist)
        return summary

    def _checkpoint(self, step: int, phase: str) -> None:
        broadcast_buffers(self.net, self.dist)
        if self.dist.is_main:
            if self.val_cases:
                scores = self.validate()
                assert self.log is not None
                self.log.validation(step, phase, scores)
                finite = [v for v in scores.values() if np.isfinite(v)]
                score = float(np.mean(finite)) if finite else 0.0
                if score > self.best["score"]:
                    self.best = {"score": score, "step": step, "phase": phase, "scores": scores}
                    self._export()
            self.save_state()
        barrier(self.dist)

    def _export(self) -> None:
        meta = {**self.metadata, "training_config": self.cfg.raw, "best": self.best, "counts": dict(self.counts),
                "trained_steps": sum(n for _, n in self.phases[: self.position[0]]) + self.position[1]}
        save_checkpoint(self.out / "model.pt", stage_config_dict(self.stage), self.net.state_dict(), meta)

    # ------------------------------------------------------------------ state
    def save_state(self) -> None:
        """Everything needed to continue (``--resume``), loadable with ``weights_only=True``; written atomically."""
        state = {"format": STATE_FORMAT, "format_version": 1, "config": self.cfg.raw,
                 "position": list(self.position), "best": json.loads(json.dumps(self.best, default=float)),
                 "counts": dict(self.counts), "net": self.net.state_dict(), "opt": self.opt.state_dict(),
                 "sched": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                 "sampler_rng": json.dumps(self.sampler.rng.bit_generator.state),
                 "stream": [self.sampler.stream.epoch, list(self.sampler.stream._queue)],
                 "augment_rng": json.dumps(self.sampler.augment.get_state()),
                 "torch_rng": torch.get_rng_state()}
        if self.disc is not None and self.opt_d is not None:
            state.update(disc=self.disc.state_dict(), opt_d=self.opt_d.state_dict())
        fd, tmp = tempfile.mkstemp(dir=self.out, prefix=".training_state.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, self.out / "training_state.pt")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def load_state(self) -> None:
        path = self.out / "training_state.pt"
        if not path.is_file():
            raise InputError(f"--resume: no training_state.pt in {self.out}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any damage is the same message to the user
            raise InputError(f"--resume: {path} cannot be read safely ({type(exc).__name__})") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise InputError(f"--resume: {path} is not a LiverSeg training state")
        if state["config"].get("stage") != self.cfg.raw.get("stage"):
            raise InputError("--resume: the training state was made with a different network or preprocessing")
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.scaler.load_state_dict(state["scaler"])
        if self.disc is not None and "disc" in state:
            self.disc.load_state_dict(state["disc"])
            self.opt_d.load_state_dict(state["opt_d"])
        self.position = (int(state["position"][0]), int(state["position"][1]))
        self.best, self.counts = dict(state["best"]), dict(state["counts"])
        self.sampler.rng.bit_generator.state = json.loads(state["sampler_rng"])
        self.sampler.stream.epoch, queue = state["stream"]
        self.sampler.stream._queue = [int(i) for i in queue]
        self.sampler.augment.set_state(json.loads(state["augment_rng"]))
        torch.set_rng_state(state["torch_rng"])

    def validation_table(self) -> list[dict]:
        """Per-case validation Dice of the kept model (``model.pt``), for the final report (rank 0)."""
        if not self.val_cases or not (self.out / "model.pt").is_file():
            return []
        net = self.build_network()
        net.load_state_dict(load_checkpoint(self.out / "model.pt")["state_dict"])
        return validate_cases(net, self.stage, self.val_cases, self.device,
                              bool(self.cfg.section("sampler").get("liver_slices_only", False)))

    def _wrap(self, module: nn.Module) -> nn.Module:
        if not self.dist.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)
