import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = ROOT / "sample_data"


@pytest.fixture(autouse=True)
def _no_color(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.delenv("NACT_KERNEL", raising=False)
    # `python -c` in a subprocess puts the working folder first on sys.path: out of the checkout,
    # it imports the installed nact, as a user's would
    monkeypatch.chdir(tmp_path_factory.getbasetemp())


# What nact reports on sample_data/ (see sample_data/make_sample_data.py): (component, threshold, dead)
SAMPLE_ROWS = [
    ("blocks.0.hook_sae_acts", 0.0, 2),
    ("blocks.0.hook_sae_acts", 1e-5, 3),
    ("blocks.0.hook_sae_acts", 1e-6, 2),
    ("blocks.1.hook_sae_acts", 0.0, 1),
    ("blocks.1.hook_sae_acts", 1e-5, 2),
    ("blocks.1.hook_sae_acts", 1e-6, 1),
]


def invoke_without(module: str, args: list[str]) -> tuple[int, str]:
    """Run ``nact ARGS`` in a fresh interpreter where ``module`` cannot be imported."""
    import subprocess

    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from typer.testing import CliRunner; from nact_cli.main import app\n"
        f"r = CliRunner().invoke(app, {args!r})\n"
        "print(r.exit_code); print(r.stderr, end='')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    code_line, _, stderr = done.stdout.partition("\n")
    return int(code_line), stderr
