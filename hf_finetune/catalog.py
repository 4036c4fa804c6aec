"""The files that ship with hf-finetune: recipes, bench files, search spaces and accelerate configs.

They live in ``recipes/`` (a folder of YAML a user browses in the repository, and package data inside the
wheel, installed as ``hf_finetune/recipes``), one kind per top folder: ``bench/`` bench files, ``tune/``
search spaces, ``accelerate/`` accelerate configs, every other folder recipes. A name such as ``glue/sst2``
resolves to the bundled file; a path that exists is used as it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

RECIPES_ENV = "HF_FINETUNE_RECIPES"  # a folder laid out like recipes/, used instead of the bundled one

RECIPE = "recipe"
BENCH = "bench"
SPACE = "space"
ACCELERATE = "accelerate"
KINDS = {BENCH: "bench", SPACE: "tune", ACCELERATE: "accelerate"}  # kind -> its top folder; else recipes
TITLES = {  # every kind, in the order they are listed, with what to do with one
    RECIPE: "recipes (hf-finetune train|validate|plan|tune NAME)",
    BENCH: "bench files (hf-finetune bench NAME)",
    SPACE: "search spaces (hf-finetune tune RECIPE --space NAME)",
    ACCELERATE: "accelerate configs (accelerate launch --config_file PATH)",
}


class Entry(NamedTuple):
    kind: str  # RECIPE, BENCH, SPACE or ACCELERATE
    name: str  # the path under recipes/ without .yaml: glue/sst2, tune/default-space
    path: Path


def recipes_dir() -> Path | None:
    """The folder of bundled files: $HF_FINETUNE_RECIPES, the package data of an installed wheel
    (hf_finetune/recipes), the repository's recipes/ of a source checkout or editable install, or
    ./recipes."""
    here = Path(__file__).resolve().parent
    for candidate in (
        os.environ.get(RECIPES_ENV),
        here / "recipes",
        here.parent / "recipes",
        Path.cwd() / "recipes",
    ):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def kind_of(relative: Path) -> str:
    """The kind of a bundled file from its path under recipes/."""
    top = relative.parts[0] if len(relative.parts) > 1 else ""
    return next((kind for kind, folder in KINDS.items() if folder == top), RECIPE)


def resolve(name: str, kind: str | None = None) -> str:
    """A path that exists, or the name of a bundled file (``glue/sst2``, ``tune/default-space``); with a
    ``kind``, its folder may be left out (``default-space`` for a SPACE). A name that matches nothing comes
    back unchanged, for the loader to report as not found."""
    if Path(name).exists():
        return name
    root = recipes_dir()
    if root is None:
        return name
    names = [name]
    folder = KINDS.get(kind or "")
    if folder and not name.startswith(f"{folder}/"):
        names.insert(0, f"{folder}/{name}")
    for each in names:
        for candidate in (root / each, root / f"{each}.yaml"):
            if candidate.is_file():
                return str(candidate)
    return name


def entries(kind: str | None = None) -> list[Entry]:
    """Every bundled file, or those of one kind, sorted by kind (in TITLES order) then name."""
    if kind is not None and kind not in TITLES:
        raise ValueError(f"unknown kind {kind!r}; kinds are {', '.join(TITLES)}")
    root = recipes_dir()
    if root is None:
        return []
    found = []
    for path in root.rglob("*.yaml"):
        relative = path.relative_to(root)
        file_kind = kind_of(relative)
        if kind is None or file_kind == kind:
            found.append(Entry(file_kind, relative.with_suffix("").as_posix(), path))
    order = list(TITLES)
    return sorted(found, key=lambda e: (order.index(e.kind), e.name))


def describe(path: Path) -> str:
    """The first comment line of a bundled file that is not a launch command: its one-line summary."""
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.lstrip("#").strip()
        if line.startswith("#") and text and not text.lower().startswith(("launch", "run:", "hf-finetune")):
            return text
    return ""
