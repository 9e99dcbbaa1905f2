"""An SAE as nact encodes with it: its encoder's weights in float32 and one of a few rules that
turn a pre-activation into a latent (see the package's docstring for each rule)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np

Rule = Literal["relu", "tanh-relu", "jumprelu", "threshold", "topk", "abstopk", "groupmax", "gated"]
RULES: tuple[str, ...] = get_args(Rule)
Normalization = Literal["none", "constant_norm_rescale", "layer_norm"]  # applied per vector when encoding
Reshape = Literal["none", "hook_z"]  # hook_z: a [..., heads, d_head] component is encoded as [..., heads * d_head]


@dataclass(frozen=True, eq=False)
class Sae:
    """One SAE's encoder in float32, as a rule of the module's docstring."""

    path: Path
    library: str
    architecture: str  # as the library names it
    rule: Rule
    hook: str | None  # the component it encodes, as its library names it (None: it names none)
    d_in: int
    d_sae: int
    weight: np.ndarray  # [d_in, d_sae] (may be a transposed view)
    bias: np.ndarray  # [d_sae] (gated: the gate bias)
    center: np.ndarray | None = None  # subtracted from the input (the decoder bias) before encoding
    scale: float | None = None  # the input is multiplied by it first (a stored scaling factor)
    normalize: Normalization = "none"  # run-time, per vector
    threshold: np.ndarray | None = None  # jumprelu: [d_sae]; threshold: [1]
    k: int | None = None
    pre_scale: np.ndarray | None = None  # h is multiplied by it before the rule (SAELens' decoder row norms)
    post_scale: np.ndarray | None = None  # the latents are multiplied by it after the rule (decoder norms)
    mag_scale: np.ndarray | None = None  # gated: exp(r_mag)
    mag_bias: np.ndarray | None = None  # gated
    reshape: Reshape = "none"
    hook_aliases: tuple[str, ...] = ()  # other names of its hook (a Hugging Face module path, ...)
    fingerprint: str = ""  # SHA-256 of the encoder as nact uses it: which SAE made a count
    notes: tuple[str, ...] = ()  # what a scan with it should say (how nact read something the checkpoint left open)

    def with_fingerprint(self) -> Sae:
        """This SAE with its fingerprint: the rule, its numbers and every array it encodes with."""
        parts = [repr((self.rule, self.d_in, self.d_sae, self.k, self.scale, self.normalize, self.reshape)).encode()]
        arrays = (self.weight, self.bias, self.center, self.threshold, self.pre_scale, self.post_scale)
        for a in (*arrays, self.mag_scale, self.mag_bias):
            parts.append(b"-" if a is None else np.ascontiguousarray(a, np.float32).tobytes())
        return replace(self, fingerprint=hashlib.sha256(b"|".join(parts)).hexdigest())

    @property
    def name(self) -> str:
        """The SAE's name when it is the only one: its folder, with the run's folder for
        sparsify (whose folders are named after their hooks). See ``load.load_saes``."""
        return "/".join(self.path.parts[-self.name_parts :])

    @property
    def name_parts(self) -> int:
        """The fewest trailing parts of its path that name it."""
        return 2 if self.library == "sparsify" and self.path.parent.name else 1

    def describe(self) -> str:
        """The encode as one line (for inspect and the JSON)."""
        steps = []
        if self.reshape == "hook_z":
            steps.append("x [..., heads, d_head] as [..., heads * d_head]")
        if self.scale is not None:
            steps.append(f"x * {self.scale:g}")
        if self.normalize != "none":
            steps.append(self.normalize)
        if self.center is not None:
            steps.append("x - b_dec")
        rule = {
            "relu": "relu(h)",
            "tanh-relu": "tanh(relu(h))",
            "jumprelu": "relu(h) where h > threshold",
            "threshold": f"relu(h) where relu(h) > {float(self.threshold[0]) if self.threshold is not None else 0:g}",
            "topk": f"top {self.k} of h, relu",
            "abstopk": f"|h| of the top {self.k} by |h| (the sign dropped)",
            "groupmax": f"max of each of {self.k} groups, relu",
            "gated": "relu(h * exp(r_mag) + b_mag) where h + b_gate > 0",
        }[self.rule]
        h = "h = (x @ W_enc + b) * |W_dec|" if self.pre_scale is not None else "h = x @ W_enc + b"
        after = [] if self.post_scale is None else ["times |W_dec|"]
        return f"{self.library} {self.architecture}: " + ", ".join(steps + [f"{h}, {rule}"] + after)

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "library": self.library,
            "architecture": self.architecture,
            "hook": self.hook,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "encode": self.describe(),
            "fingerprint": self.fingerprint,
        }
