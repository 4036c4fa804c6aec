"""Where the data comes from: local files per split, a local mirror of Hub ids, or the Hub.

Resolution order for ``data.dataset``: the mirror (``data.mirror`` or ``$HF_FINETUNE_DATA_MIRROR``)
when it holds ``<dataset>/<config>/``, else the Hugging Face Hub. ``data.files`` bypasses both.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .config.schema import DataConfig
from .errors import DataError, RecipeError, first_line

logger = logging.getLogger(__name__)

MIRROR_ENV = "HF_FINETUNE_DATA_MIRROR"
PARQUET_EXPORT = "refs/convert/parquet"  # the Hub's automatic Parquet conversion of a dataset
# file extension -> (datasets packaged builder, extra builder kwargs)
FORMATS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
    ".conll": ("conll", {}),  # token-per-line files, read by hf_finetune.conll
    ".txt": ("conll", {}),
}


@dataclass
class DataSource:
    """Resolved origin of the splits: a file list per split, or a Hub id."""

    kind: str  # "files" | "mirror" | "hub"
    files: dict[str, list[str]] | None = None
    description: str = ""
    mirror_root: str | None = None


def resolve_source(cfg: DataConfig) -> DataSource:
    if cfg.files:
        files = {s: (p if isinstance(p, list) else [p]) for s, p in cfg.files.items()}
        return DataSource("files", files, "local files")
    mirror = cfg.mirror
    explicit = mirror is not None
    if mirror is None and os.environ.get(MIRROR_ENV):
        mirror = os.environ[MIRROR_ENV]
    if mirror:
        root = Path(mirror)
        if not root.is_dir():
            if explicit:
                raise RecipeError(
                    "data.mirror",
                    f"directory not found: {root}. Fix the path, or set "
                    "`data.mirror=null` to load the dataset from the Hub.",
                )
            logger.warning("%s=%s is not a directory; ignoring it", MIRROR_ENV, mirror)
        else:
            folder = root / cfg.dataset if cfg.dataset else root
            if cfg.config:
                folder = folder / cfg.config
            if folder.is_dir():
                files = _split_files(folder)
                if files:
                    where = f"mirror {folder}"
                    return DataSource("mirror", files, where, str(root.absolute()))
            if explicit:
                raise RecipeError(
                    "data.mirror",
                    f"{root} has no folder {folder.relative_to(root)}/ with split "
                    "files for this dataset; fix `data.dataset`/`data.config`, or set "
                    "`data.mirror=null` to use the Hub.",
                )
            logger.info("mirror %s has no %s; using the Hub", root, folder)
    name = cfg.dataset + (f"/{cfg.config}" if cfg.config else "")
    return DataSource("hub", None, f"Hub dataset {name}")


def _split_files(folder: Path) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in FORMATS:
            files.setdefault(path.stem, []).append(str(path))
    return files


def load_splits(cfg: DataConfig, splits: list[str]):
    """Load the named splits as a ``datasets.DatasetDict``; every failure names the file or field."""
    import datasets

    source = resolve_source(cfg)
    out = {}
    for split in dict.fromkeys(splits):
        field = _split_field(cfg, split)
        if source.kind == "hub":
            out[split] = _load_hub_split(cfg, split, field)
            continue
        if split not in source.files:
            available = ", ".join(sorted(source.files)) or "none"
            raise DataError(
                f"`{field}`: split '{split}' not found in {source.description} "
                f"(splits there: {available}). Set `{field}` to one of them."
            )
        out[split] = _load_files(
            source.files[split], split, field if source.kind == "mirror" else f"data.files.{split}"
        )
    logger.info("data: %s, splits %s", source.description, ", ".join(f"{k}={len(v)}" for k, v in out.items()))
    return datasets.DatasetDict(out), source


def _split_field(cfg: DataConfig, split: str) -> str:
    if split == cfg.train_split:
        return "data.train_split"
    if split == cfg.test_split:
        return "data.test_split"
    return "data.eval_split"


def _load_files(paths: list[str], split: str, field: str):
    import datasets

    suffixes = set()
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise DataError(
                f"`{field}`: file not found: {p}. Fix the path (relative paths are relative to "
                "the working directory)."
            )
        if p.suffix not in FORMATS:
            raise DataError(
                f"`{field}`: {p} has the unsupported extension '{p.suffix}'; use one of {', '.join(FORMATS)}."
            )
        if not os.access(p, os.R_OK):
            raise DataError(f"`{field}`: {p} is not readable (permissions).")
        suffixes.add(p.suffix)
    if len({FORMATS[s][0] + repr(FORMATS[s][1]) for s in suffixes}) > 1:  # .json + .jsonl may mix
        raise DataError(
            f"`{field}`: files of one split must share one format, got {', '.join(sorted(suffixes))}."
        )
    builder, kwargs = FORMATS[next(iter(suffixes))]
    if builder == "conll":
        return _load_conll(paths, field)
    try:
        ds = datasets.load_dataset(builder, data_files={split: paths}, split=split, **kwargs)
    except Exception as exc:  # datasets raises many types for unreadable files
        if "corresponds to no data" in str(exc) or all(Path(p).stat().st_size == 0 for p in paths):
            raise DataError(
                f"`{field}`: split '{split}' is empty ({', '.join(paths)} has no rows); "
                "give a file with examples."
            ) from None
        raise DataError(
            f"`{field}`: could not read {', '.join(paths)} as {builder}: {first_line(exc)}"
        ) from exc
    return ds


def _load_conll(paths: list[str], field: str):
    import datasets

    from .conll import TAGS, TOKENS, read_conll

    words = datasets.List(datasets.Value("string"))
    features = datasets.Features({"id": datasets.Value("string"), TOKENS: words, TAGS: words})
    return datasets.Dataset.from_dict(read_conll(paths, field), features=features)


def _load_hub_split(cfg: DataConfig, split: str, field: str):
    import datasets

    try:
        try:
            return datasets.load_dataset(cfg.dataset, cfg.config, split=split, revision=cfg.revision)
        except RuntimeError as exc:
            # datasets>=4 cannot run loading scripts (e.g. `conll2003`); the Hub keeps a Parquet
            # export of most such datasets, which loads the same rows and features.
            if "scripts are no longer supported" not in str(exc) or cfg.revision:
                raise
            logger.warning(
                "%s is a script dataset; loading its Parquet export (revision %s)",
                cfg.dataset,
                PARQUET_EXPORT,
            )
            return datasets.load_dataset(cfg.dataset, cfg.config, split=split, revision=PARQUET_EXPORT)
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise DataError(f"`{field}`: {first_line(exc)}") from exc
        raise DataError(_hub_hint(cfg, exc)) from exc
    except Exception as exc:  # network, missing repo, missing config, auth
        raise DataError(_hub_hint(cfg, exc)) from exc


def _hub_hint(cfg: DataConfig, exc: Exception) -> str:
    name = cfg.dataset + (f" (config '{cfg.config}')" if cfg.config else "")
    return (
        f"`data.dataset`: could not load Hub dataset {name}: {first_line(exc)}. Offline, point "
        f"`data.mirror` or ${MIRROR_ENV} at a local mirror, or use `data.files`."
    )
