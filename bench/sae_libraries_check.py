"""By hand, not in the tests: nact's --sae counts against the SAE libraries' own encode.

Every case writes an SAE with random weights the way its library writes it (the library's own
save code, or its trainer's checkpointing, or a release's exact file layout where the weights come
from a download), scans one random cache with ``nact scan CACHE --sae [COMPONENT=]PATH -f json
--save-counts``, and compares nact's exact per-latent fire counts with the library's
``encode(x) > 0`` counted over the same vectors (20,000 vectors, d_in 64, d_sae 512).

Each case ends as one of:

- ``exact``: every latent's count equal;
- ``within rounding``: counts differ only by decisions that lie within float32 rounding of their
  boundary; the margin shown is the largest float64 distance from the boundary that explains the
  differences (for each differing latent, the |difference|-th closest of its decisions);
- ``DIFFERENT``: the worst latents, with nact's and the library's counts and that margin;
- ``refused``: nact's own one-line message (a family or architecture nact does not read yet);
- ``library-not-installed``: the library (or the version with that feature) is missing here;
- ``bench error``: the case itself failed (the exception's last line); the others still run.

The ``stats`` column compares nact's per-latent mean activation over the vectors a latent fired
on (``act_sums / fire_counts``) and its largest activation with the library's latents: the
largest relative difference, and the median ratio nact/library when they disagree (a library
that reports latents in another unit, such as dictionary_learning's ``normalize_decoder``, shows
there).

Cases:

- SAELens (``save_model``): standard, jumprelu, topk with and without
  ``rescale_acts_by_decoder_norm`` (decoder row norms 0.05 to 2), gated, abstopk, layer_norm,
  constant_norm_rescale, the four transcoders, a ``hook_z`` attention SAE on a
  ``[n, heads, d_head]`` cache; batchtopk and matryoshka_batchtopk training checkpoints (decoder
  norms 0.05 to 2; truth: the library's ``save_inference_model``, loaded and encoded) and those
  inference saves themselves; ``SAETrainer`` checkpoints taken during training:
  ``expected_average_only_in`` with ``activation_scaler.json`` (truth: ``encode`` of the scaled
  input) and without it (truth: ``encode`` of the raw input), a batchtopk one (truth: the trainer's
  own fold of the scale, then the inference save), ``covariance_whitening`` standard and topk
  (truth: ``encode`` of ``ActivationScaler.scale(x)``).
- sparsify (``save_to_disk``): topk, groupmax, a transcoder with a skip connection.
- dictionary_learning (``trainSAE`` with every trainer: Standard, StandardAprilUpdate, PAnneal,
  Gated, GatedAnneal, TopK, JumpRelu, BatchTopK, MatryoshkaBatchTopK, ``normalize_activations``
  on): the final ``ae.pt`` (truth: ``utils.load_dictionary``), ``checkpoints/ae_2.pt`` (truth:
  the class's ``from_pretrained``) and the in-run backup ``ae.pt`` of an interrupted run (truth:
  the class's ``encode`` of ``x / norm_factor``, the input it was training on).
- Gemma Scope 1 (``params.npz``: res, embedding, att on the ``[n, heads, d_head]`` cache,
  transcoder) and Gemma Scope 2 (``params.safetensors`` + ``config.json``: resid_post,
  transcoder, affine transcoder), written in the release layout; truth: SAELens' ``gemma_2`` /
  ``gemma_2_transcoder`` / ``gemma_3`` loaders run on the local folder (their Hub download
  swapped for the local path).
- Llama Scope (``hyperparams.json`` + ``checkpoints/final.safetensors``); truth: SAELens'
  ``llama_scope`` loader, then the fold ``SAE.from_pretrained`` does with the release's
  ``norm_scaling_factor``.
- OpenAI ``sparse_autoencoder`` (``{layer}.pt``: a v5 TopK file as released, the same saved with
  ``torch.save(ae.state_dict())``, a v1 ReLU file); truth: its ``model.py`` (``Autoencoder
  .from_state_dict`` then ``encode``), or, when no checkout is given, the float64 formulas of its
  encode.
- ai-safety-foundation ``sparse_autoencoder`` (``SparseAutoencoder.save``), run in its own venv
  (its package name is OpenAI's too); truth: ``SparseAutoencoder.load`` then ``forward``.

Set-up (scratch venvs outside the checkout; nact is the ``.venv`` of this checkout):

    python3 -m venv /tmp/libvenv
    /tmp/libvenv/bin/pip install torch==2.13.0     # first, or pip pulls a CUDA build of torch
    /tmp/libvenv/bin/pip install sae-lens eai-sparsify zstandard
    git clone https://github.com/saprmarks/dictionary_learning /tmp/dlsrc   # HEAD: has backups
    git clone https://github.com/openai/sparse_autoencoder /tmp/oaisrc      # only model.py is used
    python3 -m venv /tmp/asfvenv && /tmp/asfvenv/bin/pip install torch==2.13.0 && \\
        /tmp/asfvenv/bin/pip install sparse_autoencoder jaxtyping "transformer_lens<4"

    /tmp/libvenv/bin/python bench/sae_libraries_check.py               # every case, ~3 minutes
    /tmp/libvenv/bin/python bench/sae_libraries_check.py --only gemma  # cases whose name has it

``DICTIONARY_LEARNING_SRC``, ``OPENAI_SAE_SRC`` and ``ASF_PYTHON`` point elsewhere than those
defaults. dictionary_learning's PyPI release (0.1.0, ``pip install --no-deps
dictionary-learning``) also works, without backups; its ``nnsight`` (imported by its activation
buffers, not used here) is replaced by an empty module when it is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.machinery
import importlib.util
import inspect
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import types
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

os.environ.setdefault("TQDM_DISABLE", "1")
warnings.filterwarnings("ignore")

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import save_file

N, D_IN, D_SAE, K = 20000, 64, 512, 16
HEADS, D_HEAD = 4, 16
D_OUT = 48
HOOK = "blocks.4.hook_resid_post"
HOOK_Z = "blocks.4.attn.hook_z"
HOOK_OUT = "blocks.4.hook_mlp_out"
ROUNDING = 1e-5  # float64 distance from a boundary that float32 encodes may decide either way
CHUNK = 4096

CHECKOUT = Path(__file__).resolve().parent.parent
DL_SRC = Path(os.environ.get("DICTIONARY_LEARNING_SRC", "/tmp/dlsrc"))
OAI_SRC = Path(os.environ.get("OPENAI_SAE_SRC", "/tmp/oaisrc"))
ASF_PYTHON = os.environ.get("ASF_PYTHON", "/tmp/asfvenv/bin/python")


class NotInstalled(Exception):
    """The library, or the version of it with the feature a case needs, is not here."""


@dataclass
class Built:
    """What a case wrote and what its library says about it."""

    sae: str  # the --sae argument: PATH or COMPONENT=PATH
    cache: Path
    acts: torch.Tensor  # the library's latents, [N, d_sae]
    margins: Callable[[], torch.Tensor] | None  # float64 distance of each decision from its boundary
    notes: list[str] = field(default_factory=list)
    signed: bool = False  # latents of either sign: a latent fires when its value is not 0


@dataclass
class Case:
    name: str
    family: str
    build: Callable[[Path], Built]


@dataclass
class Row:
    name: str
    family: str
    result: str
    detail: str = ""
    stats: str = ""


# ---------------------------------------------------------------------------------------------
# data shared by every case

gen = torch.Generator().manual_seed(0)


def sample(n: int) -> torch.Tensor:
    """Vectors of varying norm (about 12), as the cache holds."""
    return torch.randn(n, D_IN, generator=gen) * (1 + torch.rand(n, 1, generator=gen))


X = sample(N)
X64 = X.double()
XZ = X.view(N, HEADS, D_HEAD)  # the same vectors as a hook_z cache, [n, heads, d_head]


def batches(n: int = 256) -> Any:
    while True:
        yield sample(n)


def write_caches(root: Path) -> dict[str, Path]:
    caches = {"resid": root / "cache", "z": root / "cache_z"}
    for folder in caches.values():
        folder.mkdir()
    save_file({HOOK: X.contiguous()}, str(caches["resid"] / "a.safetensors"))
    save_file({HOOK_Z: XZ.contiguous()}, str(caches["z"] / "a.safetensors"))
    return caches


def encode_all(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i : i + CHUNK]).float() for i in range(0, len(x), CHUNK)])


def unit_rows(rows: int, cols: int) -> torch.Tensor:
    w = torch.randn(rows, cols, generator=gen)
    return w / w.norm(dim=1, keepdim=True)


def far_norms(n: int) -> torch.Tensor:
    """Decoder norms far from 1."""
    return 0.05 + 1.95 * torch.rand(n, generator=gen)


# ---------------------------------------------------------------------------------------------
# float64 margins: how far each decision is from flipping


def margin_threshold(v: torch.Tensor, threshold: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Fires when v > max(threshold, 0) (relu, jumprelu, a threshold on post-relu values)."""
    bound = torch.clamp(torch.as_tensor(threshold, dtype=v.dtype), min=0)
    return (v - bound).abs()


def margin_gated(gate: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    fire = (gate > 0) & (mag > 0)
    off_both = (gate <= 0) & (mag <= 0)
    one = torch.where(gate <= 0, -gate, -mag)
    return torch.where(fire, torch.minimum(gate, mag), torch.where(off_both, torch.maximum(-gate, -mag), one))


def margin_topk(v: torch.Tensor, k: int, by_abs: bool = False) -> torch.Tensor:
    """Fires when among the top k (of |v| with by_abs) and v > 0."""
    r = v.abs() if by_abs else v
    top = r.topk(k + 1, dim=-1).values
    kth, next_ = top[:, k - 1 : k], top[:, k : k + 1]
    rank = torch.where(r >= kth, r - next_, kth - r)
    return torch.minimum(rank, v.abs())


def margin_groupmax(v: torch.Tensor, k: int) -> torch.Tensor:
    g = v.view(len(v), k, -1)
    top = g.topk(2, dim=-1).values
    rank = torch.where(g >= top[..., :1], g - top[..., 1:2], top[..., :1] - g)
    return torch.minimum(rank, g.abs()).view(len(v), -1)


# ---------------------------------------------------------------------------------------------
# SAELens


def saelens_margins(
    sae: Any, x64: torch.Tensor, scale: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """The deciding values, from the library's own input processing run in float64."""
    s = copy.deepcopy(sae).to(torch.float64)
    with torch.no_grad():
        u = s.process_sae_in(scale(x64) if scale else x64)
        arch = s.cfg.architecture()
        if arch == "gated":
            return margin_gated(u @ s.W_enc + s.b_gate, u @ (s.W_enc * s.r_mag.exp()) + s.b_mag)
        pre = u @ s.W_enc + s.b_enc
        if arch in ("topk", "abstopk"):
            if s.cfg.rescale_acts_by_decoder_norm:
                pre = pre * s.W_dec.norm(dim=-1)
            return margin_topk(pre, s.cfg.k, by_abs=arch == "abstopk")
        return margin_threshold(pre, s.threshold if hasattr(s, "threshold") else 0.0)


def randomize_saelens(sae: Any, dec_norms: bool = False) -> Any:
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "W_dec" and dec_norms:
                p.copy_(unit_rows(*p.shape) * far_norms(p.shape[0])[:, None])
            elif p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            elif name == "threshold":
                p.copy_(torch.rand(p.shape, generator=gen) * 0.5)
            elif name == "r_mag":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            elif p.shape[0] == D_SAE:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5 - 0.6)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return sae


def saelens() -> Any:
    try:
        import sae_lens
    except ImportError as e:
        raise NotInstalled(f"sae_lens: {e}") from e
    return sae_lens


def saelens_inference(
    arch: str, hook: str = HOOK, dec_norms: bool = False, cache: str = "resid", **cfg: Any
) -> Callable[[Path], Built]:
    def build(folder: Path) -> Built:
        sl = saelens()
        from sae_lens.registry import get_sae_class
        from sae_lens.saes.sae import SAEMetadata

        cls, cfg_cls = get_sae_class(arch)
        meta = (
            SAEMetadata(hook_name=hook, hook_name_out=HOOK_OUT) if "transcoder" in arch else SAEMetadata(hook_name=hook)
        )
        if "transcoder" in arch:
            cfg.update(d_out=D_OUT, apply_b_dec_to_input=False)
        randomize_saelens(cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=meta, **cfg)), dec_norms).save_model(folder)
        sae = sl.SAE.load_from_disk(folder)
        x = XZ if cache == "z" else X
        acts = encode_all(sae.encode, x)
        built = Built(str(folder), CACHES[cache], acts, lambda: saelens_margins(sae, x.double()))
        if arch == "abstopk":  # SAELens' own L0 counts its latents != 0
            built.signed = True
            built.notes.append(f"truth: encode(x) != 0 ({int((acts < 0).sum())} of its fires are negative)")
        return built

    return build


def saelens_batchtopk(arch: str, scan: str) -> Callable[[Path], Built]:
    """A training checkpoint (save_model) or its inference save; truth: the inference save."""

    def build(folder: Path) -> Built:
        sl = saelens()
        from sae_lens.registry import get_sae_training_class
        from sae_lens.saes.sae import SAEMetadata

        cls, cfg_cls = get_sae_training_class(arch)
        extra = {"matryoshka_widths": [128, 256, D_SAE]} if arch == "matryoshka_batchtopk" else {}
        training = randomize_saelens(
            cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, k=K, metadata=SAEMetadata(hook_name=HOOK), **extra)), dec_norms=True
        )
        training.topk_threshold = torch.tensor(2.0, dtype=torch.float64)
        training.save_model(folder / "checkpoint")
        training.save_inference_model(folder / "inference")
        sae = sl.SAE.load_from_disk(folder / "inference")
        return Built(str(folder / scan), CACHES["resid"], encode_all(sae.encode), lambda: saelens_margins(sae, X64))

    return build


def saelens_train(folder: Path, training: Any, lr: float = 1e-12) -> Path:
    """Runs SAELens' trainer for 8 steps with one checkpoint half way; the checkpoint's folder."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    config = SAETrainerConfig(
        total_training_samples=8 * 256,
        train_batch_size_samples=256,
        lr=lr,
        lr_end=lr,
        n_checkpoints=1,
        checkpoint_path=str(folder),
        n_batches_for_norm_estimate=20,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        SAETrainer(config, training, batches()).fit()
    (checkpoint,) = [p for p in folder.iterdir() if p.is_dir()]
    return checkpoint


def saelens_trained(arch: str, normalize: str, scaler_file: bool = True) -> Callable[[Path], Built]:
    def build(folder: Path) -> Built:
        sl = saelens()
        from sae_lens.registry import get_sae_training_class
        from sae_lens.saes.sae import SAEMetadata, TrainingSAE

        try:
            from sae_lens.training.activation_scaler import ActivationScaler
        except ImportError as e:
            raise NotInstalled(f"sae_lens {sl.__version__}: {e}") from e
        cls, cfg_cls = get_sae_training_class(arch)
        extra = {"k": K} if "topk" in arch else {}
        try:
            cfg = cfg_cls(
                d_in=D_IN, d_sae=D_SAE, normalize_activations=normalize, metadata=SAEMetadata(hook_name=HOOK), **extra
            )
        except ValueError as e:
            raise NotInstalled(f"sae_lens {sl.__version__}: {e}") from e
        training = randomize_saelens(cls(cfg), dec_norms="topk" in arch)
        if arch == "batchtopk":
            training.topk_threshold = torch.tensor(1.5, dtype=torch.float64)
        checkpoint = saelens_train(folder / "run", training)
        scaler = ActivationScaler()
        scaler.load(checkpoint / "activation_scaler.json")
        notes = [f"activation_scaler.json: {(checkpoint / 'activation_scaler.json').read_text()}"]
        if arch == "batchtopk":  # the trainer's end of training: fold the scale, save for inference
            trained = TrainingSAE.load_from_disk(checkpoint)
            trained.fold_activation_norm_scaling_factor(scaler.scaling_factor)
            trained.save_inference_model(folder / "inference")
            sae = sl.SAE.load_from_disk(folder / "inference")
            notes.append("truth: the folded model on x, whose latents are those of training divided by the scale")
            return Built(
                str(checkpoint), CACHES["resid"], encode_all(sae.encode), lambda: saelens_margins(sae, X64), notes
            )
        sae = sl.SAE.load_from_disk(checkpoint)
        if not scaler_file:
            bare = folder / "without_scaler"
            shutil.copytree(checkpoint, bare)
            for name in ("activation_scaler.json", "activation_whitening.safetensors"):
                (bare / name).unlink(missing_ok=True)
            return Built(
                str(bare),
                CACHES["resid"],
                encode_all(sae.encode),
                lambda: saelens_margins(sae, X64),
                ["truth: encode(x), unscaled"],
            )
        return Built(
            str(checkpoint),
            CACHES["resid"],
            encode_all(lambda x: sae.encode(scaler.scale(x))),
            lambda: saelens_margins(sae, X64, scaler.scale),
            notes,
        )

    return build


# ---------------------------------------------------------------------------------------------
# sparsify


def sparsify_case(**cfg: Any) -> Callable[[Path], Built]:
    def build(folder: Path) -> Built:
        try:
            from sparsify import SparseCoder, SparseCoderConfig
        except ImportError as e:
            raise NotInstalled(f"sparsify: {e}") from e
        coder = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=K, **cfg))
        with torch.no_grad():
            coder.encoder.weight.copy_(torch.randn(coder.encoder.weight.shape, generator=gen) * 0.3)
            coder.encoder.bias.copy_(torch.randn(D_SAE, generator=gen) * 0.5 - 0.6)
            coder.b_dec.copy_(torch.randn(D_IN, generator=gen) * 0.2)
            coder.W_dec.copy_(torch.randn(coder.W_dec.shape, generator=gen) * 0.3)
            if coder.W_skip is not None:
                coder.W_skip.copy_(torch.randn(coder.W_skip.shape, generator=gen) * 0.1)
        path = folder / HOOK
        coder.save_to_disk(path)
        coder = SparseCoder.load_from_disk(path)

        def encode(x: torch.Tensor) -> torch.Tensor:
            out = coder.encode(x)
            return torch.zeros(len(x), D_SAE).scatter_(1, out.top_indices, out.top_acts.float())

        def margins() -> torch.Tensor:
            w, b = coder.encoder.weight.double(), coder.encoder.bias.double()
            u = X64 if coder.cfg.transcode else X64 - coder.b_dec.double()
            pre = u @ w.T + b
            return margin_groupmax(pre, K) if coder.cfg.activation == "groupmax" else margin_topk(pre, K)

        return Built(str(path), CACHES["resid"], encode_all(encode), margins)

    return build


# ---------------------------------------------------------------------------------------------
# dictionary_learning

DL_TRAINERS = {  # tag: (module under trainers/, trainer class, the dict class it saves)
    "standard": ("standard", "StandardTrainer", "AutoEncoder"),
    "april": ("standard", "StandardTrainerAprilUpdate", "AutoEncoder"),
    "panneal": ("p_anneal", "PAnnealTrainer", "AutoEncoder"),
    "gated": ("gdm", "GatedSAETrainer", "GatedAutoEncoder"),
    "gated_anneal": ("gated_anneal", "GatedAnnealTrainer", "GatedAutoEncoder"),
    "topk": ("top_k", "TopKTrainer", "AutoEncoderTopK"),
    "jumprelu": ("jumprelu", "JumpReluTrainer", "JumpReluAutoEncoder"),
    "batchtopk": ("batch_top_k", "BatchTopKTrainer", "BatchTopKSAE"),
    "matryoshka": ("matryoshka_batch_top_k", "MatryoshkaBatchTopKTrainer", "MatryoshkaBatchTopKSAE"),
}
DL_STEPS, DL_SAVE_STEP, DL_BACKUP_STEP = 4, 2, 2


def dictionary_learning() -> Any:
    """The package, from an install or a checkout; nnsight (its buffers') stubbed when missing."""
    if importlib.util.find_spec("dictionary_learning") is None and DL_SRC.is_dir():
        sys.path.insert(0, str(DL_SRC))
    if importlib.util.find_spec("dictionary_learning") is None:
        raise NotInstalled(f"dictionary_learning: not installed and no checkout at {DL_SRC}")
    if importlib.util.find_spec("nnsight") is None:
        stub = types.ModuleType("nnsight")
        stub.__spec__ = importlib.machinery.ModuleSpec("nnsight", None)
        stub.LanguageModel = object  # type: ignore[attr-defined]
        sys.modules["nnsight"] = stub
    try:
        import dictionary_learning
        import dictionary_learning.training
        import dictionary_learning.utils
    except ImportError as e:
        raise NotInstalled(f"dictionary_learning: {e}") from e
    return dictionary_learning


def dl_classes() -> dict[str, type]:
    dictionary_learning()
    from dictionary_learning.dictionary import AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    classes = {
        c.__name__: c for c in (AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder, AutoEncoderTopK, BatchTopKSAE)
    }
    with contextlib.suppress(ImportError):
        from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE

        classes["MatryoshkaBatchTopKSAE"] = MatryoshkaBatchTopKSAE
    return classes


def randomize_dl(ae: torch.nn.Module) -> None:
    """Weights for the training-space input x / norm_factor (norm about 1)."""
    with torch.no_grad():
        for name, p in list(ae.named_parameters()) + list(ae.named_buffers()):
            if name in ("k", "group_sizes"):
                continue
            if name == "threshold":
                p.copy_(torch.full(p.shape, 0.4) if p.ndim == 0 else torch.rand(p.shape, generator=gen) * 0.5)
            elif name in ("decoder.weight", "W_dec"):  # decoder directions of norm 0.05 to 2
                dirs = unit_rows(D_SAE, D_IN) * far_norms(D_SAE)[:, None]
                p.copy_(dirs if p.shape == (D_SAE, D_IN) else dirs.T)
            elif p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name == "r_mag":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            elif p.shape[0] == D_SAE:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5 - 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


class Batches:
    """trainSAE's data: fresh batches; the training pass (after the norm estimate) can be cut off."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.interrupt_at = interrupt_at
        self.passes = 0

    def __iter__(self) -> Any:
        self.passes += 1
        cut = self.interrupt_at if self.passes > 1 else None
        for step, x in enumerate(batches()):
            if cut is not None and step == cut:
                raise KeyboardInterrupt("the run is cut off here, leaving its backup")
            yield x


_dl_runs: dict[str, Path] = {}


def dl_run(root: Path, interrupted: bool) -> Path:
    """One trainSAE run of every trainer: complete (final ae.pt, checkpoints/ae_2.pt) or cut off
    after its backup (ae.pt holding the backup)."""
    key = "interrupted" if interrupted else "complete"
    if key in _dl_runs:
        return _dl_runs[key]
    dictionary_learning()
    from dictionary_learning.training import trainSAE

    if interrupted and "backup_steps" not in inspect.signature(trainSAE).parameters:
        raise NotInstalled("this dictionary_learning's trainSAE has no backup_steps (PyPI 0.1.0; GitHub HEAD has)")
    gen.manual_seed(1 if interrupted else 2)  # the same weights whichever case starts the run
    configs = []
    for module_name, trainer_name, dict_name in DL_TRAINERS.values():
        module = importlib.import_module(f"dictionary_learning.trainers.{module_name}")
        trainer = getattr(module, trainer_name)
        base = dl_classes()[dict_name]
        accepted = inspect.signature(trainer.__init__).parameters

        def init(self: Any, *a: Any, _base: type = base, **kw: Any) -> None:
            _base.__init__(self, *a, **kw)
            randomize_dl(self)

        config = {
            "trainer": trainer,
            "dict_class": type(dict_name, (base,), {"__init__": init}),
            "steps": DL_STEPS,
            "activation_dim": D_IN,
            "dict_size": D_SAE,
            "layer": 4,
            "lm_name": "bench",
            "device": "cpu",
            "lr": 1e-12,
            "warmup_steps": 0,
            "sparsity_warmup_steps": 0,
            "submodule_name": HOOK,
            "k": K,
            "group_fractions": [0.25, 0.75],
            "seed": 0,
        }
        configs.append({k: v for k, v in config.items() if k == "trainer" or k in accepted})
    folder = root / f"dl_{key}"
    kwargs: dict[str, Any] = {"save_steps": [DL_SAVE_STEP]}
    if interrupted:
        kwargs = {"backup_steps": DL_BACKUP_STEP}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(KeyboardInterrupt):
        trainSAE(
            Batches(DL_BACKUP_STEP + 1 if interrupted else None),
            configs,
            steps=DL_STEPS,
            save_dir=str(folder),
            normalize_activations=True,
            device="cpu",
            **kwargs,
        )
    _dl_runs[key] = folder
    return folder


def dl_margins(ae: torch.nn.Module, x64: torch.Tensor) -> torch.Tensor:
    a = copy.deepcopy(ae).double()
    name = type(a).__name__
    with torch.no_grad():
        if name == "AutoEncoder":
            return margin_threshold(a.encoder(x64 - a.bias))
        if name == "GatedAutoEncoder":
            x_enc = a.encoder(x64 - a.decoder_bias)
            return margin_gated(x_enc + a.gate_bias, a.r_mag.exp() * x_enc + a.mag_bias)
        if name == "JumpReluAutoEncoder":
            u = x64 - a.b_dec if a.apply_b_dec_to_input else x64
            return margin_threshold(u @ a.W_enc + a.b_enc, a.threshold)
        if name == "AutoEncoderTopK":
            return margin_topk(a.encoder(x64 - a.b_dec), int(a.k))
        if name == "BatchTopKSAE":
            return margin_threshold(a.encoder(x64 - a.b_dec), a.threshold)
        if name == "MatryoshkaBatchTopKSAE":
            return margin_threshold((x64 - a.b_dec) @ a.W_enc + a.b_enc, a.threshold)
    raise ValueError(name)


def dl_case(tag: str, kind: str) -> Callable[[Path], Built]:
    def build(root: Path) -> Built:
        index = list(DL_TRAINERS).index(tag)
        dict_name = DL_TRAINERS[tag][2]
        run = dl_run(root.parent, interrupted=kind == "backup")
        trainer_dir = run / f"trainer_{index}"
        config = json.loads((trainer_dir / "config.json").read_text())
        sae_arg = str(trainer_dir)
        if "submodule_name" not in config["trainer"]:
            sae_arg = f"{HOOK}={trainer_dir}"
        import dictionary_learning.utils as dl_utils

        classes = dl_classes()
        cls = classes[dict_name]
        x, x64 = X, X64
        if kind == "final":
            ae, _ = dl_utils.load_dictionary(str(trainer_dir), "cpu")
        elif kind == "checkpoint":
            path = trainer_dir / "checkpoints" / f"ae_{DL_SAVE_STEP}.pt"
            sae_arg = str(path) if sae_arg == str(trainer_dir) else f"{HOOK}={path}"
            k = {"k": config["trainer"]["k"]} if "k" in config["trainer"] else {}
            ae = cls.from_pretrained(str(path), device="cpu", **k)  # as load_dictionary, on this file
        else:
            backup = torch.load(trainer_dir / "ae.pt", map_location="cpu", weights_only=False)
            if not isinstance(backup, dict) or "ae" not in backup:
                raise RuntimeError("ae.pt is not a backup (the run was not cut off)")
            state = backup["ae"]
            shape = {"k": int(state["k"])} if "k" in state else {}
            if "group_sizes" in state:
                shape["group_sizes"] = state["group_sizes"].tolist()
            ae = cls(D_IN, D_SAE, **shape)
            ae.load_state_dict(state)
            norm_factor = backup["norm_factor"]
            x, x64 = X / norm_factor, X64 / norm_factor
        ae.eval()
        notes = []
        if kind == "backup":
            notes.append(
                f"truth: encode(x / norm_factor), training-space latents; norm_factor {backup['norm_factor']:.4g}"
            )
        if dict_name == "AutoEncoder" and kind != "backup":
            notes.append("truth: from_pretrained(normalize_decoder=True)")
        return Built(sae_arg, CACHES["resid"], encode_all(ae.encode, x), lambda: dl_margins(ae, x64), notes)

    return build


# ---------------------------------------------------------------------------------------------
# Gemma Scope 1 and 2, Llama Scope: release layouts, truth from SAELens' loaders on the local folder


def local_hub(repos: dict[str, Path]) -> Any:
    """SAELens' pretrained loaders with their Hub reads answered from local folders."""
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from safetensors import safe_open

    def download(repo_id: str, filename: str | None = None, subfolder: str | None = None, **_: Any) -> str:
        path = repos[repo_id] / (subfolder or "") / (filename or "")
        if not path.exists():
            raise FileNotFoundError(path)
        return str(path)

    def shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
        with safe_open(str(repos[repo_id] / filename), "pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}

    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(loaders, "hf_hub_download", download))
    if hasattr(loaders, "get_safetensors_tensor_shapes"):
        stack.enter_context(mock.patch.object(loaders, "get_safetensors_tensor_shapes", shapes))
    return stack


def from_local_release(repo_id: str, repo: Path, folder: str, loader_name: str, **overrides: Any) -> Any:
    sl = saelens()
    from sae_lens.loading import pretrained_sae_loaders as loaders

    loader = getattr(loaders, loader_name, None)
    if loader is None:
        raise NotInstalled(f"sae_lens {sl.__version__} has no {loader_name}")

    def converter(
        repo_id: str, folder_name: str, device: str, force_download: bool, cfg_overrides: dict[str, Any] | None
    ) -> Any:
        return loader(repo_id, folder_name, device, force_download, {**(cfg_overrides or {}), **overrides})

    with local_hub({repo_id: repo}):
        return sl.SAE.from_pretrained(repo_id, folder, converter=converter)


def jumprelu_weights(d_out: int = D_IN) -> dict[str, np.ndarray]:
    return {
        "W_enc": (torch.randn(D_IN, D_SAE, generator=gen) * 0.3).numpy(),
        "W_dec": (torch.randn(D_SAE, d_out, generator=gen) * 0.3).numpy(),
        "b_enc": (torch.randn(D_SAE, generator=gen) * 0.5 - 0.6).numpy(),
        "b_dec": (torch.randn(d_out, generator=gen) * 0.2).numpy(),
        "threshold": (torch.rand(D_SAE, generator=gen) * 0.8 + 0.1).numpy(),
    }


def gemma1_case(repo: str, folder: str, cache: str = "resid", component: str = HOOK) -> Callable[[Path], Built]:
    def build(root: Path) -> Built:
        saelens()
        path = root / repo.split("/")[1] / folder
        path.mkdir(parents=True)
        np.savez(path / "params.npz", **jumprelu_weights())
        if "transcoders" in repo:
            sae = from_local_release(
                repo,
                root / repo.split("/")[1],
                folder,
                "gemma_2_transcoder_huggingface_loader",
                d_in=D_IN,
                d_out=D_IN,
                d_sae=D_SAE,
            )
        else:
            sae = from_local_release(
                repo, root / repo.split("/")[1], folder, "gemma_2_sae_huggingface_loader", d_in=D_IN, d_sae=D_SAE
            )
        x = XZ if cache == "z" else X
        notes = [
            f"SAELens: {sae.cfg.architecture()}, hook {sae.cfg.metadata.hook_name}, reshape {sae.cfg.reshape_activations}"
        ]
        return Built(
            f"{component}={path}",
            CACHES[cache],
            encode_all(sae.encode, x),
            lambda: saelens_margins(sae, x.double()),
            notes,
        )

    return build


def gemma2_case(repo: str, folder: str, kind: str, affine: bool = False) -> Callable[[Path], Built]:
    def build(root: Path) -> Built:
        saelens()
        repo_dir = root / repo.split("/")[1]
        path = repo_dir / folder
        path.mkdir(parents=True)
        w = jumprelu_weights()
        tensors = {k.lower(): torch.from_numpy(v).contiguous() for k, v in w.items()}
        if affine:
            tensors["affine_skip_connection"] = torch.randn(D_IN, D_IN, generator=gen) * 0.1
        save_file(tensors, str(path / "params.safetensors"))
        site = {"sae": ("model.layers.4.output", "model.layers.4.output")}.get(
            kind,
            ("model.layers.4.pre_feedforward_layernorm.output", "model.layers.4.post_feedforward_layernorm.output"),
        )
        config = {
            "width": 16384,
            "model_name": "google/gemma-3-4b-pt",
            "architecture": "jump_relu",
            "l0": 60,
            "affine_connection": affine,
            "type": kind,
            "hf_hook_point_in": site[0],
            "hf_hook_point_out": site[1],
        }
        (path / "config.json").write_text(json.dumps(config))
        sae = from_local_release(repo, repo_dir, folder, "gemma_3_sae_huggingface_loader")
        notes = [f"SAELens: {sae.cfg.architecture()}, hook {sae.cfg.metadata.hook_name}"]
        return Built(
            f"{HOOK}={path}", CACHES["resid"], encode_all(sae.encode), lambda: saelens_margins(sae, X64), notes
        )

    return build


def llama_scope_case(build_root: Path) -> Built:
    saelens()
    repo_id, folder = "fnlp/Llama3_1-8B-Base-LXR-8x", "Llama3_1-8B-Base-L4R-8x"
    repo = build_root / repo_id.split("/")[1]
    path = repo / folder
    (path / "checkpoints").mkdir(parents=True)
    norm_in = float(X.norm(dim=-1).mean())
    hyper = {
        "d_model": D_IN,
        "d_sae": D_SAE,
        "expansion_factor": D_SAE // D_IN,
        "hook_point_in": HOOK,
        "hook_point_out": HOOK,
        "use_decoder_bias": True,
        "apply_decoder_bias_to_pre_encoder": False,
        "act_fn": "jumprelu",
        "jump_relu_threshold": 0.75,
        "top_k": 50,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": norm_in, "out": norm_in},
        "sparsity_include_decoder_norm": True,
        "decoder_exactly_fixed_norm": False,
        "use_glu_encoder": False,
    }
    (path / "hyperparams.json").write_text(json.dumps(hyper))
    save_file(
        {
            "encoder.weight": torch.randn(D_SAE, D_IN, generator=gen) * 0.3,
            "encoder.bias": torch.randn(D_SAE, generator=gen) * 0.5 - 0.6,
            "decoder.weight": unit_rows(D_SAE, D_IN).T.contiguous(),  # unit-norm columns
            "decoder.bias": torch.randn(D_IN, generator=gen) * 0.2,
        },
        str(path / "checkpoints" / "final.safetensors"),
    )
    sae = from_local_release(repo_id, repo, folder, "llama_scope_sae_huggingface_loader")
    scale = D_IN**0.5 / norm_in  # the release's norm_scaling_factor, which from_pretrained folds
    sae.fold_activation_norm_scaling_factor(scale)
    notes = [f"truth: SAELens units (training-space magnitudes, s = {scale:.4g} times lm_saes' own)"]
    return Built(str(path), CACHES["resid"], encode_all(sae.encode), lambda: saelens_margins(sae, X64), notes)


# ---------------------------------------------------------------------------------------------
# OpenAI sparse_autoencoder


def openai_model() -> Any | None:
    path = OAI_SRC / "sparse_autoencoder" / "model.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("openai_sparse_autoencoder_model", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def openai_case(kind: str) -> Callable[[Path], Built]:
    """kind: topk (v5, as released), topk_state_dict (torch.save(ae.state_dict())), relu_v1."""

    def build(root: Path) -> Built:
        topk = kind.startswith("topk")
        family = "resid_post_mlp_v5_32k" if topk else "resid_delta_mlp"
        path = root / family / "autoencoders" / "4.pt"
        path.parent.mkdir(parents=True)
        weights = {
            "pre_bias": torch.randn(D_IN, generator=gen) * 0.2,
            "encoder.weight": torch.randn(D_SAE, D_IN, generator=gen) * 0.3,
            "latent_bias": torch.randn(D_SAE, generator=gen) * 0.5 - (0.2 if topk else 0.6),
            "decoder.weight": torch.randn(D_IN, D_SAE, generator=gen) * 0.3,
        }
        model = openai_model()
        notes = []
        if model is not None:
            activation = model.TopK(K) if topk else torch.nn.ReLU()
            ae = model.Autoencoder(D_SAE, D_IN, activation=activation, normalize=topk)
            ae.load_state_dict(weights, strict=False)
            state = ae.state_dict()
            if kind == "topk":  # the released files: no activation.* keys (from_state_dict is strict)
                state = {k: v for k, v in state.items() if not k.startswith("activation.")}
            elif kind == "relu_v1":  # v1 and v4 files name no activation
                state = {k: v for k, v in state.items() if not k.startswith("activation")}
            torch.save(state, path)
            loaded = torch.load(path, weights_only=True)
            if kind == "topk_state_dict":
                ae2 = model.Autoencoder.from_state_dict(loaded, strict=False)
                notes.append("from_state_dict(strict=True) refuses this file's activation.k/postact_fn keys")
            else:
                ae2 = model.Autoencoder.from_state_dict(loaded)
            acts = encode_all(lambda x: ae2.encode(x)[0])

            def margins() -> torch.Tensor:
                a = copy.deepcopy(ae2).double()
                with torch.no_grad():
                    pre = a.encode_pre_act(a.preprocess(X64)[0])
                return margin_topk(pre, K) if topk else margin_threshold(pre)

            return Built(f"{HOOK}={path}", CACHES["resid"], acts, margins, notes)
        # no checkout: the formulas of model.py (LN with the unbiased std, std + eps)
        state = {**weights, "stats_last_nonzero": torch.zeros(D_SAE, dtype=torch.int64)}
        if topk:
            state.update(activation="TopK", activation_state_dict={"k": K, "postact_fn": "ReLU"})
        torch.save(state, path)

        def pre64() -> torch.Tensor:
            x = X64
            if topk:
                xc = x - x.mean(-1, keepdim=True)
                x = xc / (xc.std(-1, keepdim=True) + 1e-5)
            w = {k: v.double() for k, v in weights.items()}
            return (x - w["pre_bias"]) @ w["encoder.weight"].T + w["latent_bias"]

        pre = pre64()
        top = pre.topk(K)
        acts = (torch.zeros_like(pre).scatter_(1, top.indices, top.values) if topk else pre).relu().float()
        notes.append(f"truth: model.py's formulas in float64 (no checkout at {OAI_SRC})")
        return Built(
            f"{HOOK}={path}",
            CACHES["resid"],
            acts,
            lambda: margin_topk(pre, K) if topk else margin_threshold(pre),
            notes,
        )

    return build


# ---------------------------------------------------------------------------------------------
# ai-safety-foundation sparse_autoencoder, in its own venv

ASF_SCRIPT = r"""
import os, sys, typing
import numpy as np, torch
import torch.serialization as ts, torch.optim.optimizer as to
# type aliases sparse_autoencoder 1.x imports that newer torch no longer has
if not hasattr(ts, "FILE_LIKE"):
    ts.FILE_LIKE = typing.Union[str, os.PathLike, typing.BinaryIO, typing.IO[bytes]]
if not hasattr(to, "params_t"):
    to.params_t = typing.Union[typing.Iterable[torch.Tensor], typing.Iterable[typing.Dict[str, typing.Any]]]
# its load is torch.load of a pickled pydantic object: the default before torch 2.6
_load = torch.load
torch.load = lambda *a, **k: _load(*a, **{"weights_only": False, **k})
from pathlib import Path
from sparse_autoencoder.autoencoder.model import SparseAutoencoder, SparseAutoencoderConfig
out, x_path, d_in, d_sae = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
g = torch.Generator().manual_seed(1)
m = SparseAutoencoder(SparseAutoencoderConfig(n_input_features=d_in, n_learned_features=d_sae))
sd = m.state_dict()
with torch.no_grad():
    sd["encoder.weight"].copy_(torch.randn(d_sae, d_in, generator=g) * 0.3)
    sd["encoder.bias"].copy_(torch.randn(d_sae, generator=g) * 0.5 - 0.6)
    sd["tied_bias"].copy_(torch.randn(d_in, generator=g) * 0.2)
    sd["decoder.weight"].copy_(torch.randn(d_in, d_sae, generator=g) * 0.3)
m.save(out / "run_final.pt")
loaded = SparseAutoencoder.load(out / "run_final.pt")
x = torch.from_numpy(np.load(x_path))
with torch.no_grad():
    acts = torch.cat([loaded(x[i:i + 4096]).learned_activations for i in range(0, len(x), 4096)])
np.save(out / "acts.npy", acts.numpy())
np.savez(out / "weights.npz", **{k.replace(".", "_"): v.numpy() for k, v in loaded.state_dict().items()})
"""


def asf_case(root: Path) -> Built:
    if not Path(ASF_PYTHON).exists():
        raise NotInstalled(f"no ai-safety-foundation venv at {ASF_PYTHON}")
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "x.npy", X.numpy())
    (root / "make.py").write_text(ASF_SCRIPT)
    done = subprocess.run(
        [ASF_PYTHON, str(root / "make.py"), str(root), str(root / "x.npy"), str(D_IN), str(D_SAE)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        if "No module named 'sparse_autoencoder'" in done.stderr:
            raise NotInstalled(last)
        raise RuntimeError(last)
    acts = torch.from_numpy(np.load(root / "acts.npy"))
    w = {k: torch.from_numpy(v).double() for k, v in np.load(root / "weights.npz").items()}
    return Built(
        f"{HOOK}={root / 'run_final.pt'}",
        CACHES["resid"],
        acts,
        lambda: margin_threshold((X64 - w["tied_bias"]) @ w["encoder_weight"].T + w["encoder_bias"]),
        ["pydantic SparseAutoencoderState pickle (SparseAutoencoder.save)"],
    )


# ---------------------------------------------------------------------------------------------
# the cases

CASES: list[Case] = [
    Case("saelens_standard", "SAELens", saelens_inference("standard")),
    Case("saelens_jumprelu", "SAELens", saelens_inference("jumprelu")),
    Case("saelens_topk", "SAELens", saelens_inference("topk", k=K)),
    Case(
        "saelens_topk_rescaled",
        "SAELens",
        saelens_inference("topk", dec_norms=True, k=K, rescale_acts_by_decoder_norm=True),
    ),
    Case("saelens_gated", "SAELens", saelens_inference("gated")),
    Case("saelens_abstopk", "SAELens", saelens_inference("abstopk", k=K)),
    Case("saelens_layer_norm", "SAELens", saelens_inference("standard", normalize_activations="layer_norm")),
    Case(
        "saelens_constant_norm", "SAELens", saelens_inference("jumprelu", normalize_activations="constant_norm_rescale")
    ),
    Case("saelens_batchtopk_ckpt", "SAELens", saelens_batchtopk("batchtopk", "checkpoint")),
    Case("saelens_batchtopk_inference", "SAELens", saelens_batchtopk("batchtopk", "inference")),
    Case("saelens_matryoshka_ckpt", "SAELens", saelens_batchtopk("matryoshka_batchtopk", "checkpoint")),
    Case("saelens_matryoshka_inference", "SAELens", saelens_batchtopk("matryoshka_batchtopk", "inference")),
    Case("saelens_scaled_ckpt", "SAELens", saelens_trained("standard", "expected_average_only_in")),
    Case(
        "saelens_scaled_ckpt_no_json",
        "SAELens",
        saelens_trained("standard", "expected_average_only_in", scaler_file=False),
    ),
    Case("saelens_scaled_batchtopk_ckpt", "SAELens", saelens_trained("batchtopk", "expected_average_only_in")),
    Case("saelens_whitening_ckpt", "SAELens", saelens_trained("standard", "covariance_whitening")),
    Case("saelens_whitening_topk_ckpt", "SAELens", saelens_trained("topk", "covariance_whitening")),
    Case("saelens_transcoder", "SAELens", saelens_inference("transcoder")),
    Case("saelens_skip_transcoder", "SAELens", saelens_inference("skip_transcoder")),
    Case("saelens_jumprelu_transcoder", "SAELens", saelens_inference("jumprelu_transcoder")),
    Case("saelens_jumprelu_skip_transcoder", "SAELens", saelens_inference("jumprelu_skip_transcoder")),
    Case(
        "saelens_hook_z", "SAELens", saelens_inference("standard", hook=HOOK_Z, cache="z", reshape_activations="hook_z")
    ),
    Case("sparsify_topk", "sparsify", sparsify_case()),
    Case("sparsify_groupmax", "sparsify", sparsify_case(activation="groupmax")),
    Case("sparsify_transcoder", "sparsify", sparsify_case(transcode=True, skip_connection=True)),
    *[
        Case(f"dl_{tag}_{kind}", "dictionary_learning", dl_case(tag, kind))
        for kind in ("final", "checkpoint", "backup")
        for tag in DL_TRAINERS
    ],
    Case("gemma1_res", "Gemma Scope", gemma1_case("google/gemma-scope-2b-pt-res", "layer_4/width_16k/average_l0_50")),
    Case(
        "gemma1_embedding",
        "Gemma Scope",
        gemma1_case("google/gemma-scope-2b-pt-res", "embedding/width_4k/average_l0_6"),
    ),
    Case(
        "gemma1_att",
        "Gemma Scope",
        gemma1_case("google/gemma-scope-2b-pt-att", "layer_4/width_16k/average_l0_50", cache="z", component=HOOK_Z),
    ),
    Case(
        "gemma1_transcoder",
        "Gemma Scope",
        gemma1_case("google/gemma-scope-2b-pt-transcoders", "layer_4/width_16k/average_l0_50"),
    ),
    Case(
        "gemma2_resid_post",
        "Gemma Scope 2",
        gemma2_case("google/gemma-scope-2-4b-pt", "resid_post/layer_4_width_16k_l0_small", "sae"),
    ),
    Case(
        "gemma2_transcoder",
        "Gemma Scope 2",
        gemma2_case("google/gemma-scope-2-4b-pt", "transcoder/layer_4_width_16k_l0_small", "transcoder"),
    ),
    Case(
        "gemma2_transcoder_affine",
        "Gemma Scope 2",
        gemma2_case(
            "google/gemma-scope-2-4b-pt", "transcoder/layer_4_width_16k_l0_small_affine", "transcoder", affine=True
        ),
    ),
    Case("llama_scope_r", "Llama Scope", llama_scope_case),
    Case("openai_v5_topk", "OpenAI", openai_case("topk")),
    Case("openai_v5_topk_state_dict", "OpenAI", openai_case("topk_state_dict")),
    Case("openai_v1_relu", "OpenAI", openai_case("relu_v1")),
    Case("asf_sparse_autoencoder", "ai-safety-foundation", asf_case),
]
CACHES: dict[str, Path] = {}


# ---------------------------------------------------------------------------------------------
# running nact and comparing


def run_nact(nact: str, built: Built, out: Path) -> tuple[dict[str, np.ndarray] | None, str, list[str]]:
    """nact's saved counts, or None and its message; and its warnings."""
    done = subprocess.run(
        [nact, "scan", str(built.cache), "--sae", built.sae, "-f", "json", "--save-counts", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("Error")]
        return None, (errors or lines or [f"exit {done.returncode}"])[-1], []
    found: list[str] = []
    with contextlib.suppress(json.JSONDecodeError):
        found = [str(w) for w in json.loads(done.stdout).get("warnings", [])]
    return load_numpy(str(out)), "", found


def compare(counts: dict[str, np.ndarray], built: Built) -> tuple[str, str, str]:
    key = next(k for k in counts if k.endswith("/fire_counts"))
    prefix = key[: -len("fire_counts")]
    nact = counts[key]
    acts = built.acts
    fired = acts != 0 if built.signed else acts > 0
    lib = fired.sum(0).numpy().astype(np.int64)
    if nact.shape != lib.shape:
        return "DIFFERENT", f"nact counted {nact.shape[0]} latents, the library {lib.shape[0]}", ""
    diff = nact - lib
    stats = compare_stats(counts.get(prefix + "act_sums"), counts.get(prefix + "act_max"), nact, acts, fired, lib)
    if built.signed:  # the same against the latents' magnitudes
        stats = f"signed: {stats}; |v|: {compare_stats(counts.get(prefix + 'act_sums'), counts.get(prefix + 'act_max'), nact, acts.abs(), fired, lib)}"
    if not diff.any():
        return "exact", "", stats
    differing = np.flatnonzero(diff)
    decisions = int(np.abs(diff).sum())
    summary = f"{len(differing)}/{D_SAE} latents, {decisions} of {N * D_SAE:,} decisions"
    if built.margins is None:
        return "DIFFERENT", summary + " (no float64 margin)", stats
    margins = built.margins().numpy()
    need = {int(j): float(np.sort(margins[:, j])[abs(int(diff[j])) - 1]) for j in differing}
    worst = max(need.values())
    if worst <= ROUNDING:
        return "within rounding", f"{summary}; margin {worst:.1e}", stats
    offenders = sorted(differing, key=lambda j: -abs(int(diff[j])))[:3]
    shown = ", ".join(f"latent {j}: nact {nact[j]} vs {lib[j]} (margin {need[int(j)]:.1e})" for j in offenders)
    return "DIFFERENT", f"{summary}; {shown}", stats


def compare_stats(
    sums: np.ndarray | None,
    maxes: np.ndarray | None,
    nact: np.ndarray,
    acts: torch.Tensor,
    fired: torch.Tensor,
    lib: np.ndarray,
) -> str:
    if sums is None or maxes is None:
        return ""
    both = (nact > 0) & (nact == lib)  # a latent whose count differs has another mean
    if not both.any():
        return "no latent fired"
    lib_mean = (torch.where(fired, acts.double(), 0).sum(0).numpy() / np.maximum(lib, 1))[both]
    lib_max = torch.where(fired, acts.double(), -math.inf).max(0).values.numpy()[both]
    nact_mean, nact_max = (sums / np.maximum(nact, 1))[both], maxes[both]

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))

    shown = f"mean {rel(nact_mean, lib_mean):.0e}, max {rel(nact_max, lib_max):.0e}"
    if max(rel(nact_mean, lib_mean), rel(nact_max, lib_max)) > 1e-3:
        shown += f" (nact/library median {float(np.median(nact_mean / lib_mean)):.4g})"
    return shown


def run_case(case: Case, root: Path, nact: str) -> Row:
    folder = root / case.name
    folder.mkdir()
    gen.manual_seed(zlib.crc32(case.name.encode()))  # a case's weights do not depend on which cases ran
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # libraries that print as they load
            built = case.build(folder)
    except NotInstalled as e:
        return Row(case.name, case.family, "library-not-installed", str(e))
    except Exception as e:  # one case's failure is reported, the others still run
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        return Row(case.name, case.family, "bench error", last[:300])
    counts, refusal, found = run_nact(nact, built, folder / "counts.safetensors")
    notes = list(built.notes) + [f"nact warns: {w}" for w in found]
    if counts is None:
        return Row(case.name, case.family, "refused", refusal)
    try:
        result, detail, stats = compare(counts, built)
    except Exception as e:
        return Row(case.name, case.family, "bench error", traceback.format_exception_only(type(e), e)[-1].strip())
    detail = "; ".join(part for part in [detail, *notes] if part)
    return Row(case.name, case.family, result, detail, stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="run the cases whose name contains this")
    parser.add_argument("--nact", default=str(CHECKOUT / ".venv" / "bin" / "nact"), help="the nact to check")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (its path is printed)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nact-sae-check-"))
    CACHES.update(write_caches(root))
    cases = [c for c in CASES if not args.only or any(s in c.name for s in args.only)]
    versions = []
    for name in ("sae_lens", "sparsify", "dictionary_learning"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions.append(f"{name} {version(name.replace('_', '-') if name != 'sparsify' else 'eai-sparsify')}")
    print(
        f"nact: {args.nact}; torch {torch.__version__}; {', '.join(versions)}; {N:,} vectors, d_in {D_IN}, d_sae {D_SAE}"
    )
    rows = []
    width = max(len(c.name) for c in cases)
    for case in cases:
        row = run_case(case, root, args.nact)
        rows.append(row)
        print(f"{row.name:{width}s}  {row.result:21s}  {row.stats:34s}  {row.detail}", flush=True)
    tally: dict[str, int] = {}
    for row in rows:
        tally[row.result] = tally.get(row.result, 0) + 1
    print("\n" + ", ".join(f"{v} {k}" for k, v in sorted(tally.items())))
    if args.keep:
        print(f"scratch: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
