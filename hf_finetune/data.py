"""Where the data comes from: local files per split, a local mirror of Hub ids, or the Hub.

Resolution order for ``data.dataset``: the mirror (``data.mirror`` or ``$HF_FINETUNE_DATA_MIRROR``)
when it holds ``<dataset>/<config>/``, else the Hugging Face Hub. ``data.files`` bypasses both.

Data without an evaluation split gets one carved out of its training split (``data.validation_size``):
here, in `load_splits`, so training, `validate` and `eval` of a finished run all see the same rows.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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


@dataclass
class SplitBy:
    """How `data.validation_size` carves the evaluation split: ``values`` has one entry per training row.

    ``stratified``: every value (a label) keeps its share of the rows on both sides. ``grouped``: rows
    with the same value (a QA context) stay on one side. A task says which with `Task.split_by`.
    """

    how: Literal["stratified", "grouped"]
    column: str
    values: Sequence[Any]


def load_splits(cfg: DataConfig, splits: list[str], split_by: Callable[[Any], SplitBy | None] | None = None):
    """Load the named splits as a ``datasets.DatasetDict``; every failure names the file or field.

    With ``data.validation_size``, the evaluation split is carved out of the training split (loaded for
    it when only the evaluation split is asked for), and the training split is what is left of it, whichever
    of the two is asked for; ``split_by(train)`` says how (None: a seeded shuffle).
    """
    import datasets

    source = resolve_source(cfg)
    wanted = list(dict.fromkeys(splits))
    carving = cfg.validation_size is not None or cfg.folds is not None
    # the carved split's name; none when `eval --split train` has set eval_split to the training split
    carved = cfg.eval_splits[0] if carving and cfg.eval_splits else None
    carved = None if carved == cfg.train_split else carved
    carving = carving and (carved in wanted or cfg.train_split in wanted)
    loading = [s for s in wanted if s != carved]
    if carving and cfg.train_split not in loading:
        loading.insert(0, cfg.train_split)
    out = {}
    for split in loading:
        field = _split_field(cfg, split)
        if source.kind == "hub":
            out[split] = _load_hub_split(cfg, split, field)
            continue
        if split not in source.files:
            available = ", ".join(sorted(source.files)) or "none"
            fix = f"Set `{field}` to one of them."
            if field == "data.eval_split":
                fix = (
                    f"Set `{field}` to one of them, carve one out of the training split with "
                    "`data.validation_size: 0.1`, or train without evaluation with `data.eval_split: null`."
                )
            raise DataError(
                f"`{field}`: split '{split}' not found in {source.description} (splits there: {available}). {fix}"
            )
        out[split] = _load_files(
            source.files[split],
            split,
            field if source.kind == "mirror" else f"data.files.{split}",
            cfg.encoding,
        )
    if carving:
        train = out[cfg.train_split]
        if carved is not None:
            _refuse_a_second_eval_split(cfg, source, carved, train)
        carve = carve_fold if cfg.folds is not None else carve_validation
        out[cfg.train_split], validation, note = carve(
            train, cfg, split_by(train) if split_by else None, carved or "validation"
        )
        if carved is not None:
            out[carved] = validation
        source.description += f" ({note})"
    out = {split: out[split] for split in wanted}
    logger.info("data: %s, splits %s", source.description, ", ".join(f"{k}={len(v)}" for k, v in out.items()))
    return datasets.DatasetDict(out), source


def _refuse_a_second_eval_split(cfg: DataConfig, source: DataSource, split: str, train) -> None:
    """`data.validation_size` or `data.folds` on data that has the evaluation split already: one of the two
    must go."""
    if source.kind == "hub":
        splits = getattr(train.info, "splits", None) or {}
        present = split in splits
    else:
        present = split in (source.files or {})
    if present:
        field = "data.folds" if cfg.folds is not None else "data.validation_size"
        raise RecipeError(
            field,
            f"{source.description} already has the evaluation split '{split}' (`data.eval_split`); drop "
            f"`{field}` to evaluate on it, or give the carved split another name "
            f"(e.g. `data.eval_split: heldout`).",
        )


def carve_validation(train, cfg: DataConfig, split_by: SplitBy | None = None, name: str = "validation"):
    """``(train, validation, note)``: ``data.validation_size`` rows of ``train`` moved to the evaluation
    split ``name``.

    Reproducible: the rows depend on the data, ``data.validation_size``, ``data.split_seed`` and
    ``split_by`` only (every process of a run picks the same ones), both sides keep the file order, and
    the selected datasets' fingerprints (the tokenised cache's key) follow from the chosen rows.
    """
    import numpy as np

    size, rows = cfg.validation_size, len(train)
    wanted = math.ceil(size * rows) if isinstance(size, float) else int(size)
    where = f"`data.validation_size`: {size} of the {rows} rows of the '{cfg.train_split}' split"
    if wanted >= rows:
        raise DataError(
            f"{where} leaves no training rows; give a smaller fraction or number, or a validation file."
        )
    order = [int(i) for i in np.random.default_rng(cfg.split_seed).permutation(rows)]
    if split_by is None:
        chosen, how = order[:wanted], "shuffled"
    elif split_by.how == "stratified":
        chosen, absent = _stratified(order, split_by.values, wanted, where)
        how = f"stratified by {split_by.column}"
        if absent:
            how += f"; too rare for a validation row, all in train: {', '.join(absent)}"
    else:
        chosen = _grouped(order, split_by.values, wanted)
        how = f"rows that share a {split_by.column} kept together"
    if not chosen:
        raise DataError(f"{where} leaves the evaluation split empty; give a larger fraction or number.")
    if len(chosen) >= rows:
        raise DataError(
            f"{where} leaves no training rows ({how}); give a smaller fraction or number, or a validation file."
        )
    picked = set(chosen)
    validation = train.select(sorted(picked))
    train = train.select([i for i in range(rows) if i not in picked])
    note = (
        f"{name}: {len(validation)} rows carved out of {cfg.train_split}, {len(train)} left to "
        f"train; {how}, data.split_seed {cfg.split_seed}"
    )
    logger.info("data.validation_size %s: %s", size, note)
    return train, validation, note


def carve_fold(train, cfg: DataConfig, split_by: SplitBy | None = None, name: str = "validation"):
    """``(train, fold, note)``: fold ``data.fold`` of ``data.folds`` moved to the evaluation split ``name``,
    the other folds left to train on.

    Every row is in exactly one fold, and the K folds are the same rows in every run (``data.split_seed``):
    stratified (each label's rows, in a seeded order, dealt to the folds in turn, so each fold holds each
    label's share), grouped (whole groups, in a seeded order, each to the fold with the fewest rows so far),
    or shuffled (rows dealt in turn). A split with fewer rows, rows of a label, or groups than folds is an
    error: some fold would have none.
    """
    import numpy as np

    k, fold, rows = cfg.folds, cfg.fold, len(train)
    where = f"`data.folds`: {k} folds of the {rows} rows of the '{cfg.train_split}' split"
    order = [int(i) for i in np.random.default_rng(cfg.split_seed).permutation(rows)]
    assigned = [0] * rows
    if split_by is None or split_by.how == "stratified":
        values = split_by.values if split_by is not None else [None] * rows
        counts: dict[Any, int] = {}
        for value in values:
            counts[value] = counts.get(value, 0) + 1
        short = {v: c for v, c in counts.items() if c < k}
        if short:
            named = ", ".join(f"{v} has {c}" for v, c in sorted(short.items(), key=lambda vc: str(vc[0])))
            what = f"label {named} rows" if split_by is not None else f"it has {rows} rows"
            raise DataError(
                f"{where}: too few rows for {k} folds ({what}; every fold needs at least one of each); "
                "give fewer folds, or more data."
            )
        # each label's rows in the seeded order, dealt to the folds in turn, one count running over the
        # labels so that the folds' sizes differ by one row at most
        dealt = 0
        for label in sorted(counts, key=str):
            for i in order:
                if values[i] == label:
                    assigned[i] = dealt % k
                    dealt += 1
        how = f"stratified by {split_by.column}" if split_by is not None else "shuffled"
    else:
        members: dict[Any, list[int]] = {}
        for i in order:
            members.setdefault(split_by.values[i], []).append(i)
        if len(members) < k:
            raise DataError(
                f"{where}: too few for {k} folds (its rows share {len(members)} {split_by.column} values, "
                "kept together); give fewer folds, or more data."
            )
        sizes = [0] * k
        for group in members.values():
            target = min(range(k), key=lambda f: (sizes[f], f))
            sizes[target] += len(group)
            for i in group:
                assigned[i] = target
        how = f"rows that share a {split_by.column} kept together"
    heldout = [i for i in range(rows) if assigned[i] == fold]
    validation = train.select(heldout)
    train = train.select([i for i in range(rows) if assigned[i] != fold])
    note = (
        f"{name}: fold {fold} of {k} of {cfg.train_split} ({len(validation)} rows), {len(train)} rows in "
        f"the other folds to train; {how}, data.split_seed {cfg.split_seed}"
    )
    logger.info("data.folds %d: %s", k, note)
    return train, validation, note


def _stratified(
    order: list[int], values: Sequence[Any], wanted: int, where: str
) -> tuple[list[int], list[str]]:
    """``wanted`` rows, each label's count in proportion to its share (largest remainders get the extra
    rows), and the labels left without a validation row: a label keeps at least one row in train, so one
    too rare for a validation row stays there whole (warned)."""
    counts: dict[Any, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    rows = len(values)
    exact = {value: wanted * count / rows for value, count in counts.items()}
    quota = {value: min(math.floor(share), counts[value] - 1) for value, share in exact.items()}
    by_remainder = sorted(counts, key=lambda v: (-(exact[v] - math.floor(exact[v])), -counts[v], str(v)))
    missing = wanted - sum(quota.values())
    while missing > 0:
        room = [v for v in by_remainder if quota[v] < counts[v] - 1]
        if not room:
            raise DataError(
                f"{where} cannot be stratified: every label needs at least one training row, which leaves "
                f"at most {sum(quota.values())} rows to validate on; give a smaller fraction or number."
            )
        for value in room[:missing]:
            quota[value] += 1
        missing = wanted - sum(quota.values())
    absent = [f"{v} ({counts[v]} rows)" for v in sorted((v for v, q in quota.items() if q == 0), key=str)]
    if absent:
        logger.warning(
            "data.validation_size: no validation row for %s (too rare for its share); they all train",
            ", ".join(absent),
        )
    chosen, taken = [], dict.fromkeys(counts, 0)
    for i in order:
        value = values[i]
        if taken[value] < quota[value]:
            taken[value] += 1
            chosen.append(i)
    return chosen, absent


def _grouped(order: list[int], values: Sequence[Any], wanted: int) -> list[int]:
    """Whole groups, in the seeded order of their first row, until at least ``wanted`` rows are taken."""
    members: dict[Any, list[int]] = {}
    for i, value in enumerate(values):
        members.setdefault(value, []).append(i)
    chosen: list[int] = []
    seen: set[Any] = set()
    for i in order:
        if len(chosen) >= wanted:
            break
        value = values[i]
        if value not in seen:
            seen.add(value)
            chosen.extend(members[value])
    return chosen


def read_data_file(
    path: str, field: str, encoding: str | None = None, encoding_option: str = "data.encoding"
):
    """One data file (any of `FORMATS`) as a ``datasets.Dataset``; errors name ``field`` (e.g. a CLI
    argument) and the file, and a file that does not decode names ``encoding_option`` as the fix."""
    return _load_files([path], "train", field, encoding, encoding_option)


def _split_field(cfg: DataConfig, split: str) -> str:
    if split == cfg.train_split:
        return "data.train_split"
    if split == cfg.test_split:
        return "data.test_split"
    return "data.eval_split"


def _load_files(
    paths: list[str],
    split: str,
    field: str,
    encoding: str | None = None,
    encoding_option: str = "data.encoding",
):
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
        return _load_conll(paths, field, encoding, encoding_option)
    if encoding is not None and builder != "parquet":
        kwargs = {**kwargs, "encoding": encoding}  # unset: the builders' UTF-8 (and an unchanged fingerprint)
    try:
        ds = datasets.load_dataset(builder, data_files={split: paths}, split=split, **kwargs)
    except Exception as exc:  # datasets raises many types for unreadable files
        if "corresponds to no data" in str(exc) or all(Path(p).stat().st_size == 0 for p in paths):
            raise DataError(
                f"`{field}`: split '{split}' is empty ({', '.join(paths)} has no rows); "
                "give a file with examples."
            ) from None
        raise DataError(_why_unreadable(paths, builder, field, encoding, encoding_option, exc)) from exc
    if builder == "json":
        _require_text(ds, paths, field, encoding, encoding_option)
    return ds


def _require_text(ds, paths: list[str], field: str, encoding: str | None, encoding_option: str) -> None:
    """pyarrow's JSON reader keeps bytes that are not UTF-8 inside its strings, so a Latin-1 JSON Lines file
    "loads" and fails on first use; a full validation of the table (UTF-8 included, about 1.5 GB/s) finds it
    now, and the file is scanned for the line."""
    import pyarrow as pa

    try:
        ds.data.table.validate(full=True)
    except pa.ArrowInvalid as exc:
        from .textfile import encoding_message, first_undecodable

        for path in paths:
            problem = first_undecodable(path, encoding)
            if problem is not None:
                raise DataError(encoding_message(field, path, problem, encoding, encoding_option)) from None
        raise DataError(
            f"`{field}`: {', '.join(paths)} did not load as valid text: {first_line(exc)}"
        ) from None


def _why_unreadable(
    paths: list[str], builder: str, field: str, encoding: str | None, encoding_option: str, exc: Exception
) -> str:
    """The message for files the loader failed on: scanned (only now) for the first byte that does not
    decode, then (JSON) the first line that does not parse; else the loader's own first line."""
    from .textfile import encoding_message, first_bad_json_line, first_undecodable

    if builder in ("csv", "json"):
        for path in paths:
            problem = first_undecodable(path, encoding)
            if problem is not None:
                return encoding_message(field, path, problem, encoding, encoding_option)
    if builder == "json":
        for path in paths:
            bad = first_bad_json_line(path, encoding)
            if bad is not None:
                return (
                    f"`{field}`: could not read {path} as {bad.kind}: line {bad.line} {bad.problem}: "
                    f"{bad.excerpt!r}. {bad.fix}"
                )
    return f"`{field}`: could not read {', '.join(paths)} as {builder}: {first_line(exc)}"


def _load_conll(paths: list[str], field: str, encoding: str | None, encoding_option: str):
    import datasets

    from .conll import TAGS, TOKENS, read_conll

    words = datasets.List(datasets.Value("string"))
    features = datasets.Features({"id": datasets.Value("string"), TOKENS: words, TAGS: words})
    rows = read_conll(paths, field, encoding, encoding_option)
    return datasets.Dataset.from_dict(rows, features=features)


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
