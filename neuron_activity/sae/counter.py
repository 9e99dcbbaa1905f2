"""Counting an SAE's latents: each chunk of a component's activations encoded, its latents
counted by the ordinary counter of the device, and per latent the sum of its activation where
it fires and its largest activation kept beside the fire counts; with ``stats``, also its
largest pre-activation and smallest margin to firing (``encode.Reach``). ``sae_counter`` makes
the CPU one (numpy encoders) or the device one (torch encoders, everything on the device)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from ..counters import Counter, States
from ..counting import make_counter
from ..dtypes import FireRule, fire_rule, to_float32
from ..torch_counting import TorchCounter
from .encode import NumpyEncoder, Reach, TorchEncoder, TorchReach, batch_rows, given
from .model import Sae


def _latent_rule(fire_above: Fraction) -> tuple[FireRule, np.float32 | None]:
    """The fire rule of float32 latents, and the largest latent value that does not fire when
    ``fire_above`` is positive (None otherwise).

    Every rule's latents are >= 0 (or NaN): at fire_above <= 0 a latent that does not fire is 0
    and adds nothing, so the sum over the vectors it fired on is the sum of its values; above 0,
    values up to the largest float32 <= fire_above are left out of the sums."""
    rule = fire_rule("F32", fire_above)
    if rule.fire_above <= 0:
        return rule, None
    ranges = rule.fire_ranges
    below = np.array([ranges[0][0] - 1 if ranges else 0x7F800000], np.uint32).view(np.float32)[0]
    return rule, np.float32(below)


class SaeCounter:
    """Encodes chunks of one component's activations with its SAEs on the CPU and counts the
    latents: fires, NaNs (and last fired), and, per latent, the sum of its activation where it
    fires and its largest activation. Follows the ``counters.Counter`` protocol; ``result``
    holds the SAEs' latents one after another."""

    def __init__(
        self,
        dtype: str,
        saes: list[Sae],
        kernel: str | None,
        track_last: bool,
        fire_above: Fraction,
        stats: bool = False,
    ) -> None:
        self.dtype = dtype
        self.rule, self.below = _latent_rule(fire_above)
        self.step = min(batch_rows(s) for s in saes)
        self.encoders = [NumpyEncoder(s) for s in saes]
        self.counters: list[Counter] = [make_counter(self.rule, s.d_sae, "cpu", kernel, track_last) for s in saes]
        self.sums = [np.zeros(s.d_sae, np.float64) for s in saes]
        self.maxima = [np.full(s.d_sae, -np.inf, np.float64) for s in saes]
        self.reaches: list[Reach | None] = [Reach(s.d_sae) if stats else None for s in saes]
        self.name = f"sae+{self.counters[0].name}"  # the kernel that counts the latents

    def update(self, bits: np.ndarray, first_vector: int = 0) -> None:
        x = to_float32(bits, self.dtype)
        for start in range(0, x.shape[0], self.step):
            self._update(x[start : start + self.step], first_vector + start)

    def _update(self, x: np.ndarray, first_vector: int) -> None:
        for encoder, counter, sums, maxima, reach in zip(
            self.encoders, self.counters, self.sums, self.maxima, self.reaches
        ):
            latents = encoder.encode(x, reach)
            counter.update(latents.view(np.uint32), first_vector)
            if np.isnan(latents[:, 0]).any():  # a vector with a NaN input has NaN latents only
                latents = latents[~np.isnan(latents[:, 0])]
            fired = latents if self.below is None else np.where(latents > self.below, latents, np.float32(0))
            sums += np.ones(len(latents), np.float32) @ fired  # float32 within a batch, float64 across
            if len(latents):
                np.fmax(maxima, latents.max(axis=0), out=maxima)

    def result(self) -> States:
        parts = [c.result() for c in self.counters]
        out = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        out["act_sums"] = np.concatenate(self.sums)
        out["act_max"] = np.concatenate(self.maxima)
        if self.reaches[0] is not None:
            out["pre_max"] = np.concatenate([given(r).pre_max for r in self.reaches])
            out["margins"] = np.concatenate([given(r).margins for r in self.reaches])
        return out


class TorchSaeCounter:
    """The same on a device with torch: the chunk goes to the device once, is encoded there (the
    matrix product in ``compute``: float32, or bf16/fp16 on a GPU), and its latents are counted
    where they are; the sums and maxima stay on the device until ``result``."""

    def __init__(
        self,
        dtype: str,
        saes: list[Sae],
        device: str,
        track_last: bool,
        fire_above: Fraction,
        compute: str = "float32",
        stats: bool = False,
    ) -> None:
        import torch

        self.dtype = dtype
        self.rule, _ = _latent_rule(fire_above)
        self.step = min(batch_rows(s) for s in saes)
        self.counters = [TorchCounter(self.rule, s.d_sae, device, track_last) for s in saes]
        where = self.counters[0].device
        self.encoders = [TorchEncoder(s, where, compute) for s in saes]
        self.sums = [torch.zeros(s.d_sae, dtype=torch.float64, device=where) for s in saes]
        self.maxima = [torch.full((s.d_sae,), -math.inf, dtype=torch.float64, device=where) for s in saes]
        self.reaches: list[TorchReach | None] = [TorchReach(s.d_sae, where) if stats else None for s in saes]
        self.name = f"sae+{self.counters[0].name}"

    def update(self, bits: np.ndarray, first_vector: int = 0) -> None:
        for start in range(0, bits.shape[0], self.step):
            self._update(bits[start : start + self.step], first_vector + start)

    def _update(self, bits: np.ndarray, first_vector: int) -> None:
        import torch

        view = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}[self.dtype]
        with self.counters[0].on_device(bits) as raw:
            x = raw.view(view).float()
            for encoder, counter, sums, maxima, reach in zip(
                self.encoders, self.counters, self.sums, self.maxima, self.reaches
            ):
                latents = encoder.encode(x, reach)
                fires = counter.count_bits(latents.view(torch.int32), first_vector)
                if fires is not None:
                    sums += torch.where(fires, latents, 0.0).sum(dim=0, dtype=torch.float64)
                torch.fmax(maxima, torch.nan_to_num(latents, nan=-math.inf).amax(dim=0).double(), out=maxima)

    def result(self) -> States:
        parts = [c.result() for c in self.counters]
        out = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        out["act_sums"] = np.concatenate([s.cpu().numpy() for s in self.sums])
        out["act_max"] = np.concatenate([m.cpu().numpy() for m in self.maxima])
        if self.reaches[0] is not None:
            out["pre_max"] = np.concatenate([given(r).pre_max.cpu().numpy() for r in self.reaches])
            out["margins"] = np.concatenate([given(r).margins.cpu().numpy() for r in self.reaches])
        return out


def sae_counter(
    dtype: str,
    saes: list[Sae],
    device: str,
    kernel: str | None,
    track_last: bool,
    fire_above: Fraction,
    compute: str = "float32",
    stats: bool = False,
) -> SaeCounter | TorchSaeCounter:
    """The counter of ``saes``' latents on ``device`` (kernel torch: the device path, on the cpu);
    ``stats``: also how close each latent came to firing."""
    if device != "cpu" or kernel == "torch":
        return TorchSaeCounter(dtype, saes, device, track_last, fire_above, compute, stats)
    return SaeCounter(dtype, saes, kernel, track_last, fire_above, stats)


__all__ = ["SaeCounter", "TorchSaeCounter", "sae_counter"]
