"""The documentation: the site builds strictly, its reference lists every field the loaders accept, the README
stays short and points into the site, its figures agree with the figures page, and its quickstart runs."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built by `mkdocs build --strict` (what `make docs` runs) into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_strict_build_has_every_page(site):
    import yaml

    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    pages = [next(iter(entry.values())) for entry in config["nav"]]
    on_disk = sorted(p.name for p in DOCS.glob("*.md"))
    assert sorted(pages) == on_disk, "every page is in the nav and every nav entry is a page"
    for page in pages:
        html = site / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
        assert html.is_file(), html


def _ids(html: Path) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', html.read_text(encoding="utf-8")))


def test_reference_lists_every_field_the_loader_accepts(site):
    """The loader's own view of each section (not the generator's), against the anchors of the built pages."""
    from transformers import TrainingArguments

    from hf_finetune.bench.spec import BenchSettings, TaskEntry
    from hf_finetune.config import (
        DataConfig,
        FewShotSection,
        GradualUnfreezingConfig,
        HubConfig,
        ModelConfig,
        PeftSection,
        StrategyConfig,
        section_fields,
    )
    from hf_finetune.config.schema import is_secret
    from hf_finetune.tasks import available_tasks
    from hf_finetune.tune.space import ParamSpec, PrunerSettings, SamplerSettings

    recipe_ids = _ids(site / "recipes/index.html")
    expected = {
        "model": ModelConfig,
        "data": DataConfig,
        "strategy": StrategyConfig,
        "strategy.gradual_unfreezing": GradualUnfreezingConfig,
        "peft": PeftSection,
        "few_shot": FewShotSection,
        "hub": HubConfig,
    }
    builtin = {
        n: s for n, s in available_tasks().items() if s.task_class.__module__.startswith("hf_finetune.")
    }
    assert set(builtin) == {"text-classification", "token-classification", "question-answering"}
    expected.update({f"task.{name}": spec.config_class for name, spec in builtin.items()})
    missing = [f"{key}.{name}" for key, cls in expected.items() for name in section_fields(cls)]
    missing = [m for m in missing if m.replace(".", "-") not in recipe_ids]
    training = [f.name for f in dataclasses.fields(TrainingArguments) if f.init and not is_secret(f.name)]
    missing += [f"training.{n}" for n in [*training, "resume"] if f"training-{n}" not in recipe_ids]
    assert not missing, f"not in the recipe reference: {missing}"

    site_ids = set().union(*(_ids(p) for p in site.rglob("*.html")))
    others = {
        "bench": BenchSettings,
        "bench.task": TaskEntry,
        "space.sampler": SamplerSettings,
        "space.pruner": PrunerSettings,
        "space.parameter": ParamSpec,
    }
    missing = [f"{key}.{n}" for key, cls in others.items() for n in section_fields(cls)]
    assert not [m for m in missing if m.replace(".", "-") not in site_ids]


def test_every_field_has_help_text():
    from hf_finetune import reference

    for key in reference.keys():
        for name, _type, _default, help_text in reference.rows(key):
            assert len(help_text) > 10, (key, name)


def test_readme_is_short_and_links_into_the_docs():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    for heading in ("## Two commands", "## Your own data in five minutes", "## Commands", "## Figures"):
        assert heading in text, heading
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", text)
    assert len(links) >= 8, links
    for link in links:
        assert (REPO / link).is_file(), link


def _headline_rows() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Figures", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_readme_figures_are_the_figures_pages():
    """Each headline figure (a bold number in the README's table) is also on docs/figures.md, which holds every
    figure with its command, machine kind, commit and date; a figure changed in one place only fails here."""
    figures = (DOCS / "figures.md").read_text(encoding="utf-8")
    rows = _headline_rows()
    assert 5 <= len(rows) <= 10, rows  # headlines only: the rest are on the figures page
    for row in rows:
        assert len(row) >= 4 and all(row), row  # what, command, machine, date, result
        assert re.search(r"20\d\d-\d\d-\d\d", " ".join(row)), f"no date: {row}"
        for number in re.findall(r"\*\*([^*]+)\*\*", row[-1]):
            assert number in figures, f"README figure {number!r} is not on docs/figures.md"


def quickstart_commands() -> list[str]:
    """The README's quickstart, as written (one command per line)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Your own data in five minutes", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [
        line.split("  #")[0].strip()
        for line in block.splitlines()
        if line.strip() and not line.startswith("#")
    ]


@pytest.mark.slow
def test_quickstart_runs_as_written(tmp_path, shared_data):
    """Run in a folder that looks like a fresh clone's root (the venv and examples/ linked in), on a small sample."""
    commands = quickstart_commands()
    assert any(c.startswith("hf-finetune init") for c in commands), commands
    assert any("--dry-run" in c for c in commands), commands
    (tmp_path / ".venv").symlink_to(BIN.parent)
    (tmp_path / "examples").symlink_to(REPO / "examples")
    script = "set -euo pipefail\n" + "\n".join(re.sub(r"--rows \d+", "--rows 240", c) for c in commands)
    env = {**os.environ, "HF_FINETUNE_DATA_MIRROR": str(shared_data), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = proc.stdout
    assert "text-classification" in out and "sentiment" in out, out  # what init inferred, printed
    predictions = [line for line in (tmp_path / "predictions.jsonl").read_text().splitlines() if line]
    assert predictions and all('"label": "' in p for p in predictions)
    assert "model.safetensors" in out  # the dry run lists the upload
