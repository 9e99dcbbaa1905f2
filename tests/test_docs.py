"""The documentation: the generated CLI reference is current and names every option, every
relative link leads somewhere, and the README stays a short page that starts with its commands."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import typer.main
import typer.rich_utils

from nact_cli.main import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_START = """\
# nact — which of my neurons are dead?

```sh
pip install . && nact scan sample_data
pip install torch==2.13.0 && pip install '.[test]' && pytest
```
"""


def cli_reference():
    """docs/cli_reference.py, imported (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "cli_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_is_current() -> None:
    written = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert written == cli_reference().render(), "docs/cli.md is stale: run python docs/cli_reference.py"


def test_the_cli_reference_ignores_the_callers_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A narrow terminal or forced colour in the caller's environment changes nothing."""
    reference = cli_reference()
    plain = reference.help_text(["scan"])
    for name, value in {"COLUMNS": "40", "TERMINAL_WIDTH": "40", "FORCE_COLOR": "1", "GITHUB_ACTIONS": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("NO_COLOR", raising=False)
    # as Typer's settings are when it was imported under such an environment
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 40)
    monkeypatch.setattr(typer.rich_utils, "FORCE_TERMINAL", True)
    assert reference.help_text(["scan"]) == plain
    assert max(len(line) for line in plain.splitlines()) == reference.WIDTH
    assert "\x1b[" not in plain


def sections(text: str) -> dict[str, str]:
    """docs/cli.md cut at its headings: ``nact``, ``nact scan``, ... -> that command's text."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_option_of_every_command_is_in_the_cli_reference() -> None:
    group = typer.main.get_command(app)
    documented = sections((DOCS / "cli.md").read_text(encoding="utf-8"))
    commands = {"nact": group, **{f"nact {name}": group.commands[name] for name in group.list_commands(None)}}
    assert set(documented) == set(commands), "docs/cli_reference.py lists other commands than nact has"
    checked = 0
    for title, command in commands.items():
        for param in command.params:
            if param.param_type_name != "option" or getattr(param, "hidden", False):
                continue  # arguments are checked as the usage line; hidden options are not in --help
            for flag in [*param.opts, *param.secondary_opts]:
                pattern = rf"(?<![\w-]){re.escape(flag)}(?![\w-])"
                assert re.search(pattern, documented[title]), f"{flag} of {title} is not in docs/cli.md"
                checked += 1
    assert checked > 60  # every command's options were seen, not none


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.MULTILINE | re.DOTALL)


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a page."""
    found = set()
    for line in FENCE.sub("", markdown).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            text = re.sub(r"[`*_]|<[^>]+>", "", heading.group(1)).strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return found


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, flags=re.IGNORECASE)]


PAGES = [README, ROOT / "SECURITY.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files_and_headings_that_exist(page: Path) -> None:
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked.read_text(encoding="utf-8")), (
                f"{page.name}: link to {target}: no such heading"
            )


def test_the_link_check_can_fail(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n[here](#a-page), [gone](missing.md), `[code](not-a-link.md)`, [web](https://x.org)\n")
    assert relative_links(page) == ["#a-page", "missing.md"]
    assert anchors(page.read_text()) == {"a-page"}


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {target.partition("#")[0] for target in relative_links(README)}
    missing = [p.name for p in DOCS.glob("*.md") if f"docs/{p.name}" not in linked]
    assert missing == []


def test_the_readme_is_short_and_starts_with_its_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert text.startswith(README_START)
