"""SAEs from the Hub (``hf://ORG/REPO[@REVISION]/PATH``): fetched through huggingface_hub from a
fake Hub on 127.0.0.1 (tests/fakehub.py), never the network.

huggingface_hub reads its environment (HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE) once, when it is
imported, so each fetch runs in a fresh interpreter with the environment a user would set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("huggingface_hub")

from fakehub import FakeHub, Repo

from neuron_activity.errors import BadInput
from neuron_activity.sae.hub import fetch

GEMMA = "layer_20/width_16k/average_l0_71"
TOKEN = "hf_notarealtoken0123456789abcdef"


def payload(seed: int, size: int = 3000) -> bytes:
    return np.random.default_rng(seed).bytes(size)


def saes_main() -> dict[str, bytes]:
    return {
        ".gitattributes": b"*.npz filter=lfs diff=lfs merge=lfs -text\n",
        "README.md": b"# SAEs\n",
        f"{GEMMA}/params.npz": payload(1),
        f"{GEMMA}/notes.json": b'{"l0": 71}\n',
        f"{GEMMA}/ablation/params.npz": payload(2),  # a checkpoint below this one
        "layer_20/width_16k/average_l0_710/params.npz": payload(3),  # beside it, its name starts the same
        "layer_20/width_16k/average_l0_7/params.npz": payload(4),
        "L15R-8x/hyperparams.json": b'{"d_model": 8}\n',  # Llama Scope's layout
        "L15R-8x/checkpoints/final.safetensors": payload(5),
        "L15R-8x/checkpoints/step_100.safetensors": payload(7),  # a checkpoint of the run, fetched if named
        "L15R-8x/checkpoints/notes/log.txt": b"not fetched\n",
        "L16R-8x/hyperparams.json": b'{"d_model": 9}\n',
        "L16R-8x/checkpoints/final.safetensors": payload(6),
    }


def repos() -> dict[str, Repo]:
    v1 = {f"{GEMMA}/params.npz": payload(10), f"{GEMMA}/notes.json": b'{"l0": 70}\n'}
    return {
        "org/saes": Repo({"main": saes_main(), "v1": v1, "refs/pr/1": {f"{GEMMA}/params.npz": payload(11)}}),
        "org/root-sae": Repo(
            {
                "main": {
                    "cfg.json": b'{"d_in": 8}\n',
                    "sae_weights.safetensors": payload(20),
                    "other/cfg.json": b'{"d_in": 9}\n',
                    "other/sae_weights.safetensors": payload(21),
                }
            }
        ),
        "org/gated": Repo({"main": {"sae/params.npz": payload(30)}}, token=TOKEN),
    }


@pytest.fixture
def hub():
    with FakeHub(repos()) as served:
        yield served
        assert served.unexpected == []


@pytest.fixture
def env(hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    """A user's environment: the Hub at HF_ENDPOINT, the cache under HF_HOME, no token, no proxy."""
    kept = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("HF_", "HUGGING", "XDG_CACHE")) and "PROXY" not in k.upper()
    }
    return kept | {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",  # 2.x would ask the Hub for /api/agent-harnesses
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
    }


DRIVER = """
import json, sys
from neuron_activity.errors import NactError
from neuron_activity.sae.hub import fetch
for url in sys.argv[1:]:
    try:
        print(json.dumps({"path": str(fetch(url))}))
    except NactError as e:
        print(json.dumps({"error": str(e), "type": type(e).__name__}))
"""


def fetched_each(urls: list[str], env: dict[str, str], before: str = "") -> list[dict[str, str]]:
    """``fetch(url)`` of each URL in turn, as a fresh process with ``env`` runs them: each one's
    path, or its error."""
    done = subprocess.run(
        [sys.executable, "-c", before + DRIVER, *urls], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()[-len(urls) :]]


def fetched(url: str, env: dict[str, str], before: str = "") -> dict[str, str]:
    return fetched_each([url], env, before)[0]


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def error_of(result: dict[str, str]) -> str:
    assert "error" in result, result
    assert result["type"] == "BadInput" and "\n" not in result["error"]
    return result["error"]


# --- what is fetched -------------------------------------------------------------------------------


def test_a_folder_is_fetched_into_the_cache_byte_for_byte_and_nothing_beside_it(
    hub: FakeHub, env: dict[str, str], tmp_path: Path
) -> None:
    folder = Path(fetched(f"hf://org/saes/{GEMMA}", env)["path"])
    main = saes_main()
    assert files_in(folder) == {
        "params.npz": main[f"{GEMMA}/params.npz"],
        "notes.json": main[f"{GEMMA}/notes.json"],
    }
    assert folder.is_relative_to(tmp_path / "hf" / "hub" / "models--org--saes" / "snapshots")
    assert folder.parts[-3:] == tuple(GEMMA.split("/"))
    assert hub.downloads() == sorted(f"org/saes/{GEMMA}/{name}" for name in ("params.npz", "notes.json"))


def test_a_file_of_a_folder_fetches_the_folder(hub: FakeHub, env: dict[str, str]) -> None:
    by_file, by_folder = fetched_each([f"hf://org/saes/{GEMMA}/notes.json", f"hf://org/saes/{GEMMA}/"], env)
    assert Path(by_file["path"]).name == "notes.json" and Path(by_folder["path"]) == Path(by_file["path"]).parent
    assert sorted(files_in(Path(by_folder["path"]))) == ["notes.json", "params.npz"]
    assert hub.downloads() == sorted(f"org/saes/{GEMMA}/{name}" for name in ("params.npz", "notes.json"))


def test_llama_scope_weights_come_from_the_checkpoints_folder(hub: FakeHub, env: dict[str, str]) -> None:
    by_folder, by_file = fetched_each(["hf://org/saes/L15R-8x", "hf://org/saes/L15R-8x/hyperparams.json"], env)
    folder = Path(by_folder["path"])
    main = saes_main()
    assert files_in(folder) == {
        "hyperparams.json": main["L15R-8x/hyperparams.json"],
        "checkpoints/final.safetensors": main["L15R-8x/checkpoints/final.safetensors"],
    }
    assert hub.downloads() == ["org/saes/L15R-8x/checkpoints/final.safetensors", "org/saes/L15R-8x/hyperparams.json"]
    assert Path(by_file["path"]) == folder / "hyperparams.json"


def test_a_checkpoint_of_a_training_run_comes_with_the_runs_files(hub: FakeHub, env: dict[str, str]) -> None:
    path = Path(fetched("hf://org/saes/L15R-8x/checkpoints/step_100.safetensors", env)["path"])
    assert path.parts[-3:] == ("L15R-8x", "checkpoints", "step_100.safetensors")
    main = saes_main()
    assert files_in(path.parent.parent) == {
        "hyperparams.json": main["L15R-8x/hyperparams.json"],
        "checkpoints/step_100.safetensors": main["L15R-8x/checkpoints/step_100.safetensors"],
    }


def test_the_root_of_a_repository_is_its_own_files_only(hub: FakeHub, env: dict[str, str]) -> None:
    folder = Path(fetched("hf://org/root-sae", env)["path"])
    assert sorted(files_in(folder)) == ["cfg.json", "sae_weights.safetensors"]
    assert folder.parent.name == "snapshots" and folder.name == hub.repos["org/root-sae"].sha("main")
    assert hub.downloads() == ["org/root-sae/cfg.json", "org/root-sae/sae_weights.safetensors"]


def test_a_revision_is_honoured_by_name_and_by_commit(hub: FakeHub, env: dict[str, str]) -> None:
    repo = hub.repos["org/saes"]
    main_sha = repo.sha("main")
    urls = [f"hf://org/saes@v1/{GEMMA}", f"hf://org/saes@{main_sha}/{GEMMA}", f"hf://org/saes@refs%2Fpr%2F1/{GEMMA}"]
    v1, by_commit, pull_request = (Path(r["path"]) for r in fetched_each(urls, env))  # refs/pr/1 quoted, as fsspec does
    assert files_in(v1)["params.npz"] == repo.revisions["v1"][f"{GEMMA}/params.npz"]
    assert v1.parts[-4] == repo.sha("v1")
    assert by_commit.parts[-4] == main_sha
    assert files_in(by_commit)["params.npz"] == saes_main()[f"{GEMMA}/params.npz"]
    assert files_in(pull_request) == {"params.npz": repo.revisions["refs/pr/1"][f"{GEMMA}/params.npz"]}


# --- offline -------------------------------------------------------------------------------------


def test_a_cached_sae_is_read_from_the_cache_when_the_hub_is_gone(hub: FakeHub, env: dict[str, str]) -> None:
    first = fetched(f"hf://org/saes/{GEMMA}", env)["path"]
    hub.stop()
    again = fetched_each([f"hf://org/saes/{GEMMA}", f"hf://org/saes/{GEMMA}/params.npz"], env)
    assert again == [{"path": first}, {"path": f"{first}/params.npz"}]


def test_a_cached_sae_is_read_from_the_cache_when_the_hub_is_down(hub: FakeHub, env: dict[str, str]) -> None:
    first = fetched(f"hf://org/saes/{GEMMA}", env)["path"]
    hub.down = True
    again, other = fetched_each([f"hf://org/saes/{GEMMA}", "hf://org/saes/L15R-8x"], env)
    assert again == {"path": first}
    message = error_of(other)
    assert message.startswith("hf://org/saes/L15R-8x: not in the Hugging Face cache (")
    assert "), and the Hub is down (" in message and "500" in message.partition("down")[2]


def test_hf_hub_offline_reads_the_cache_and_asks_nothing(hub: FakeHub, env: dict[str, str]) -> None:
    first = fetched(f"hf://org/saes@v1/{GEMMA}", env)["path"]
    asked = len(hub.requests)
    assert fetched(f"hf://org/saes@v1/{GEMMA}", env | {"HF_HUB_OFFLINE": "1"})["path"] == first
    assert len(hub.requests) == asked


def test_offline_and_not_cached_is_one_line(hub: FakeHub, env: dict[str, str], tmp_path: Path) -> None:
    fetched(f"hf://org/saes/{GEMMA}", env)
    offline = env | {"HF_HUB_OFFLINE": "1"}
    cache = tmp_path / "hf" / "hub"
    folder_not_fetched, repo_not_fetched = fetched_each(["hf://org/saes/L15R-8x", "hf://org/root-sae"], offline)
    assert error_of(folder_not_fetched) == (
        f"hf://org/saes/L15R-8x: not in the Hugging Face cache ({cache}), and HF_HUB_OFFLINE is set"
    )
    assert error_of(repo_not_fetched) == (
        f"hf://org/root-sae: not in the Hugging Face cache ({cache}), and HF_HUB_OFFLINE is set"
    )
    hub.stop()
    message = error_of(fetched("hf://org/saes/L15R-8x", env))
    assert message.startswith(
        f"hf://org/saes/L15R-8x: not in the Hugging Face cache ({cache}), and the Hub cannot be reached "
        "(ConnectionRefusedError: [Errno "
    )
    assert message.endswith("] Connection refused)")


# --- refusals ------------------------------------------------------------------------------------


def test_a_path_the_repository_does_not_have_is_named(hub: FakeHub, env: dict[str, str]) -> None:
    url = "hf://org/saes/layer_20/width_16k/average_l0_72"
    on_main, on_v1 = fetched_each([url, "hf://org/saes@v1/L15R-8x"], env)
    assert error_of(on_main) == f"{url}: no file or folder 'layer_20/width_16k/average_l0_72' in org/saes"
    assert error_of(on_v1) == "hf://org/saes@v1/L15R-8x: no file or folder 'L15R-8x' in org/saes at revision 'v1'"
    assert hub.downloads() == []


def test_a_folder_of_checkpoints_says_to_give_one(hub: FakeHub, env: dict[str, str]) -> None:
    url = "hf://org/saes/layer_20/width_16k"
    assert error_of(fetched(url, env)) == (
        f"{url}: holds no files, only 3 folder(s) (average_l0_7, average_l0_71, average_l0_710): give one of them"
    )
    assert hub.downloads() == []


def test_a_repository_or_revision_not_found_is_one_line(hub: FakeHub, env: dict[str, str]) -> None:
    no_repo, no_revision = fetched_each(["hf://org/nothing/sae", f"hf://org/saes@v9/{GEMMA}"], env)
    message = error_of(no_repo)
    assert message.startswith("hf://org/nothing/sae: no repository org/nothing on the Hub, or it is private")
    assert "HF_TOKEN" in message
    assert error_of(no_revision) == f"hf://org/saes@v9/{GEMMA}: no revision 'v9' in org/saes"


@pytest.mark.parametrize("token", [None, "hf_wrongtoken0123456789abcdef"])
def test_a_gated_repository_without_its_token_says_to_set_hf_token(
    hub: FakeHub, env: dict[str, str], token: str | None
) -> None:
    with_token = env if token is None else env | {"HF_TOKEN": token}
    message = error_of(fetched("hf://org/gated/sae", with_token))
    assert message.startswith(
        "hf://org/gated/sae: org/gated is gated: accept its conditions on the Hub, then set HF_TOKEN"
    )
    assert token is None or token not in message
    assert {r.authorization for r in hub.requests} == {None if token is None else f"Bearer {token}"}


def test_hf_token_is_sent_as_a_bearer_token(hub: FakeHub, env: dict[str, str]) -> None:
    path = Path(fetched("hf://org/gated/sae/params.npz", env | {"HF_TOKEN": TOKEN})["path"])
    assert files_in(path.parent) == {"params.npz": hub.repos["org/gated"].revisions["main"]["sae/params.npz"]}
    assert hub.requests and {r.authorization for r in hub.requests} == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("hf://org", "expected hf://ORG/REPO[@REVISION]/PATH"),
        ("hf://org/", "expected hf://ORG/REPO[@REVISION]/PATH"),
        ("hf://org/repo@/sae", "expected hf://ORG/REPO[@REVISION]/PATH"),
        ("hf://org/repo/../other/sae", "not a path in a repository: expected hf://ORG/REPO[@REVISION]/PATH"),
        ("hf://org/repo/a//b", "not a path in a repository: expected hf://ORG/REPO[@REVISION]/PATH"),
        (
            "hf://datasets/org/repo/sae",
            "SAEs are read from model repositories, not datasets: expected hf://ORG/REPO[@REVISION]/PATH",
        ),
        ("s3://org/repo/sae", "expected hf://ORG/REPO[@REVISION]/PATH"),
    ],
)
def test_a_url_that_is_not_a_checkpoint_on_the_hub_is_refused_before_any_request(url: str, problem: str) -> None:
    with pytest.raises(BadInput) as refused:
        fetch(url)
    assert str(refused.value) == f"{url}: {problem}"


def test_credentials_in_the_url_are_never_shown() -> None:
    with pytest.raises(BadInput) as refused:
        fetch(f"hf://user:{TOKEN}@org/repo/sae")
    assert str(refused.value) == "hf://...@org/repo/sae: credentials in the URL are not read: set HF_TOKEN"


def test_an_invalid_repository_name_is_one_line(hub: FakeHub, env: dict[str, str]) -> None:
    message = error_of(fetched("hf://org/bad--name/sae", env))
    assert message.startswith("hf://org/bad--name/sae: not a repository name: ")
    assert hub.requests == []


# --- the module ----------------------------------------------------------------------------------


def test_without_huggingface_hub_the_extra_is_named(env: dict[str, str]) -> None:
    result = fetched(f"hf://org/saes/{GEMMA}", env, before="import sys; sys.modules['huggingface_hub'] = None\n")
    assert error_of(result) == (
        f"hf://org/saes/{GEMMA}: reading SAEs from the Hub needs huggingface_hub: pip install 'nact[remote]'"
    )


def test_progress_bars_are_huggingface_hubs_unless_silenced(hub: FakeHub, env: dict[str, str]) -> None:
    """A terminal shows them; cron's mail and a pipeline's stderr need not."""
    code = "import sys; from neuron_activity.sae.hub import fetch; fetch(sys.argv[1], progress=sys.argv[2] == 'on')"
    shown = {k: v for k, v in env.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    for bars, url in (("off", f"hf://org/saes/{GEMMA}"), ("on", "hf://org/saes/L15R-8x")):
        done = subprocess.run([sys.executable, "-c", code, url, bars], env=shown, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert ("%|" in done.stderr) == (bars == "on"), done.stderr
    assert len(hub.downloads()) == 4


def test_importing_the_module_does_not_import_huggingface_hub(env: dict[str, str]) -> None:
    code = "import sys, neuron_activity.sae.hub; print('huggingface_hub' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_a_gemma_scope_sae_fetched_from_the_hub_is_read_and_bound_by_its_path(
    env: dict[str, str], tmp_path: Path
) -> None:
    from neuron_activity.sae.load import load_sae

    rng = np.random.default_rng(5)
    weights = {
        name: rng.standard_normal(shape).astype(np.float32)
        for name, shape in {"W_enc": (4, 6), "b_enc": (6,), "threshold": (6,), "W_dec": (6, 4), "b_dec": (4,)}.items()
    }
    np.savez(tmp_path / "params.npz", **weights)
    files = {"layer_3/width_16k/average_l0_71/params.npz": (tmp_path / "params.npz").read_bytes()}
    with FakeHub({"google/gemma-scope-2b-pt-res": Repo({"main": files})}) as hub:
        url = "hf://google/gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_71"
        result = fetched(url, env | {"HF_ENDPOINT": hub.url})
        assert hub.unexpected == []
    sae = load_sae(result["path"])
    assert sae.hook == "blocks.3.hook_resid_post"


def test_a_scan_with_an_sae_on_the_hub_counts_as_the_same_sae_on_disk(env: dict[str, str], tmp_path: Path) -> None:
    """``nact scan CACHE --sae hf://...``: fetched once, named by its URL, counted as the same
    checkpoint read from a folder; a second scan reads it from the cache with the Hub gone."""
    from safetensors.numpy import save_file

    from neuron_activity import scan

    rng = np.random.default_rng(6)
    weights = {
        "W_enc": rng.standard_normal((8, 32)).astype(np.float32),
        "b_enc": np.r_[np.full(4, -50.0), rng.standard_normal(28) * 0.5 - 0.5].astype(np.float32),  # 4 dead
        "threshold": (rng.random(32) * 0.5).astype(np.float32),
        "W_dec": rng.standard_normal((32, 8)).astype(np.float32),
        "b_dec": rng.standard_normal(8).astype(np.float32),
    }
    local = tmp_path / "local" / "layer_3" / "width_16k" / "average_l0_71"
    local.mkdir(parents=True)
    np.savez(local / "params.npz", **weights)
    (tmp_path / "cache").mkdir()
    x = rng.standard_normal((500, 8)).astype(np.float32)
    save_file({"blocks.3.hook_resid_post": x}, str(tmp_path / "cache" / "a.safetensors"))
    want = scan([tmp_path / "cache"], saes=(f"blocks.3.hook_resid_post={local}",))
    (expected,) = want.activity.components.values()
    files = {"layer_3/width_16k/average_l0_71/params.npz": (local / "params.npz").read_bytes()}
    url = "hf://google/gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_71"
    nact = [sys.executable, "-c", "from nact_cli.entry import main; main()"]
    command = [*nact, "scan", str(tmp_path / "cache"), "--sae", url, "-t", "0", "--neurons", "-f", "json"]
    with FakeHub({"google/gemma-scope-2b-pt-res": Repo({"main": files})}) as hub:
        first = subprocess.run(command, env=env | {"HF_ENDPOINT": hub.url}, capture_output=True, text=True)
        assert hub.unexpected == []
    again = subprocess.run(command, env=env | {"HF_ENDPOINT": hub.url}, capture_output=True, text=True)
    for done in (first, again):
        assert done.returncode == 0 and done.stderr == "", done.stderr
        doc = json.loads(done.stdout)
        (component,), (row,) = doc["components"], doc["rows"]
        assert component["component"] == row["component"] == "blocks.3.hook_resid_post:average_l0_71"
        assert row["dead_neurons"] == [int(i) for i in np.flatnonzero(expected.fire_counts == 0)]
        assert 0 < len(row["dead_neurons"]) < 32, row  # the test has latents of both kinds
        assert component["sae"]["fingerprint"] == expected.sae["fingerprint"]
