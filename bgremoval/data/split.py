"""Group-aware, deterministic train/val/test splits, or the user's own split file."""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Rows the pipeline does not split: photos of other kinds that guard against forgetting (with masks), and
# photos without masks that training learns from through a teacher's soft masks.
REFERENCE, UNLABELLED = "reference", "unlabelled"


def group_of(name: str, pattern: re.Pattern[str]) -> str:
    """The group a file belongs to: the regex's first capture group, else the whole name."""
    match = pattern.search(name)
    if match is None:
        return name  # no match: the file is a group of its own
    return match.group(1) if match.groups() else match.group(0)


def assign_groups(names: pd.Series, group_pattern: str) -> pd.Series:
    """Group label per file name (the base name without extension)."""
    try:
        pattern = re.compile(group_pattern)
    except re.error as exc:
        raise ValueError(f"prepare.group_pattern {group_pattern!r} is not a valid regex: {exc}") from exc
    return names.map(lambda n: group_of(n, pattern))


def split_groups(groups: pd.Series, fractions: dict[str, float], seed: int) -> pd.Series:
    """Split label per row such that every group lands in exactly one split.

    Groups are shuffled with the seed, then each goes to the split furthest below its target
    image count, so splits come out near their fractions whatever the group sizes.
    """
    _check_fractions(fractions)
    sizes = Counter(groups)
    wanted = [s for s in SPLITS if fractions.get(s, 0) > 0]
    if len(sizes) < len(wanted):
        raise ValueError(
            f"prepare.group_pattern finds {len(sizes)} group(s) but {len(wanted)} splits need at "
            "least one each; loosen the pattern or set a split's fraction to 0"
        )
    order = sorted(sizes)  # sorted first so the shuffle depends on the seed alone
    rng = np.random.default_rng(seed)
    rng.shuffle(order)
    total = sum(sizes.values())
    counts = {s: 0 for s in wanted}
    assigned: dict[str, str] = {}
    for i, group in enumerate(order):
        remaining = len(order) - i
        empty = [s for s in wanted if counts[s] == 0]
        # Keep back enough groups that no requested split ends up empty.
        candidates = empty if len(empty) >= remaining else wanted
        best = max(candidates, key=lambda s: fractions[s] * total - counts[s])
        assigned[group] = best
        counts[best] += sizes[group]
    return groups.map(assigned)


def split_checked(groups: pd.Series, draft: pd.Series, fractions: dict[str, float], seed: int) -> pd.Series:
    """Split label per row where `draft` marks the rows whose mask is an unreviewed draft: every group holding a
    draft trains (val and test are scored on masks a person checked), and the other groups are split by the
    fractions among themselves, so the drafts come on top of the train share rather than crowding a person's
    masks out of it."""
    draft = draft.fillna(False).astype(bool)
    pinned = groups.isin(set(groups[draft]))
    if not pinned.any():
        return split_groups(groups, fractions, seed)
    out = pd.Series("train", index=groups.index, dtype=object)
    try:
        out[~pinned] = split_groups(groups[~pinned], fractions, seed)
    except ValueError as exc:
        raise ValueError(f"{exc}. Only {groups[~pinned].nunique()} group(s) hold no unreviewed draft, and val and test "
                         "are scored on masks a person drew or checked: correct more drafts (`bgremoval label push`, "
                         "then `pull`) or give masks for more photos") from None
    return out


def read_split_file(path: Path, names: pd.Series) -> pd.Series:
    """Split label per row from a CSV with columns name,split (name = base name; a path's stem is used)."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"split file {path}: cannot be read as CSV ({exc})") from exc
    missing = {"name", "split"} - set(table.columns)
    if missing:
        raise ValueError(f"split file {path}: needs columns 'name' and 'split'; missing {sorted(missing)}")
    outside = [str(n) for n in table["name"] if _escapes(str(n))]
    if outside:
        raise ValueError(
            f"split file {path}: entries must name files inside the data folder, by base name (cat_001) or a "
            f"relative path (images/cat_001.jpg); these point outside it: {'; '.join(outside[:10])}. Fix or remove those rows."
        )
    # Only the base name is used: pairs are matched by it, whatever folder the entry names.
    table["name"] = table["name"].map(lambda n: PurePosixPath(str(n).replace("\\", "/")).stem)
    bad = table.loc[~table["split"].isin(SPLITS), ["name", "split"]]
    if len(bad):
        raise ValueError(
            f"split file {path}: split must be one of {SPLITS}; bad rows: "
            + ", ".join(f"{n}={s!r}" for n, s in bad.head(10).itertuples(index=False))
        )
    dupes = table["name"][table["name"].duplicated()]
    if len(dupes):
        raise ValueError(f"split file {path}: names listed twice: {sorted(set(dupes))[:10]}")
    unknown = sorted(set(table["name"]) - set(names))
    if unknown:
        log.warning("split file %s names %d files not in the data, e.g. %s", path, len(unknown), unknown[:5])
    return names.map(dict(zip(table["name"], table["split"])))


def _escapes(entry: str) -> bool:
    """An absolute path, a drive, or a `..` step: a split-file entry that leaves the data folder."""
    posix = PurePosixPath(entry.replace("\\", "/"))
    return posix.is_absolute() or ".." in posix.parts or PureWindowsPath(entry).drive != ""


def _check_fractions(fractions: dict[str, float]) -> None:
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f"prepare.splits: unknown split(s) {sorted(unknown)}; use {SPLITS}")
    if any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise ValueError(f"prepare.splits must be non-negative and sum to 1; got {fractions}")
