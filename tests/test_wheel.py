"""The wheel, installed into a fresh virtual environment outside the repository, carries the bundled files:
`hf-finetune recipes` lists them by kind, `hf-finetune validate glue/sst2` runs against the data mirror, and
`hf-finetune tune glue/rte` finds its default search space (tune/default-space).

The environment sees the project's installed dependencies through a .pth file naming this environment's
site-packages (a plain path line: the editable install's own .pth files there are not processed, so the
checkout cannot leak in), and gets the wheel with `pip install --no-deps --no-index`: nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from hf_finetune import catalog

from .conftest import REPO
from .test_cli import GLUE, listed_by_kind

pytestmark = pytest.mark.slow


def _run(cmd, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, (
        f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the packaging inputs: an in-tree build would leave build/ in the checkout, and build/lib
    keeps the files of earlier builds."""
    src = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("hf_finetune", "recipes"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, source])
    (found,) = dist.glob("hf_finetune-*.whl")
    return found


def _fresh_venv(root: Path, *install: str | Path) -> dict:
    """A virtual environment under ``root`` that sees this environment's packages, with ``pip install
    --no-deps *install`` done in it: its bin/, and the environment to run it with, from a working directory
    outside the repository."""
    env_dir = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir])
    python = env_dir / "bin" / "python"
    purelib = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    )
    (purelib / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", *install])
    cwd = root / "work"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", catalog.RECIPES_ENV)}
    env.update(
        PATH=f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(root / "hf-home"),  # a temporary Hugging Face cache, seeded where a test needs it
        OMP_NUM_THREADS="1",
    )
    return {"bin": env_dir / "bin", "root": env_dir, "cwd": cwd, "env": env}


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> dict:
    """A fresh virtual environment with the wheel installed."""
    return _fresh_venv(tmp_path_factory.mktemp("installed"), wheel)


def _cli(venv: dict, *args, **env) -> subprocess.CompletedProcess:
    return _run([venv["bin"] / "hf-finetune", *args], cwd=venv["cwd"], env={**venv["env"], **env})


def test_the_wheel_holds_every_bundled_yaml_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    bundled = {p.relative_to(REPO / "recipes").as_posix() for p in (REPO / "recipes").rglob("*.yaml")}
    assert len(bundled) > 20
    assert {f"hf_finetune/recipes/{name}" for name in bundled} <= names
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "hf_finetune").rglob("*.py")}
    assert len(modules) > 40
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"


def test_pyproject_lists_every_package():
    """pyproject.toml names the packages one by one (recipes/ is mapped in): a new package folder or recipe
    folder must be added there, or the wheel silently lacks it."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    code = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "hf_finetune").rglob("__init__.py")}
    data = {
        ".".join(("hf_finetune", *p.relative_to(REPO).parts))
        for p in [REPO / "recipes", *(d for d in (REPO / "recipes").rglob("*") if d.is_dir())]
    }
    assert listed == code | data


def test_the_installed_package_and_its_recipes_come_from_the_environment(venv):
    code = "import hf_finetune, hf_finetune.catalog as c; print(hf_finetune.__file__); print(c.recipes_dir())"
    proc = _run([venv["bin"] / "python", "-c", code], cwd=venv["cwd"], env=venv["env"])
    module, recipes = (Path(line) for line in proc.stdout.split())
    site = venv["root"].resolve()
    assert site in module.resolve().parents, module  # not the checkout's hf_finetune
    assert recipes.resolve() == module.resolve().parent / "recipes"
    assert (recipes / "tune" / "default-space.yaml").is_file()


def test_recipes_lists_the_bundled_files_by_kind(venv):
    out = _cli(venv, "recipes").stdout
    sections = listed_by_kind(out)
    assert list(sections)[:4] == list(catalog.TITLES.values()), out
    recipes, bench, spaces, accelerate = (sections[catalog.TITLES[k]] for k in catalog.TITLES)
    assert {f"glue/{name}" for name in GLUE} | {"ner/conll2003", "qa/squad"} <= set(recipes)
    assert list(bench) == ["bench/few-shot", "bench/glue-quick"]
    assert list(spaces) == ["tune/default-space", "tune/pairs-space"]
    assert {"accelerate/cpu-2proc", "accelerate/single-gpu", "accelerate/fsdp"} <= set(accelerate)
    assert str(venv["root"]) in out.splitlines()[-1]  # the footer names the installed folder

    only = _cli(venv, "recipes", "--kind", "bench").stdout
    assert catalog.TITLES[catalog.BENCH] in only and catalog.TITLES[catalog.RECIPE] not in only


def test_validate_a_bundled_recipe_against_the_mirror(venv, shared_data):
    # make sentence-transformers/all-MiniLM-L6-v2 resolve offline in the temporary cache, as `make install` does
    seeded = _run([venv["bin"] / "python", "-m", "hf_finetune.bundled"], cwd=venv["cwd"], env=venv["env"])
    assert "all-MiniLM-L6-v2" in seeded.stdout
    proc = _cli(venv, "validate", "glue/sst2", "--json", HF_FINETUNE_DATA_MIRROR=str(shared_data))
    summary = json.loads(proc.stdout)
    assert summary["task"] == "text-classification"
    assert summary["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert str(shared_data) in summary["data"]
    assert summary["splits"]["train"] > 60_000 and summary["splits"]["validation"] == 872


def test_tune_finds_its_default_space(venv, shared_data, tiny_model_dir):
    out = venv["cwd"] / "tune-rte"
    proc = _cli(
        venv,
        "tune",
        "glue/rte",
        "--trials",
        "1",
        "--no-progress",
        f"model.name_or_path={tiny_model_dir}",
        "data.max_train_samples=16",
        "--output-dir",  # an option between overrides
        out,
        "data.max_eval_samples=16",
        "data.max_seq_length=32",
        "training.max_steps=2",
        "training.per_device_train_batch_size=8",
        "training.bf16=false",
        "training.use_cpu=true",
        HF_FINETUNE_DATA_MIRROR=str(shared_data),
    )
    assert "1 trials (1 this run" in proc.stdout, proc.stdout + proc.stderr
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    (row,) = rows
    assert row["trial"] == 0 and row["status"] == "ok" and row.get("start") == "recipe"
    assert isinstance(row["score"], float) and 0.0 <= row["score"] <= 1.0
    # the trial's fields are those of the bundled default space: it was found and read
    space = yaml.safe_load((REPO / "recipes" / "tune" / "default-space.yaml").read_text())["parameters"]
    unconditional = {name for name, spec in space.items() if isinstance(spec, dict) and "when" not in spec}
    assert unconditional <= set(row["params"]) <= set(space), row["params"]
    assert (out / "leaderboard.md").is_file() and (out / "best_recipe.yaml").is_file()


def test_an_editable_install_reads_the_recipes_folder_of_the_checkout(source, tmp_path):
    """What `make install` does (`pip install -e .`): the bundled files are the checkout's recipes/ itself."""
    editable = _fresh_venv(tmp_path, "--no-build-isolation", "-e", source)
    out = _cli(editable, "recipes").stdout
    assert "tune/default-space" in listed_by_kind(out)[catalog.TITLES[catalog.SPACE]]
    assert f"under {source / 'recipes'}," in out.splitlines()[-1]
    (source / "recipes" / "glue" / "new-one.yaml").write_text("# A recipe added to the checkout\n")
    try:
        assert (
            "glue/new-one" in listed_by_kind(_cli(editable, "recipes").stdout)[catalog.TITLES[catalog.RECIPE]]
        )
    finally:
        (source / "recipes" / "glue" / "new-one.yaml").unlink()
