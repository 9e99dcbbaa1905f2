"""Counting an SAE's latents: each chunk of a component's activations encoded, its latents
counted by the ordinary counter of the device, and per latent the sum of its activation where
it fires and its largest activation kept beside the fire counts."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

from ..counting import make_counter
from ..dtypes import fire_rule, to_float32
from ..torch_counting import TorchCounter, fire_mask
from .encode import NumpyEncoder, TorchEncoder, batch_rows
from .model import Sae


class SaeCounter:
    """Encodes chunks of one component's activations with its SAEs and counts the latents: fires,
    NaNs (and last fired), and, per latent, the sum of its activation where it fires and its
    largest activation. Follows the ``counters.Counter`` protocol; ``result`` holds the SAEs'
    latents one after another."""

    name = "sae"

    def __init__(
        self,
        dtype: str,
        saes: list[Sae],
        device: str,
        kernel: str | None,
        track_last: bool,
        fire_above: Fraction,
        compute: str = "float32",
    ) -> None:
        self.dtype, self.device = dtype, device
        self.on_torch = device != "cpu" or kernel == "torch"  # kernel torch: the device path, on the cpu
        self.rule = fire_rule("F32", fire_above)
        self.saes = saes
        self.step = min(batch_rows(s) for s in saes)
        # Every rule's latents are >= 0 (or NaN): at fire_above <= 0 a latent that does not fire is
        # 0 and adds nothing, so the sum over the vectors it fired on is the sum of its values;
        # above 0, values up to the largest float32 <= fire_above (``below``) are left out.
        ranges = self.rule.fire_ranges
        self.below = None
        if self.rule.fire_above > 0:
            self.below = np.array([ranges[0][0] - 1 if ranges else 0x7F800000], np.uint32).view(np.float32)[0]
        if not self.on_torch:
            self.encoders: list[Any] = [NumpyEncoder(s) for s in saes]
            self.counters: list[Any] = [make_counter(self.rule, s.d_sae, "cpu", kernel, track_last) for s in saes]
            self.sums = [np.zeros(s.d_sae, np.float64) for s in saes]
            self.maxima = [np.full(s.d_sae, -np.inf, np.float64) for s in saes]
        else:
            import torch

            self.torch = torch
            self.counters = [TorchCounter(self.rule, s.d_sae, device, track_last) for s in saes]
            where = self.counters[0].device
            self.encoders = [TorchEncoder(s, where, compute) for s in saes]
            self.sums = [torch.zeros(s.d_sae, dtype=torch.float64, device=where) for s in saes]
            self.maxima = [torch.full((s.d_sae,), -math.inf, dtype=torch.float64, device=where) for s in saes]

        self.name = f"sae+{self.counters[0].name}"  # the kernel that counts the latents

    def update(self, bits: np.ndarray, first_vector: int = 0) -> None:
        if not self.on_torch:
            x = to_float32(bits, self.dtype)
            for start in range(0, x.shape[0], self.step):
                self._update_cpu(x[start : start + self.step], first_vector + start)
        else:
            for start in range(0, bits.shape[0], self.step):
                self._update_device(bits[start : start + self.step], first_vector + start)

    def _update_cpu(self, x: np.ndarray, first_vector: int) -> None:
        for encoder, counter, sums, maxima in zip(self.encoders, self.counters, self.sums, self.maxima):
            latents = encoder.encode(x)
            counter.update(latents.view(np.uint32), first_vector)
            if np.isnan(latents[:, 0]).any():  # a vector with a NaN input has NaN latents only
                latents = latents[~np.isnan(latents[:, 0])]
            fired = latents if self.below is None else np.where(latents > self.below, latents, np.float32(0))
            sums += np.ones(len(latents), np.float32) @ fired  # float32 within a batch, float64 across
            if len(latents):
                np.fmax(maxima, latents.max(axis=0), out=maxima)

    def _update_device(self, bits: np.ndarray, first_vector: int) -> None:
        torch = self.torch
        view = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}[self.dtype]
        ranges = self.rule.signed_fire_ranges()
        with self.counters[0].on_device(bits) as raw:
            x = raw.view(view).float()
            for encoder, counter, sums, maxima in zip(self.encoders, self.counters, self.sums, self.maxima):
                latents = encoder.encode(x)
                latent_bits = latents.view(torch.int32)
                counter.count_bits(latent_bits, first_vector)
                fires = fire_mask(latent_bits, ranges)
                sums += torch.where(fires, latents, 0.0).sum(dim=0, dtype=torch.float64)
                torch.fmax(maxima, torch.nan_to_num(latents, nan=-math.inf).amax(dim=0).double(), out=maxima)

    def result(self) -> dict[str, np.ndarray]:
        parts = [c.result() for c in self.counters]
        out = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        to_host = (lambda a: a.cpu().numpy()) if self.on_torch else (lambda a: a)
        out["act_sums"] = np.concatenate([to_host(s) for s in self.sums])
        out["act_max"] = np.concatenate([to_host(m) for m in self.maxima])
        return out
