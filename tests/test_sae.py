"""SAE latents (--sae): random SAEs of every architecture saved in each library's own layout,
encoded by the float64 reference of ``sae_checkpoints`` (the libraries' formulas), compared per
latent."""

from __future__ import annotations

import json
import os
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from sae_checkpoints import (
    D_IN,
    D_SAE,
    DEAD,
    HOOK,
    ROWS,
    activations,
    base_weights,
    cache,
    expected_counts,
    f32,
    near_boundary,
    reference,
    rng_for,
)
from safetensors.numpy import save_file
from typer.testing import CliRunner

from nact_cli.main import app
from neuron_activity import scan
from neuron_activity.sae import NumpyEncoder, load_sae

runner = CliRunner()
WHITENING = "activation_whitening.safetensors"


def nact(*args: object):
    return runner.invoke(app, [str(a) for a in args])


# ----------------------------------------------------------------------------- checkpoints


def saelens(folder: Path, architecture: str, seed: int = 0, version: str = "6", **cfg_extra: object) -> dict:
    """A SAELens checkpoint (cfg.json + sae_weights.safetensors) and its reference description."""
    rng = rng_for(seed)
    w = base_weights(rng)
    tensors = {"W_enc": w["W"], "b_dec": w["b_dec"], "W_dec": w["W_dec"]}
    arch: dict = {"weights": dict(w), "center": "b_dec", "rule": "relu"}
    if architecture == "gated":
        extra = {
            "b_gate": f32(np.r_[np.full(DEAD, -30.0), rng.standard_normal(D_SAE - DEAD) * 0.5]),
            "b_mag": f32(rng.standard_normal(D_SAE) * 0.5 - 0.3),
            "r_mag": f32(rng.standard_normal(D_SAE) * 0.3),
        }
        tensors.update(extra)
        arch["weights"].update(extra)
        arch["rule"] = "gated"
    else:
        tensors["b_enc"] = w["b"]
    if architecture in ("jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder"):
        tensors["threshold"] = arch["weights"]["threshold"] = f32(rng.random(D_SAE) * 0.6)
        arch["rule"] = "jumprelu"
    if architecture.endswith("transcoder"):  # its output is another hook's, of d_out features
        tensors["W_dec"] = f32(rng.standard_normal((D_SAE, 2 * D_IN)))
        tensors["b_dec"] = f32(rng.standard_normal(2 * D_IN))
        if "skip" in architecture:
            tensors["W_skip"] = f32(rng.standard_normal((2 * D_IN, D_IN)))
        arch["center"] = None
    if architecture in ("batchtopk", "matryoshka_batchtopk"):  # a training checkpoint
        norms = 0.05 + 1.95 * rng.random(D_SAE)  # decoder rows far from unit norm, as in training
        w_dec = w["W_dec"] / np.linalg.norm(w["W_dec"], axis=1, keepdims=True) * norms[:, None]
        tensors["W_dec"] = arch["weights"]["W_dec"] = f32(w_dec)
        threshold = float(np.float32(0.45))
        tensors["topk_threshold"] = np.array(threshold, np.float64)  # SAELens keeps it in double
        arch["weights"]["threshold"] = np.full(D_SAE, threshold)
        rescale = cfg_extra.get("rescale_acts_by_decoder_norm", True)  # the training default
        arch.update(rule="jumprelu", decoder_norm=rescale)
    if architecture in ("topk", "abstopk"):
        k = cfg_extra.get("k", 7)
        arch.update(rule=architecture, k=k, decoder_norm=cfg_extra.get("rescale_acts_by_decoder_norm"))
    cfg: dict = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "apply_b_dec_to_input": True}
    if version == "6":
        cfg.update(
            architecture=architecture,
            normalize_activations="none",
            reshape_activations="none",
            metadata={"hook_name": HOOK, "sae_lens_version": "6.5.1", "model_name": "gpt2"},
        )
        if architecture.endswith("transcoder"):
            cfg.update(d_out=2 * D_IN, apply_b_dec_to_input=False)
            cfg["metadata"]["hook_name_out"] = "blocks.3.hook_mlp_out"
    elif version == "4":  # 4.x: hook_point, activation_fn_str, a topk SAE named by its activation only
        cfg.update(hook_point=HOOK, normalize_activations=None)
        if architecture == "topk":
            cfg.update(activation_fn_str="topk", activation_fn_kwargs={"k": cfg_extra.pop("k", 7)})
    else:  # 5.x: the hook at the top, no architecture unless it is not standard
        cfg.update(hook_name=HOOK, sae_lens_version="5.9.0", normalize_activations=False)
        if architecture != "standard":
            cfg["architecture"] = architecture
    if cfg_extra.get("apply_b_dec_to_input") is False:
        arch["center"] = None
    cfg.update(cfg_extra)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    if cfg.get("normalize_activations") == "covariance_whitening":  # a training checkpoint's whitening
        mean = rng.standard_normal(D_IN) * 0.3
        q, _ = np.linalg.qr(rng.standard_normal((D_IN, D_IN)))
        matrix = q * (0.5 + rng.random(D_IN))  # E diag(lambda + eps)^-1/2, as SAELens estimates it
        save_file({"mean": mean, "matrix": matrix, "inverse_matrix": np.linalg.inv(matrix)}, str(folder / WHITENING))
        (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": None, "has_whitening": True}))
        arch["whiten"] = (mean, matrix)
    return arch


def saelens_inference(training: Path, folder: Path) -> None:
    """What SAELens' ``save_inference_model`` writes for a BatchTopK training checkpoint: the
    decoder norms folded into W_enc and b_enc (W_dec made unit norm), the learned threshold a
    JumpReLU threshold per latent, the architecture jumprelu."""
    from safetensors.numpy import load_file

    t = {k: v.astype(np.float64) for k, v in load_file(str(training / "sae_weights.safetensors")).items()}
    cfg = json.loads((training / "cfg.json").read_text())
    if cfg.get("rescale_acts_by_decoder_norm", True):
        norms = np.linalg.norm(t["W_dec"], axis=1)
        t["W_enc"], t["b_enc"], t["W_dec"] = t["W_enc"] * norms, t["b_enc"] * norms, t["W_dec"] / norms[:, None]
    t["threshold"] = np.full(D_SAE, float(t.pop("topk_threshold")))
    for key in ("k", "rescale_acts_by_decoder_norm", "topk_threshold_lr"):
        cfg.pop(key, None)
    cfg["architecture"] = "jumprelu"
    folder.mkdir(parents=True)
    save_file({k: f32(v) for k, v in t.items()}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))


def sparsify(folder: Path, activation: str = "topk", k: int = 6, seed: int = 1, transcode: bool = False) -> dict:
    rng = rng_for(seed)
    w = base_weights(rng)
    folder.mkdir(parents=True)
    save_file(
        {"encoder.weight": f32(w["W"].T), "encoder.bias": w["b"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]},
        str(folder / "sae.safetensors"),
    )
    cfg = {
        "activation": activation,
        "expansion_factor": 4,
        "normalize_decoder": True,
        "num_latents": D_SAE,
        "k": k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": transcode,
        "d_in": D_IN,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return {"weights": w, "center": None if transcode else "b_dec", "rule": activation, "k": k}


def dictionary_learning(
    folder: Path,
    dict_class: str,
    seed: int = 2,
    k: int = 5,
    threshold: float = 0.3,
    file: str = "ae.pt",
    norm_factor: float | None = None,
) -> dict:
    """A dictionary_learning run's folder (config.json) and its weights in ``file``: the final
    ``ae.pt``, a ``checkpoints/ae_<step>.pt``, or (with ``norm_factor``) the in-run backup whose
    weights expect the inputs divided by it."""
    rng = rng_for(seed)
    w = base_weights(rng)
    t = {key: torch.from_numpy(v) for key, v in w.items()}
    arch: dict = {"weights": dict(w), "center": "b_dec", "rule": "relu"}
    if dict_class == "AutoEncoder":  # from_pretrained multiplies the latents by the decoder's column norms
        arch["post_scale"] = np.linalg.norm(w["W_dec"].astype(np.float64), axis=1)
        state = OrderedDict(
            bias=t["b_dec"],
            **{
                "encoder.weight": t["W"].T.contiguous(),
                "encoder.bias": t["b"],
                "decoder.weight": t["W_dec"].T.contiguous(),
            },
        )
    elif dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        state = OrderedDict(
            k=torch.tensor(k, dtype=torch.int32),
            threshold=torch.tensor(threshold),
            **{
                "decoder.weight": t["W_dec"].T.contiguous(),
                "encoder.weight": t["W"].T.contiguous(),
                "encoder.bias": t["b"],
            },
            b_dec=t["b_dec"],
        )
        arch.update(rule="topk", k=k) if dict_class == "AutoEncoderTopK" else arch.update(rule="threshold")
        arch["weights"]["threshold"] = np.float32(threshold)
    elif dict_class == "AutoEncoderNew":
        state = OrderedDict(
            **{
                "encoder.weight": t["W"].T.contiguous(),
                "encoder.bias": t["b"],
                "decoder.weight": t["W_dec"].T.contiguous(),
                "decoder.bias": t["b_dec"],
            }
        )
        arch["center"] = None
    elif dict_class == "JumpReluAutoEncoder":
        thr = f32(rng.random(D_SAE) * 0.5)
        state = OrderedDict(
            W_enc=t["W"], b_enc=t["b"], W_dec=t["W_dec"], b_dec=t["b_dec"], threshold=torch.from_numpy(thr)
        )
        arch.update(rule="jumprelu", center=None)  # apply_b_dec_to_input is False by default there
        arch["weights"]["threshold"] = thr
    elif dict_class == "GatedAutoEncoder":
        extra = {
            "gate_bias": f32(np.r_[np.full(DEAD, -30.0), rng.standard_normal(D_SAE - DEAD) * 0.5]),
            "mag_bias": f32(rng.standard_normal(D_SAE) * 0.5 - 0.3),
            "r_mag": f32(rng.standard_normal(D_SAE) * 0.3),
        }
        state = OrderedDict(
            decoder_bias=t["b_dec"],
            **{"encoder.weight": t["W"].T.contiguous()},
            **{n: torch.from_numpy(v) for n, v in extra.items()},
            **{"decoder.weight": t["W_dec"].T.contiguous()},
        )
        arch.update(rule="gated")
        arch["weights"].update(b_gate=extra["gate_bias"], b_mag=extra["mag_bias"], r_mag=extra["r_mag"])
    else:
        raise AssertionError(dict_class)
    if norm_factor is not None:  # its inputs divided by the factor; the final ae.pt's latents are times it
        arch["scale"] = 1 / norm_factor
        arch["post_scale"] = arch.get("post_scale", 1.0) * norm_factor
        state = {
            "step": 300,
            "ae": state,
            "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
            "config": {"dict_class": dict_class, "k": k},
            "norm_factor": norm_factor,
        }
    (folder / file).parent.mkdir(parents=True)
    torch.save(state, folder / file)
    cfg = {
        "trainer": {
            "dict_class": dict_class,
            "activation_dim": D_IN,
            "dict_size": D_SAE,
            "k": k,
            "lr": 1e-4,
            "submodule_name": HOOK,
            "layer": 3,
            "lm_name": "gpt2",
        },
        "buffer": {"d_submodule": D_IN},
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    return arch


def gemma_scope(folder: Path, seed: int = 18) -> dict:
    """A Gemma Scope SAE as the release lays it out: params.npz, no config, no hook named."""
    rng = rng_for(seed)
    w = base_weights(rng)
    threshold = f32(rng.random(D_SAE) * 0.6)
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", W_enc=w["W"], W_dec=w["W_dec"], b_enc=w["b"], b_dec=w["b_dec"], threshold=threshold)
    arch: dict = {"weights": {**w, "threshold": threshold}, "center": None, "rule": "jumprelu", "hook": None}
    if "embedding" in str(folder):  # trained on embeddings times sqrt(d_in): SAELens divides W_enc by it
        arch["scale"] = 1 / np.sqrt(D_IN)
    return arch


def gemma_scope_2(folder: Path, seed: int = 20, site: str = "model.layers.3.output", kind: str = "sae") -> dict:
    """A Gemma Scope 2 SAE or transcoder: params.safetensors (lower-case names), config.json."""
    rng = rng_for(seed)
    w = base_weights(rng)
    threshold = f32(rng.random(D_SAE) * 0.6)
    folder.mkdir(parents=True)
    tensors = {"w_enc": w["W"], "w_dec": w["W_dec"], "b_enc": w["b"], "b_dec": w["b_dec"], "threshold": threshold}
    if kind == "transcoder":
        tensors["affine_skip_connection"] = f32(rng.standard_normal((D_IN, D_IN)))
    save_file(tensors, str(folder / "params.safetensors"))
    out = site.replace("pre_feedforward", "post_feedforward")
    cfg = {
        "width": D_SAE,
        "model_name": "google/gemma-3-1b-pt",
        "architecture": "jump_relu",
        "l0": 20,
        "affine_connection": kind == "transcoder",
        "type": kind,
        "hf_hook_point_in": site,
        "hf_hook_point_out": out,
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    arch = {"weights": {**w, "threshold": threshold}, "center": None, "rule": "jumprelu"}
    return arch if site == "model.layers.3.output" else {**arch, "hook": None}  # the tests' cache has no other hook


def llama_scope(folder: Path, seed: int = 21, unit_decoder: bool = True, norm: str = "dataset-wise") -> dict:
    """A Llama Scope SAE as released: hyperparams.json and checkpoints/final.safetensors, trained on
    inputs scaled to an average norm of sqrt(d_model), one JumpReLU threshold for every latent."""
    rng = rng_for(seed)
    w = base_weights(rng)
    if unit_decoder:
        w["W_dec"] = f32(w["W_dec"] / np.linalg.norm(w["W_dec"], axis=1, keepdims=True))
    average, theta = 3.5, 0.15
    (folder / "checkpoints").mkdir(parents=True)
    tensors = {
        "encoder.weight": f32(w["W"].T),
        "encoder.bias": w["b"],
        "decoder.weight": f32(w["W_dec"].T),
        "decoder.bias": w["b_dec"],
    }
    save_file(tensors, str(folder / "checkpoints" / "final.safetensors"))
    cfg = {
        "d_model": D_IN,
        "d_sae": D_SAE,
        "expansion_factor": D_SAE // D_IN,
        "hook_point_in": HOOK,
        "hook_point_out": HOOK,
        "use_decoder_bias": True,
        "apply_decoder_bias_to_pre_encoder": False,
        "act_fn": "jumprelu",
        "jump_relu_threshold": theta,
        "top_k": 50,
        "norm_activation": norm,
        "dataset_average_activation_norm": {"in": average, "out": average},
        "sparsity_include_decoder_norm": True,
        "use_glu_encoder": False,
        "lp": 1,
    }
    (folder / "hyperparams.json").write_text(json.dumps(cfg))
    s = np.sqrt(D_IN) / average if norm == "dataset-wise" else 1.0
    arch = {"weights": {**w, "threshold": np.full(D_SAE, theta * s)}, "center": None, "rule": "jumprelu", "scale": s}
    if norm == "token-wise":
        arch.update(scale=None, normalize="constant_norm_rescale")
    if not unit_decoder:  # lm_saes multiplies h by the decoder norms before the threshold
        arch["decoder_norm"] = True
    return arch


CASES = {
    "saelens-standard": lambda p: saelens(p, "standard"),
    "saelens-standard-5x": lambda p: saelens(p, "standard", version="5"),
    "saelens-jumprelu": lambda p: saelens(p, "jumprelu", seed=3),
    "saelens-jumprelu-5x": lambda p: saelens(p, "jumprelu", seed=12, version="5"),
    "saelens-topk-4x": lambda p: saelens(p, "topk", seed=13, version="4", k=8),
    "saelens-topk": lambda p: saelens(p, "topk", seed=4, k=7),
    "saelens-topk-rescaled": lambda p: saelens(p, "topk", seed=5, k=9, rescale_acts_by_decoder_norm=True),
    "saelens-gated": lambda p: saelens(p, "gated", seed=6),
    "saelens-abstopk": lambda p: saelens(p, "abstopk", seed=22, k=8),
    "saelens-abstopk-rescaled": lambda p: saelens(p, "abstopk", seed=23, k=5, rescale_acts_by_decoder_norm=True),
    "saelens-transcoder": lambda p: saelens(p, "transcoder", seed=24),
    "saelens-skip-transcoder": lambda p: saelens(p, "skip_transcoder", seed=25),
    "saelens-jumprelu-transcoder": lambda p: saelens(p, "jumprelu_transcoder", seed=26),
    "saelens-jumprelu-skip-transcoder": lambda p: saelens(p, "jumprelu_skip_transcoder", seed=27),
    "saelens-batchtopk": lambda p: saelens(p, "batchtopk", seed=14, k=32.0, rescale_acts_by_decoder_norm=True),
    "saelens-batchtopk-default": lambda p: saelens(p, "batchtopk", seed=15, k=24.0),  # the flag left out: on
    "saelens-batchtopk-unscaled": lambda p: saelens(p, "batchtopk", seed=16, rescale_acts_by_decoder_norm=False),
    "saelens-matryoshka-batchtopk": lambda p: saelens(p, "matryoshka_batchtopk", seed=17),
    "saelens-no-b_dec": lambda p: saelens(p, "standard", seed=8, apply_b_dec_to_input=False),
    "saelens-whitened": lambda p: saelens(p, "standard", seed=35, normalize_activations="covariance_whitening"),
    "saelens-whitened-topk": lambda p: saelens(
        p, "topk", seed=36, k=9, rescale_acts_by_decoder_norm=True, normalize_activations="covariance_whitening"
    ),
    "saelens-whitened-gated": lambda p: saelens(p, "gated", seed=37, normalize_activations="covariance_whitening"),
    "saelens-constant-norm": lambda p: {
        **saelens(p, "standard", seed=9, normalize_activations="constant_norm_rescale"),
        "normalize": "constant_norm_rescale",
    },
    "saelens-layer-norm": lambda p: {
        **saelens(p, "jumprelu", seed=10, normalize_activations="layer_norm"),
        "normalize": "layer_norm",
    },
    "sparsify-topk": lambda p: sparsify(p),
    "sparsify-groupmax": lambda p: sparsify(p, "groupmax", k=8),
    "sparsify-transcoder": lambda p: sparsify(p, transcode=True, seed=11),
    "dl-autoencoder": lambda p: dictionary_learning(p, "AutoEncoder"),
    "dl-topk": lambda p: dictionary_learning(p, "AutoEncoderTopK"),
    "dl-batchtopk": lambda p: dictionary_learning(p, "BatchTopKSAE"),
    "dl-jumprelu": lambda p: dictionary_learning(p, "JumpReluAutoEncoder"),
    "dl-gated": lambda p: dictionary_learning(p, "GatedAutoEncoder"),
    "dl-autoencoder-new": lambda p: dictionary_learning(p, "AutoEncoderNew", seed=28),
    "dl-checkpoint": lambda p: dictionary_learning(
        p.parent.parent, "BatchTopKSAE", seed=29, file="checkpoints/ae_100.pt"
    ),
    "dl-backup": lambda p: dictionary_learning(p, "BatchTopKSAE", seed=30, norm_factor=4.25),
    "dl-backup-autoencoder": lambda p: dictionary_learning(p, "AutoEncoder", seed=31, norm_factor=0.75),
    "gemma-scope-2": lambda p: gemma_scope_2(p),
    "gemma-scope-2-transcoder": lambda p: gemma_scope_2(
        p, seed=32, site="model.layers.3.pre_feedforward_layernorm.output", kind="transcoder"
    ),
    "llama-scope": lambda p: llama_scope(p),
    "llama-scope-decoder-norms": lambda p: llama_scope(p, seed=33, unit_decoder=False),
    "llama-scope-token-wise": lambda p: llama_scope(p, seed=34, norm="token-wise"),
    "gemma-scope": lambda p: gemma_scope(p / "layer_3" / "width_16k" / "average_l0_71"),
    "gemma-scope-embedding": lambda p: gemma_scope(p / "embedding" / "width_4k" / "average_l0_6", seed=19),
}


def sae_folder(tmp_path: Path, case: str) -> Path:
    # sparsify names a coder's folder after its hook; Gemma Scope's are under layer and width
    if case.startswith("sparsify"):
        return tmp_path / "run" / HOOK
    if case == "gemma-scope":
        return tmp_path / case / "layer_3" / "width_16k" / "average_l0_71"
    if case == "gemma-scope-embedding":
        return tmp_path / case / "embedding" / "width_4k" / "average_l0_6"
    if case == "dl-checkpoint":  # a file of the run's checkpoints/ names it
        return tmp_path / case / "checkpoints" / "ae_100.pt"
    if case.startswith("llama-scope"):
        return tmp_path / case / "Llama3_1-8B-Base-L3R-8x"
    return tmp_path / case


def make_case(tmp_path: Path, case: str) -> tuple[Path, dict, str]:
    """The SAE of ``case``, its reference, and how --sae names it (bound by name where the
    checkpoint names no hook)."""
    folder = sae_folder(tmp_path, case)
    arch = CASES[case](folder if not case.startswith("gemma-scope") else tmp_path / case)
    return folder, arch, str(folder) if arch.get("hook", HOOK) else f"{HOOK}={folder}"


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", sorted(CASES))
def test_encoder_decides_as_the_formulas_do(tmp_path: Path, case: str) -> None:
    folder, arch, _ = make_case(tmp_path, case)
    x = activations()
    latents = NumpyEncoder(load_sae(folder)).encode(x)
    want, margin = reference(arch, x)
    near = near_boundary(want, margin)
    assert near.mean() < 0.002, f"{near.sum()} near-boundary decisions: the test data is too close to call"
    assert ((latents > 0) == (want > 0))[~near].all()
    np.testing.assert_allclose(latents[~near], want[~near], rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_scan_counts_the_latents(tmp_path: Path, case: str) -> None:
    folder, arch, asked = make_case(tmp_path, case)
    x = activations(seed=zlib.crc32(case.encode()) % 1000)  # per case, the same every run
    data = cache(tmp_path / "cache", x)
    result = scan([data], saes=(asked,), chunk_rows=400)
    name = f"{HOOK}:{load_sae(folder).name}"
    assert list(result.activity.components) == [name]
    c = result.activity.components[name]
    sure, near, latents = expected_counts(arch, x)
    assert c.num_vectors == ROWS and c.num_features == D_SAE
    assert ((c.fire_counts >= sure) & (c.fire_counts <= sure + near)).all()
    exact = near == 0
    assert exact.mean() > 0.8
    assert (c.fire_counts[exact] == sure[exact]).all()
    # statistics of the latents that fired: mean when firing, and the largest value
    fired = latents > 0
    mean = np.where(fired.any(0), (latents * fired).sum(0) / np.maximum(fired.sum(0), 1), np.nan)
    np.testing.assert_allclose(c.mean_when_firing()[exact], mean[exact], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c.states["act_max"][exact], latents.max(0)[exact], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "case",
    [
        "saelens-topk-rescaled",
        "saelens-gated",
        "sparsify-groupmax",
        "dl-batchtopk",
        "saelens-layer-norm",
        "saelens-constant-norm",
        "saelens-batchtopk",
        "gemma-scope",
    ],
)
def test_the_torch_encoder_agrees(tmp_path: Path, case: str) -> None:
    """The encoder that runs on a GPU, run here on the cpu (kernel torch): the same counts."""
    folder, arch, asked = make_case(tmp_path, case)
    x = activations(seed=3)
    data = cache(tmp_path / "cache", x)
    result = scan([data], saes=(asked,), kernel="torch", chunk_rows=700, track_last=True)
    assert result.kernel == "sae+torch"
    c = next(iter(result.activity.components.values()))
    sure, near, latents = expected_counts(arch, x)
    assert ((c.fire_counts >= sure) & (c.fire_counts <= sure + near)).all() and (near == 0).mean() > 0.8
    exact = near == 0
    np.testing.assert_allclose(c.states["act_max"][exact], latents.max(0)[exact], rtol=1e-4, atol=1e-5)
    fired = latents > 0
    last = np.where(fired.any(0), len(x) - 1 - np.argmax(fired[::-1], axis=0), -1)
    assert (c.last_fired[exact] == last[exact]).all()


def test_fire_above_applies_to_the_latents(tmp_path: Path) -> None:
    arch = saelens(tmp_path / "sae", "standard")
    x = activations()
    data = cache(tmp_path / "cache", x)
    c = next(iter(scan([data], saes=(str(tmp_path / "sae"),), fire_above="0.5").activity.components.values()))
    sure, near, latents = expected_counts(arch, x, fire_above=0.5)
    assert ((c.fire_counts >= sure) & (c.fire_counts <= sure + near)).all() and (near == 0).mean() > 0.8
    exact = near == 0
    fired = latents > 0.5
    want = np.where(fired.any(0), (latents * fired).sum(0) / np.maximum(fired.sum(0), 1), np.nan)
    np.testing.assert_allclose(c.mean_when_firing()[exact], want[exact], rtol=1e-4)  # only values above 0.5


def test_expected_average_scaling_comes_from_the_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "sae"
    arch = saelens(folder, "standard", normalize_activations="expected_average_only_in")
    data = cache(tmp_path / "cache", activations())
    result = nact("scan", data, "--sae", folder, "-f", "json")
    assert result.exit_code == 0, result.stderr  # SAELens encodes it unscaled: so does nact, and says so
    assert result.stderr == (
        f"Warning: SAE {folder}: normalize_activations is expected_average_only_in but it stores no scaling "
        "factor (activation_scaler.json): its inputs are not scaled, as SAELens encodes it\n"
    )
    unscaled = next(iter(scan([data], saes=(str(folder),)).activity.components.values()))
    sure, near, _ = expected_counts(arch, activations())
    assert ((unscaled.fire_counts >= sure) & (unscaled.fire_counts <= sure + near)).all()
    (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 0.37}))
    c = next(iter(scan([data], saes=(str(folder),)).activity.components.values()))
    sure, near, _ = expected_counts({**arch, "scale": 0.37}, activations())
    assert ((c.fire_counts >= sure) & (c.fire_counts <= sure + near)).all()
    assert (c.fire_counts != expected_counts(arch, activations())[0]).any()  # the scale changed the answer


def test_several_saes_on_one_read_and_bound_by_name(tmp_path: Path) -> None:
    a = saelens(tmp_path / "a", "standard", seed=1)
    b = sparsify(tmp_path / "run" / "layers.3", seed=2)  # its hook is its folder: bound by name
    x = activations()
    cache(tmp_path / "cache", x, other=x * 0.5)  # a second component, with no SAE: not counted
    result = nact(
        "scan",
        tmp_path / "cache",
        "--sae",
        tmp_path / "a",
        "--sae",
        f"{HOOK}={tmp_path / 'run' / 'layers.3'}",
        "-f",
        "json",
        "--top",
        "2",
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    names = [c["component"] for c in doc["components"]]
    assert names == [f"{HOOK}:a", f"{HOOK}:run/layers.3"]
    by_name = {c["component"]: c for c in doc["components"]}
    assert by_name[f"{HOOK}:a"]["sae"]["library"] == "SAELens" and by_name[f"{HOOK}:a"]["num_vectors"] == ROWS
    assert by_name[f"{HOOK}:run/layers.3"]["sae"]["hook"] == "layers.3"
    for name, arch in ((f"{HOOK}:a", a), (f"{HOOK}:run/layers.3", b)):
        sure, near, latents = expected_counts(arch, x)
        most = doc["top"][name]["most_active"][0]
        assert most["fire_count"] == max(sure + near) or near.any()
        assert most["max_activation"] == pytest.approx(latents[:, most["neuron"]].max(), rel=1e-4)


def test_dead_latents_listed_with_their_statistics(tmp_path: Path) -> None:
    folder = tmp_path / "sae"
    saelens(folder, "standard")
    x = activations()
    data = cache(tmp_path / "cache", x)
    result = nact("scan", data, "--sae", folder, "-t", "0.01", "--neurons", "-f", "json")
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)["rows"][0]
    assert len(row["dead_neurons"]) == len(row["dead_neuron_mean_activations"]) == row["dead"] >= DEAD
    assert row["dead_neurons"][:DEAD] == list(range(DEAD))
    c = next(iter(scan([data], saes=(str(folder),)).activity.components.values()))
    for i, mean in zip(row["dead_neurons"], row["dead_neuron_mean_activations"]):
        assert (mean is None) == (c.fire_counts[i] == 0)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--sae", "{sae}"],
            "its hook 'blocks.3.hook_resid_post' is not a component of the cache (components: other): "
            "bind it with --sae COMPONENT=PATH",
        ),
        (["--sae", "nope={sae}"], "its hook 'nope' is not a component of the cache"),
        (["--sae", "other={sae}", "--sae-dtype", "bfloat16", "-d", "cpu"], "--sae-dtype 'bfloat16' is for a GPU"),
        (["--sae-dtype", "float16"], "--sae-dtype goes with --sae"),
        (["--sae", "{tmp}"], "not an SAE checkpoint"),
        (["--sae", "{run}"], "holds 1 SAE checkpoint(s) in its folders (blocks.3.hook_resid_post): give one of them"),
    ],
)
def test_bad_sae_requests_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    saelens(tmp_path / "sae", "standard")
    sparsify(tmp_path / "run" / HOOK)  # a sparsify run: one coder per hook folder
    data = cache(tmp_path / "cache", activations(), key="other")
    out = tmp_path / "out.json"
    args = [a.format(sae=tmp_path / "sae", tmp=tmp_path / "cache", run=tmp_path / "run") for a in args]
    result = nact("scan", data, *args, "-o", out)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr
    assert not out.exists()


def test_d_in_must_match_the_component(tmp_path: Path) -> None:
    saelens(tmp_path / "sae", "standard")
    data = tmp_path / "cache"
    data.mkdir()
    save_file({HOOK: np.ones((10, D_IN + 1), np.float32)}, str(data / "a.safetensors"))
    result = nact("scan", data, "--sae", tmp_path / "sae")
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {tmp_path / 'sae'}: d_in is {D_IN}, but component {HOOK!r} has {D_IN + 1} features "
        f"({data / 'a.safetensors'})\n"
    )


def test_a_checkpoint_that_does_not_say_what_it_is(tmp_path: Path) -> None:
    folder = tmp_path / "sae"
    saelens(folder, "topk", k=D_SAE + 1)
    result = nact("scan", cache(tmp_path / "cache", activations()), "--sae", folder)
    assert result.exit_code == 2 and f"k is {D_SAE + 1}, not a whole number from 1 to d_sae" in result.stderr
    gated = tmp_path / "g"
    saelens(gated, "gated")
    weights = gated / "sae_weights.safetensors"
    from safetensors.numpy import load_file

    tensors = load_file(str(weights))
    del tensors["r_mag"]
    save_file(tensors, str(weights))
    result = nact("scan", tmp_path / "cache", "--sae", gated)
    assert result.exit_code == 2 and "has no tensor 'r_mag'" in result.stderr


@pytest.mark.parametrize("shape", [(ROWS, 4, 6), (ROWS // 5, 5, 4, 6), (ROWS, 24)])
def test_an_attention_sae_reads_hook_z_with_its_heads_merged(tmp_path: Path, shape: tuple[int, ...]) -> None:
    """SAELens' reshape_activations hook_z: [..., heads, d_head] is encoded as [..., heads * d_head]
    (row-major, as einops merges it); a cache already flat is read as it is."""
    hook = "blocks.3.attn.hook_z"
    folder = tmp_path / "sae"
    arch = saelens(folder, "jumprelu", seed=39, reshape_activations="hook_z")
    _write(folder / "cfg.json", {"metadata": {"hook_name": hook, "sae_lens_version": "6.5.1"}})
    x = activations()
    data = tmp_path / "cache"
    data.mkdir()
    save_file({hook: f32(x.reshape(shape))}, str(data / "z.safetensors"))
    (name, counted), *others = scan([data], saes=(str(folder),)).activity.components.items()
    assert name == f"{hook}:sae" and not others and counted.num_vectors == ROWS
    sure, near, _ = expected_counts(arch, x)
    assert (counted.fire_counts == sure)[near == 0].all()


def test_gemma_scope_2_is_bound_by_its_module_or_its_hook(tmp_path: Path) -> None:
    folder = tmp_path / "attn_out" / "layer_3_width_16k_l0_small"
    arch = gemma_scope_2(folder, seed=40, site="model.layers.3.self_attn.o_proj.input")
    x = activations()
    for key in ("model.layers.3.self_attn.o_proj.input", "blocks.3.attn.hook_z"):
        data = tmp_path / key
        data.mkdir()
        save_file({key: f32(x if key.startswith("model") else x.reshape(ROWS, 4, 6))}, str(data / "a.safetensors"))
        (name, counted), *others = scan([data], saes=(str(folder),)).activity.components.items()
        assert name == f"{key}:layer_3_width_16k_l0_small" and not others
        sure, near, _ = expected_counts(arch, x)
        assert (counted.fire_counts == sure)[near == 0].all()
    sae = load_sae(folder)
    assert (sae.hook, sae.hook_aliases, sae.reshape) == (
        "blocks.3.attn.hook_z",
        ("model.layers.3.self_attn.o_proj.input",),
        "hook_z",
    )


def test_whitening_not_stored_encodes_unwhitened_and_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "sae"
    arch = saelens(folder, "standard", seed=38, normalize_activations="covariance_whitening")
    (folder / WHITENING).unlink()
    data = cache(tmp_path / "cache", activations())
    result = nact("scan", data, "--sae", folder, "-f", "json")
    assert result.exit_code == 0 and result.stderr == (
        f"Warning: SAE {folder}: normalize_activations is covariance_whitening but it stores no whitening "
        f"({WHITENING}): its inputs are not whitened, as SAELens encodes it\n"
    )
    counted = next(iter(scan([data], saes=(str(folder),)).activity.components.values()))
    sure, near, _ = expected_counts({**arch, "whiten": None}, activations())
    assert (counted.fire_counts == sure)[near == 0].all()


def _write(path: Path, edit: dict) -> None:
    cfg = json.loads(path.read_text())
    cfg.update(edit)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: (saelens(p, "transcoder"), _write(p / "cfg.json", {"apply_b_dec_to_input": True})),
            "{p}/cfg.json: a transcoder with apply_b_dec_to_input: SAELens refuses it, and so does nact",
        ),
        (
            lambda p: (saelens(p, "jumprelu_transcoder"), _write(p / "cfg.json", {"reshape_activations": "hook_z"})),
            "{p}/cfg.json: reshape_activations 'hook_z' for a jumprelu_transcoder SAE: nact reads [..., d_in] "
            "activations and, for SAEs other than transcoders, hook_z's [..., heads, d_head]",
        ),
        (
            lambda p: (gemma_scope_2(p), _write(p / "config.json", {"architecture": "topk"})),
            "{p}/config.json: architecture 'topk': Gemma Scope 2 SAEs nact encodes are jump_relu",
        ),
        (
            lambda p: (llama_scope(p), _write(p / "hyperparams.json", {"norm_activation": "batch-wise"})),
            "{p}/hyperparams.json: norm_activation 'batch-wise' is not dataset-wise, token-wise or inference",
        ),
        (
            lambda p: (llama_scope(p), _write(p / "hyperparams.json", {"dataset_average_activation_norm": None})),
            "{p}/hyperparams.json: dataset_average_activation_norm.in is None, not a positive number",
        ),
        (
            lambda p: (gemma_scope_2(p), (p / "params.safetensors").unlink()),
            "{p}: has config.json but neither ae.pt (dictionary_learning) nor params.safetensors (Gemma Scope 2): "
            "give the folder the checkpoint was saved to",
        ),
        (
            lambda p: dictionary_learning(p, "BatchTopKSAE", norm_factor=-1.0),
            "{p}/ae.pt: norm_factor is -1.0, not a positive number",
        ),
    ],
)
def test_refusals_name_the_file_and_what_to_do(tmp_path: Path, make, message: str) -> None:
    folder = tmp_path / "sae"
    make(folder)
    result = nact("scan", cache(tmp_path / "cache", activations()), "--sae", f"{HOOK}={folder}")
    assert result.exit_code == 2 and result.stderr == f"Error: {message.format(p=folder)}\n"


def test_bf16_cache_is_encoded_from_its_values(tmp_path: Path) -> None:
    arch = saelens(tmp_path / "sae", "standard")
    x = activations()
    bf16 = torch.from_numpy(x).to(torch.bfloat16)
    data = tmp_path / "cache"
    data.mkdir()
    from reference import write_shard

    write_shard(data / "a.safetensors", {HOOK: bf16})
    c = next(iter(scan([data], saes=(str(tmp_path / "sae"),)).activity.components.values()))
    sure, near, _ = expected_counts(arch, bf16.float().numpy())
    assert ((c.fire_counts >= sure) & (c.fire_counts <= sure + near)).all()


def test_nan_inputs_make_nan_latents_that_do_not_fire(tmp_path: Path) -> None:
    saelens(tmp_path / "sae", "topk", k=5)
    x = activations()
    x[3, 2] = np.nan
    data = cache(tmp_path / "cache", x, shards=1)
    result = scan([data], saes=(str(tmp_path / "sae"),))
    c = next(iter(result.activity.components.values()))
    assert c.nan_count == D_SAE
    assert any("NaN" in w for w in result.warnings)


def test_saved_counts_keep_the_statistics_and_merge(tmp_path: Path) -> None:
    folder = tmp_path / "sae"
    arch = saelens(folder, "jumprelu")
    x = activations()
    first, second = cache(tmp_path / "a", x[:900], shards=2), cache(tmp_path / "b", x[900:], shards=1)
    for data, out in ((first, "a.safetensors"), (second, "b.safetensors")):
        result = nact("scan", data, "--sae", f"{HOOK}={folder}", "--save-counts", tmp_path / out, "-q")
        assert result.exit_code == 0, result.stderr
    merged = nact("merge", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "-o", tmp_path / "m.safetensors")
    assert merged.exit_code == 0, merged.stderr
    from neuron_activity.counts_file import load_counts

    c = load_counts(tmp_path / "m.safetensors").activity.components[f"{HOOK}:sae"]
    assert c.sae["architecture"] == "jumprelu" and c.num_vectors == ROWS
    sure, near, latents = expected_counts(arch, x)
    exact = near == 0
    assert (c.fire_counts[exact] == sure[exact]).all()
    fired = latents > 0
    np.testing.assert_allclose(c.states["act_sums"][exact], (latents * fired).sum(0)[exact], rtol=1e-4)
    np.testing.assert_allclose(c.states["act_max"][exact], latents.max(0)[exact], rtol=1e-4)
    report = nact("report", tmp_path / "m.safetensors", "-f", "json", "--top", "1")
    assert report.exit_code == 0, report.stderr
    doc = json.loads(report.stdout)
    assert doc["components"][0]["sae"]["library"] == "SAELens"
    assert "mean_activation" in doc["top"][f"{HOOK}:sae"]["most_active"][0]


def test_skip_positions_drops_the_bos_token(tmp_path: Path) -> None:
    """A TransformerLens [batch, position, d] hook: position 0 left out, for stored activations
    and for SAE latents alike, with the stream indices of the vectors that are kept."""
    arch = saelens(tmp_path / "sae", "standard")
    batch, positions = 50, 12
    x = activations(rows=batch * positions)
    x[::positions] += 40.0  # BOS-like outliers at position 0: latents fire there that fire nowhere else
    data = tmp_path / "cache"
    data.mkdir()
    save_file({HOOK: x.reshape(batch, positions, D_IN)}, str(data / "a.safetensors"))
    kept = x.reshape(batch, positions, D_IN)[:, 1:].reshape(-1, D_IN)
    result = scan([data], saes=(str(tmp_path / "sae"),), skip_positions=(0,), chunk_rows=70, track_last=True)
    c = next(iter(result.activity.components.values()))
    sure, near, latents = expected_counts(arch, kept)
    assert c.num_vectors == batch * (positions - 1)
    assert ((c.fire_counts >= sure) & (c.fire_counts <= sure + near)).all() and (near == 0).mean() > 0.8
    exact = near == 0
    fired = latents > 0
    last = np.where(fired.any(0), len(kept) - 1 - np.argmax(fired[::-1], axis=0), -1)
    assert (c.last_fired[exact] == last[exact]).all()
    assert (sure != expected_counts(arch, x)[0]).any()  # the skipped position mattered
    plain = scan([data], skip_positions=(0, 3), chunk_rows=7).activity.components[HOOK]
    rows = np.delete(x.reshape(batch, positions, D_IN), [0, 3], axis=1).reshape(-1, D_IN)
    assert plain.num_vectors == len(rows) and plain.fire_counts.tolist() == (rows > 0).sum(0).tolist()


def test_skip_positions_where_they_are_not_known(tmp_path: Path) -> None:
    data = cache(tmp_path / "cache", activations())
    result = nact("scan", data, "--skip-positions", "0")
    assert result.exit_code == 2
    assert "does not say which rows are which positions" in result.stderr and len(result.stderr.splitlines()) == 1
    other = tmp_path / "seq"
    other.mkdir()
    save_file({HOOK: np.ones((4, 5, D_IN), np.float32)}, str(other / "a.safetensors"))
    result = nact("scan", other, "--skip-positions", "0,5")
    assert result.exit_code == 2 and "--skip-positions 5 is beyond the 5 positions" in result.stderr
    result = nact("scan", other, "--skip-positions", "x")
    assert result.exit_code == 2 and "--skip-positions 'x' is not a position" in result.stderr


def test_an_saelens_arrow_cache_encoded_without_bos(tmp_path: Path) -> None:
    """The cache SAELens' CacheActivationsRunner writes (Arrow, [context, d_in] per row), its
    SAE bound by the hook's column name, BOS positions left out."""
    from test_formats import write_saelens_cache

    arch = saelens(tmp_path / "sae", "topk", k=6)
    x = activations(rows=40 * 8).reshape(40, 8, D_IN)
    write_saelens_cache(tmp_path / "cache", {HOOK: x, "blocks.4.hook_resid_post": x[:, :, :5]}, batch_rows=6)
    result = nact("scan", tmp_path / "cache", "--sae", tmp_path / "sae", "--skip-positions", "0", "-f", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    (component,) = doc["components"]
    assert component["component"] == f"{HOOK}:sae" and component["num_vectors"] == 40 * 7
    c = scan([tmp_path / "cache"], saes=(str(tmp_path / "sae"),), skip_positions=(0,)).activity.components[
        f"{HOOK}:sae"
    ]
    sure, near, _ = expected_counts(arch, x[:, 1:].reshape(-1, D_IN))
    assert ((c.fire_counts >= sure) & (c.fire_counts <= sure + near)).all() and (near == 0).mean() > 0.8


def test_save_sparsity_as_saelens_does_and_read_it_back(tmp_path: Path) -> None:
    folder = tmp_path / "sae"
    saelens(folder, "standard")
    x = activations()
    data = cache(tmp_path / "cache", x)
    out = tmp_path / "sparsity.safetensors"
    result = nact(
        "scan", data, "--sae", folder, "--save-sparsity", out, "--save-counts", tmp_path / "c.safetensors", "-q"
    )
    assert result.exit_code == 0, result.stderr
    from safetensors.numpy import load_file

    c = scan([data], saes=(str(folder),)).activity.components[f"{HOOK}:sae"]
    saved = load_file(str(out))
    assert list(saved) == ["sparsity"] and saved["sparsity"].dtype == np.float32
    want = np.log10(c.fire_counts / ROWS + 1e-10).astype(np.float32)  # SAELens: log10(density + 1e-10)
    assert saved["sparsity"].tolist() == want.tolist()
    assert saved["sparsity"][:DEAD].tolist() == [-10.0] * DEAD
    # the same from saved counts, and read back by density (over the vectors it was measured on)
    again = tmp_path / "again.safetensors"
    assert nact("report", tmp_path / "c.safetensors", "--save-sparsity", again, "-q").exit_code == 0
    assert load_file(str(again))["sparsity"].tolist() == want.tolist()
    (folder / "sparsity.safetensors").write_bytes(out.read_bytes())
    result = nact("density", folder / "sparsity.safetensors", "--num-vectors", ROWS, "-f", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)["components"][0]
    assert doc["component"] == f"{HOOK}:sae" and doc["never_fired"] == DEAD and doc["num_vectors"] == ROWS
    mine = json.loads(nact("density", data, "--sae", folder, "-f", "json").stdout)["components"][0]
    assert doc["alive_per_bin"] == mine["alive_per_bin"]  # the densities SAELens would save, read back exactly
    compared = nact("density", data, "--sae", folder, "--compare", folder / "sparsity.safetensors", "-f", "json")
    assert compared.exit_code == 0 and json.loads(compared.stdout)["compare"][0]["component"] == f"{HOOK}:sae"


def test_save_sparsity_needs_one_component(tmp_path: Path) -> None:
    data = cache(tmp_path / "cache", activations(), other=activations(seed=2))
    out = tmp_path / "s.safetensors"
    result = nact("scan", data, "--save-sparsity", out, "--save-counts", tmp_path / "c.safetensors")
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: --save-sparsity {str(out)!r} holds one component's densities, and there are 2 "
        f"({HOOK}, other): pick one\n"
    )
    assert not out.exists() and not (tmp_path / "c.safetensors").exists()
    result = nact("scan", data, "--save-sparsity", out, "--shard", "0/2")
    assert result.exit_code == 2 and "--save-sparsity and --shard cannot be used together" in result.stderr


def test_inspect_shows_what_each_sae_encodes(tmp_path: Path) -> None:
    saelens(tmp_path / "sae", "topk", k=4, rescale_acts_by_decoder_norm=True)
    data = cache(tmp_path / "cache", activations())
    result = nact("inspect", data, "--sae", tmp_path / "sae", "-f", "json")
    assert result.exit_code == 0, result.stderr
    (sae,) = json.loads(result.stdout)["saes"]
    assert (sae["latents"], sae["component"], sae["d_in"], sae["d_sae"]) == (f"{HOOK}:sae", HOOK, D_IN, D_SAE)
    assert sae["encode"] == "SAELens topk: x - b_dec, h = (x @ W_enc + b) * |W_dec|, top 4 of h, relu"
    table = nact("inspect", data, "--sae", tmp_path / "sae")
    assert f"SAE {tmp_path / 'sae'} encodes {HOOK} into {HOOK}:sae ({D_SAE} latents)" in table.stdout


def test_counts_of_another_sae_are_never_added(tmp_path: Path) -> None:
    """An audit whose SAE was replaced (same folder, other weights), or counts of two SAEs under one
    component name, are refused: latents of different SAEs do not add up."""
    folder = tmp_path / "sae"
    saelens(folder, "standard", seed=1)
    data = cache(tmp_path / "cache", activations())
    state = tmp_path / "audit.safetensors"
    assert nact("scan", data, "--sae", folder, "--state", state, "-q").exit_code == 0
    before = state.read_bytes()
    import shutil

    shutil.rmtree(folder)
    saelens(folder, "standard", seed=2)  # retrained in place
    save_file({HOOK: activations(seed=3)}, str(data / "shard_10.safetensors"))  # a new shard to count
    result = nact("scan", data, "--sae", folder, "--state", state, "-q")
    assert result.exit_code == 2
    assert "counted with sae" in result.stderr and "use the same --sae, or --rescan" in result.stderr
    assert state.read_bytes() == before
    assert nact("scan", data, "--sae", folder, "--state", state, "--rescan", "-q").exit_code == 0
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert (
        nact("scan", data / "shard_10.safetensors", "--sae", f"{HOOK}={folder}", "--save-counts", b, "-q").exit_code
        == 0
    )
    shutil.rmtree(folder)
    saelens(folder, "standard", seed=1)
    assert (
        nact("scan", data / "shard_00.safetensors", "--sae", f"{HOOK}={folder}", "--save-counts", a, "-q").exit_code
        == 0
    )
    merged = nact("merge", a, b, "-o", tmp_path / "m.safetensors")
    assert merged.exit_code == 2 and "holds the latents of two different SAEs" in merged.stderr


def test_a_batchtopk_training_checkpoint_counts_as_its_inference_model(tmp_path: Path) -> None:
    """SAELens trains BatchTopK on pre-activations rescaled by the decoder row norms and learns its
    threshold there: the training checkpoint and what save_inference_model folds from it give the
    same latents, which differ from ignoring the norms."""
    arch = saelens(tmp_path / "training", "batchtopk", seed=21, k=16.0, rescale_acts_by_decoder_norm=True)
    saelens_inference(tmp_path / "training", tmp_path / "inference")
    x = activations(seed=5)
    data = cache(tmp_path / "cache", x)
    sure, near, _ = expected_counts(arch, x)
    counts = {}
    for name in ("training", "inference"):
        c = next(iter(scan([data], saes=(str(tmp_path / name),)).activity.components.values()))
        assert ((c.fire_counts >= sure) & (c.fire_counts <= sure + near)).all(), name
        counts[name] = c.fire_counts
    exact = near == 0
    assert exact.mean() > 0.9 and (counts["training"][exact] == counts["inference"][exact]).all()
    unscaled, _, _ = expected_counts({**arch, "decoder_norm": False}, x)
    assert (unscaled != sure).sum() > D_SAE // 2  # the norms matter for most latents
    assert "(x @ W_enc + b) * |W_dec|" in load_sae(tmp_path / "training").describe()


def test_saes_whose_folders_share_a_name_are_named_apart(tmp_path: Path) -> None:
    """SAELens names checkpoints by their sample count, dictionary_learning sweeps by trainer:
    the shortest end of each path that tells them apart names their latents, or a name given."""
    saelens(tmp_path / "run_a" / "1000000", "standard", seed=1)
    saelens(tmp_path / "run_b" / "1000000", "jumprelu", seed=2)
    saelens(tmp_path / "lr=1e-3", "standard", seed=3)  # an '=' in a folder that exists: a path
    data = cache(tmp_path / "cache", activations())
    args = [
        "--sae",
        tmp_path / "run_a" / "1000000",
        "--sae",
        tmp_path / "run_b" / "1000000",
        "--sae",
        tmp_path / "lr=1e-3",
    ]
    result = nact("scan", data, *args, "-f", "json")
    assert result.exit_code == 0, result.stderr
    names = [c["component"] for c in json.loads(result.stdout)["components"]]
    assert names == [f"{HOOK}:run_a/1000000", f"{HOOK}:run_b/1000000", f"{HOOK}:lr=1e-3"]
    again = nact("scan", data, *args, "-f", "json")
    assert [c["component"] for c in json.loads(again.stdout)["components"]] == names  # the same every run
    named = nact(
        "scan",
        data,
        "--sae",
        f"{tmp_path / 'run_a' / '1000000'}#early",
        "--sae",
        f"{HOOK}={tmp_path / 'run_b' / '1000000'}#late",
        "-f",
        "json",
    )
    assert named.exit_code == 0, named.stderr
    assert [c["component"] for c in json.loads(named.stdout)["components"]] == [f"{HOOK}:early", f"{HOOK}:late"]


@pytest.mark.parametrize(
    "sae_args, message",
    [
        (["{a}", "{a}"], "--sae '{a}' is given twice for component 'blocks.3.hook_resid_post'"),
        (
            ["{a}#x", "{b}#x"],
            "--sae '{a}, {b}' both name their latents 'blocks.3.hook_resid_post:x': tell them apart with PATH#NAME",
        ),
        (["{a}#"], "--sae '{a}#' names no SAE after '#': use PATH#NAME, a name without '/' or ':'"),
    ],
)
def test_saes_that_cannot_be_told_apart(tmp_path: Path, sae_args: list[str], message: str) -> None:
    saelens(tmp_path / "a" / "final", "standard", seed=1)
    saelens(tmp_path / "b" / "final", "standard", seed=2)
    data = cache(tmp_path / "cache", activations())
    paths = {"a": tmp_path / "a" / "final", "b": tmp_path / "b" / "final"}
    args = [x for s in sae_args for x in ("--sae", s.format(**paths))]
    result = nact("scan", data, *args)
    assert result.exit_code == 2 and result.stderr == f"Error: {message.format(**paths)}\n"


def test_a_checkpoint_that_names_no_hook_is_bound_by_name(tmp_path: Path) -> None:
    """Gemma Scope names only a layer (in its folders): without COMPONENT=, one line naming the
    choices; with it, the component's latents."""
    folder = tmp_path / "saes" / "layer_3" / "width_16k" / "average_l0_71"
    gemma_scope(folder)
    data = cache(tmp_path / "cache", activations(), other=activations(seed=2))
    result = nact("scan", data, "--sae", folder)
    assert result.exit_code == 2 and result.stderr == (
        f"Error: {folder}: the checkpoint names no hook: name the component it encodes "
        f"(components: {HOOK}, other): bind it with --sae COMPONENT=PATH\n"
    )
    result = nact("scan", data, "--sae", f"{HOOK}={folder}", "-f", "json")
    assert result.exit_code == 0, result.stderr
    (component,) = json.loads(result.stdout)["components"]
    assert component["component"] == f"{HOOK}:average_l0_71" and component["sae"]["library"] == "Gemma Scope"
    scanned = nact("scan", folder.parent.parent)
    assert scanned.exit_code == 2 and "a Gemma Scope SAE checkpoint, not activations" in scanned.stderr


@pytest.mark.parametrize(
    ("release", "layer", "hook"),
    [
        ("gemma-scope-2b-pt-res", "layer_3", "blocks.3.hook_resid_post"),
        ("models--google--gemma-scope-9b-it-res", "layer_3", "blocks.3.hook_resid_post"),  # a Hub download
        ("gemma-scope-2b-pt-mlp", "layer_12", "blocks.12.hook_mlp_out"),
        ("gemma-scope-2b-pt-transcoders", "layer_0", "blocks.0.ln2.hook_normalized"),
    ],
)
def test_a_gemma_scope_path_that_keeps_its_release_names_the_hook(
    tmp_path: Path, release: str, layer: str, hook: str
) -> None:
    folder = tmp_path / release / "snapshots" / "0abc" / layer / "width_16k" / "average_l0_71"
    arch = gemma_scope(folder)
    x = activations()
    data = cache(tmp_path / "cache", x, key=hook, other=activations(seed=2))
    (name, counted), *others = scan([data], saes=(str(folder),)).activity.components.items()
    assert name == f"{hook}:average_l0_71" and not others
    sure, near, _ = expected_counts(arch, x)
    assert (counted.fire_counts == sure)[near == 0].all()
    elsewhere = cache(tmp_path / "other-cache", x, key="blocks.4.hook_resid_post")
    result = nact("scan", elsewhere, "--sae", folder)
    assert result.exit_code == 2 and f"{hook}" in result.stderr and "COMPONENT=PATH" in result.stderr


def test_an_sae_too_wide_for_this_machine_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real SAEs reach 16-34 million latents: the bound is the memory the weights and counts
    need, said before they are read."""
    from neuron_activity import memory

    saelens(tmp_path / "sae", "standard")
    data = cache(tmp_path / "cache", activations())
    monkeypatch.setattr(memory, "available", lambda: 12_000)  # less than W_enc (24 x 96 float32) as read
    result = nact("scan", data, "--sae", tmp_path / "sae")
    assert result.exit_code == 2 and result.stderr == (
        f"Error: {tmp_path / 'sae' / 'sae_weights.safetensors'}: tensor 'W_enc' of shape [{D_IN}, {D_SAE}] needs "
        "18.0 KiB of memory, more than this machine has available (11.7 KiB)\n"
    )


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: ((p / "cfg.json").unlink(), os.mkfifo(p / "cfg.json")),
            "{p}/cfg.json: not a regular file (a device, FIFO or folder): a config is a JSON file",
        ),
        (
            lambda p: ((p / "cfg.json").unlink(), os.symlink("/dev/zero", p / "cfg.json")),
            "{p}/cfg.json: not a regular file (a device, FIFO or folder): a config is a JSON file",
        ),
        (
            lambda p: (p / "cfg.json").write_text('{"a": ' + _nested(100_000) + "}"),
            "{p}/cfg.json: not JSON nact reads: nested too deep",
        ),
        (
            lambda p: (p / "activation_scaler.json").write_text(_nested(100_000)),
            "{p}/activation_scaler.json: not JSON nact reads: nested too deep",
        ),
        (
            lambda p: _write(p / "cfg.json", {"metadata": {"hook_name": ["a", "b"]}}),
            "{p}/cfg.json: hook_name is ['a', 'b'], not a string",
        ),
        (
            lambda p: _write(p / "cfg.json", {"hook_name": {"x": 1}, "metadata": {}}),
            "{p}/cfg.json: hook_name is {'x': 1}, not a string",
        ),
    ],
)
def test_a_bad_saelens_config_is_one_line(tmp_path: Path, make, message: str) -> None:
    folder = tmp_path / "sae"
    saelens(folder, "standard", normalize_activations="expected_average_only_in")
    make(folder)
    result = nact("scan", cache(tmp_path / "cache", activations()), "--sae", f"{HOOK}={folder}")
    assert result.exit_code == 2 and result.stderr == f"Error: {message.replace('{p}', str(folder))}\n"


@pytest.mark.parametrize("k", [float("nan"), float("inf"), 2.5, -3.0])
def test_a_dictionary_learning_k_that_is_not_whole(tmp_path: Path, k: float) -> None:
    folder = tmp_path / "sae"
    dictionary_learning(folder, "AutoEncoderTopK")
    state = torch.load(folder / "ae.pt", weights_only=True)
    state["k"] = torch.tensor(k)
    torch.save(state, folder / "ae.pt")
    result = nact("scan", cache(tmp_path / "cache", activations()), "--sae", folder)
    assert result.exit_code == 2 and result.stderr == (
        f"Error: {folder}/ae.pt: k is {k!r}, not a whole number from 1 to d_sae ({D_SAE})\n"
    )


def test_a_zip_bombed_pickle_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    """A small ae.pt whose data.pkl inflates to more than 64 MiB: refused from the zip's directory."""
    import zipfile

    folder = tmp_path / "sae"
    dictionary_learning(folder, "AutoEncoder")
    size = 65 * 1024 * 1024
    with zipfile.ZipFile(folder / "ae.pt", "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data.pkl", "w", force_zip64=True) as member:
            for _ in range(size // (1 << 20)):
                member.write(bytes(1 << 20))
    assert (folder / "ae.pt").stat().st_size < 1 << 20
    result = nact("scan", cache(tmp_path / "cache", activations()), "--sae", folder)
    assert result.exit_code == 2 and result.stderr == (
        f"Error: {folder}/ae.pt: its pickle (data.pkl) inflates to {size} bytes, more than 64 MiB: "
        "not a torch.save file of tensors\n"
    )
