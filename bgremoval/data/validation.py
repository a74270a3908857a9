"""Data validation of the manifest with a Great Expectations suite, and a report people can act on."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bgremoval.data.content import copies_in
from bgremoval.data.manifest import DRAFT, PERSON
from bgremoval.data.masks import KINDS
from bgremoval.data.split import REFERENCE, SPLITS, UNLABELLED

log = logging.getLogger(__name__)

IMAGE_MODES = ("RGB", "RGBA", "L")
NOISIEST = 5  # JPEG masks listed by name in the report
CRITICAL = "critical"  # GX's severity of an expectation that stops the pipeline; "warning" ones only report


@dataclass(frozen=True)
class Thresholds:
    """What the data must satisfy (from params.yaml validate:)."""

    min_size: int
    fg_min: float
    fg_max: float
    split_tolerance: float
    split_fractions: dict[str, float]
    min_contrast: float  # a photo below it is blank (content.contrast)
    near_copy_distance: int  # photos whose hashes differ by at most this many bits are one picture
    suspect_above: float | None  # a person's mask disagreeing more with the model is listed; None: not scored

    @classmethod
    def from_params(cls, params: dict, suspect_above: float | None = None) -> Thresholds:
        """The thresholds params.yaml sets (validate:, and prepare's splits and near-copy distance)."""
        cfg, prepare = params["validate"], params["prepare"]
        return cls(min_size=cfg["min_size"], fg_min=cfg["fg_min"], fg_max=cfg["fg_max"],
                   split_tolerance=cfg["split_tolerance"], split_fractions=prepare["splits"],
                   min_contrast=cfg["min_contrast"], near_copy_distance=prepare["near_copy_distance"],
                   suspect_above=suspect_above)


@dataclass(frozen=True)
class SuspectCheck:
    """params.yaml validate.suspects: which model's masks a person's masks are ranked against, and the flag."""

    model: str | None   # u2net, u2netp, a served folder or a models:/ URI; None: no ranking
    z: float            # a mask is flagged above this modified z-score of its disagreement
    worst: int          # masks drawn in reports/suspect_masks.png


@dataclass(frozen=True)
class ValidateConfig:
    """The validate stage's settings: its thresholds, the suspect-mask check, prepare.max_pixels and the
    reports folder."""

    thresholds: Thresholds
    suspects: SuspectCheck
    max_pixels: int
    reports: Path

    @classmethod
    def from_params(cls, params: dict) -> "ValidateConfig":
        return cls(thresholds=Thresholds.from_params(params), suspects=SuspectCheck(**params["validate"]["suspects"]),
                   max_pixels=params["prepare"]["max_pixels"], reports=Path(params["paths"]["reports"]))


def add_derived_columns(manifest: pd.DataFrame, t: Thresholds) -> pd.DataFrame:
    """Per-row facts about the whole table, so row-level expectations can name offending files."""
    split_fractions = t.split_fractions
    df = manifest.copy()
    # Near-copies in two splits: each such photo names its closest copy in another split, and their distance.
    df["near_copy_of"], df["near_copy_split"], df["near_copy_distance"] = None, None, float("nan")
    for a, b, d in sorted(copies_in(df, t.near_copy_distance, t.min_contrast), key=lambda p: p[2], reverse=True):
        if df.at[a, "split"] != df.at[b, "split"]:
            for row, other in ((a, b), (b, a)):
                df.at[row, "near_copy_of"] = df.at[other, "image_path"]
                df.at[row, "near_copy_split"] = df.at[other, "split"]
                df.at[row, "near_copy_distance"] = float(d)
    # In how many splits does this image's content (and this group) appear? >1 means leakage.
    hashed = df["content_hash"].notna()
    df["hash_split_count"] = float("nan")
    df.loc[hashed, "hash_split_count"] = (
        df[hashed].groupby("content_hash")["split"].transform("nunique").astype(float)
    )
    # Groups are split among train, val and test; reference and unlabelled photos are not split.
    split = df["split"].isin(SPLITS)
    df["group_split_count"] = float("nan")
    df.loc[split, "group_split_count"] = df[split].groupby("group")["split"].transform("nunique").astype(float)
    # How far is this row's split from its requested fraction of the labelled pairs? Drafts only ever train, on
    # top of the train share: the fractions are of the masks a person drew or checked.
    if "mask_origin" in df:
        split &= df["mask_origin"].ne(DRAFT)
    actual = df.loc[split, "split"].map(df.loc[split, "split"].value_counts(normalize=True))
    wanted = df.loc[split, "split"].map(split_fractions)
    df["split_fraction_error"] = float("nan")
    df.loc[split, "split_fraction_error"] = (actual - wanted).abs()
    return df


def expectations(t: Thresholds) -> list:
    """The suite, one expectation per line; `notes` says what each guards (shown in reports)."""
    import great_expectations.expectations as gxe

    present = [s for s in SPLITS if t.split_fractions.get(s, 0) > 0]
    sizes = {"show": ["width", "height", "mask_width", "mask_height"]}  # extra values shown for a failing pair
    masked = {"row_condition": f'split!="{UNLABELLED}"', "condition_parser": "pandas"}  # photos that have masks
    # Photos that show something: a blank photo is named once, as blank, not again for its mask's coverage.
    masked_shown = {"row_condition": f'split!="{UNLABELLED}" and image_contrast>={t.min_contrast!r}',
                    "condition_parser": "pandas"}
    copies = {"show": ["near_copy_distance", "split", "near_copy_split"]}
    suspects = [] if t.suspect_above is None else [
        # A report, not a gate (severity warning): the pairs to look at first, never dropped without a person.
        gxe.ExpectColumnValuesToBeBetween(column="mask_disagreement", max_value=t.suspect_above, severity="warning",
                                          meta={"show": ["split"]}, row_condition="mask_disagreement==mask_disagreement",
                                          condition_parser="pandas",
                                          notes=f"a mask a person drew agrees with the model's mask of its photo about "
                                                f"as well as the others do (1 - IoU at most {t.suspect_above:.3f}); "
                                                "the others are probably wrong: check them first (`bgremoval label push "
                                                "--suspects`)"),
    ]
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="mask_path", **masked, notes="every image has a mask (but the unlabelled photos)"),
        gxe.ExpectColumnValuesToNotBeNull(column="image_path", notes="every mask has an image"),
        gxe.ExpectColumnValuesToBeNull(column="image_error", notes="every image decodes (not truncated, not a non-image, not empty, under the pixel cap)"),
        gxe.ExpectColumnValuesToBeNull(column="mask_error", notes="every mask decodes"),
        gxe.ExpectColumnValuesToBeInSet(column="image_mode", value_set=list(IMAGE_MODES), notes="images are RGB, RGBA or greyscale"),
        gxe.ExpectColumnValuesToBeInSet(column="mask_kind", value_set=list(KINDS), **masked, notes="masks are of a kind read without guessing: a colour mask that is not a palette is ambiguous (save it as a palette PNG, index 0 = background, or in grey, 0 = background and 255 = foreground); kind jpeg needs prepare.jpeg_masks"),
        gxe.ExpectColumnValuesToNotBeInSet(column="mask_fit", value_set=["different"], meta=sizes, **masked, notes="image and mask have the same aspect ratio, within a pixel (catches photos stored rotated, and crops)"),
        gxe.ExpectColumnValuesToBeInSet(column="mask_resize", value_set=[True], row_condition='mask_fit=="scaled"', condition_parser="pandas", meta=sizes, notes="a mask scaled from its photo's size (same aspect ratio) is resized to the photo only with prepare.resize_masks: true; set it, or save masks at their photos' sizes"),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=t.min_size, notes=f"images are at least {t.min_size} px wide"),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=t.min_size, notes=f"images are at least {t.min_size} px high"),
        gxe.ExpectColumnValuesToBeBetween(column="image_contrast", min_value=t.min_contrast, meta={"show": ["fg_fraction"]}, notes=f"every photo shows something: its grey levels spread at least {t.min_contrast:g} of 255 (1st to 99th percentile); a blank photo (black, white, one flat tone) has no subject to cut out: remove the pair"),
        gxe.ExpectColumnValuesToBeBetween(column="fg_fraction", min_value=t.fg_min, max_value=t.fg_max, meta={"show": ["mask_kind", "image_contrast"]}, **masked_shown, notes=f"foreground covers {t.fg_min:g}..{t.fg_max:g} of the mask (no empty, no all-foreground masks): such a pair has no subject to cut out; fix its mask or remove the pair"),
        gxe.ExpectColumnValuesToBeBetween(column="hash_split_count", max_value=1, notes="no image content appears in two splits, the reference and unlabelled photos among them (leakage)"),
        gxe.ExpectColumnValuesToBeBetween(column="group_split_count", max_value=1, notes="no group (e.g. video sequence) crosses splits (leakage)"),
        gxe.ExpectColumnValuesToBeNull(column="near_copy_of", meta=copies, notes=f"no photo has a near-copy (the same picture resized, re-encoded, cropped or recoloured: perceptual hashes within {t.near_copy_distance} of 128 bits) in another split (leakage); prepare keeps near-copies together, so this comes from a split file or the reference or unlabelled photos: remove one of the two, or put both in one split"),
        gxe.ExpectColumnValuesToBeInSet(column="mask_origin", value_set=[PERSON], row_condition='split in ["val", "test"]', condition_parser="pandas", notes="val and test are scored against masks a person drew or checked: no unreviewed draft there (correct it in Label Studio, or leave the split to prepare, which trains on drafts only)"),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=[*SPLITS, REFERENCE, UNLABELLED], notes="every pair has a split"),
        gxe.ExpectColumnDistinctValuesToContainSet(column="split", value_set=present, notes=f"every requested split is present: {present}"),
        gxe.ExpectColumnValuesToBeBetween(column="split_fraction_error", max_value=t.split_tolerance, notes=f"each split's share is within {t.split_tolerance:g} of prepare.splits"),
        *suspects,
    ]


def run_suite(df: pd.DataFrame, t: Thresholds, docs_dir: Path | None) -> list[dict]:
    """Run the suite through a GX checkpoint (building Data Docs in docs_dir); one result per expectation."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no phoning home from a pipeline run
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions = []
    if docs_dir is not None:
        context.add_data_docs_site(
            site_name="reports",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(Path(docs_dir).resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["reports"]))
    batch = context.data_sources.add_pandas("bgremoval").add_dataframe_asset("manifest")
    batch_definition = batch.add_batch_definition_whole_dataframe("all_pairs")
    suite = context.suites.add(gx.ExpectationSuite(name="manifest"))
    for expectation in expectations(t):
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="manifest", data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="validate",
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "COMPLETE"},
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": df})
    outcomes = []
    for run in result.run_results.values():
        for r in run.results:
            outcomes.append(_outcome(r, df))
    return outcomes


RESULT_PAGE = "validation.html"  # in the Data Docs folder: a stable name for this run's result page


def result_page(docs_dir: Path) -> Path | None:
    """A stable page that opens this run's Data Docs result page, or None where none was built.

    GX names the result page by the run's time, so validation.json naming it directly would change on
    every run, and DVC would re-run every stage after validate (augment first) though the data and the
    verdict did not change. The index page is no use offline (its JavaScript comes from CDNs); the
    result page is plain HTML."""
    page = next((Path(docs_dir) / "validations").rglob("*.html"), None)
    if page is None:
        return None
    target = page.relative_to(docs_dir).as_posix()
    stable = Path(docs_dir) / RESULT_PAGE
    stable.write_text(f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0; url={target}">'
                      f'<title>Data Docs: validation result</title><a href="{target}">the validation result</a>\n')
    return stable


def _outcome(r, df: pd.DataFrame) -> dict:
    """A JSON-able result: which expectation, what it guards, and the offending pairs by file."""
    cfg = r.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "result_format")}
    out = {
        "expectation": cfg.type,
        "guards": cfg.notes,
        "kwargs": kwargs,
        "severity": str(getattr(cfg.severity, "value", cfg.severity)),
        "success": bool(r.success),
    }
    if r.exception_info and r.exception_info.get("raised_exception"):
        out["success"] = False
        out["error"] = r.exception_info.get("exception_message")
    res = r.result or {}
    if "unexpected_index_list" in res:
        column = kwargs.get("column")
        columns = [column] if column else [kwargs.get("column_A"), kwargs.get("column_B")]
        columns += [c for c in (cfg.meta or {}).get("show", []) if c not in columns]
        out["unexpected_count"] = len(res["unexpected_index_list"])
        out["unexpected"] = [_describe_row(df.loc[i], columns) for i in res["unexpected_index_list"]]
    elif "observed_value" in res:
        out["observed_value"] = res["observed_value"]
    return out


def _describe_row(row: pd.Series, columns: list[str]) -> dict:
    """The files of an offending pair and the values that failed."""
    values = {c: _jsonable(row[c]) for c in columns if c}
    return {
        "name": row["name"],
        "image": _jsonable(row["image_path"]),
        "mask": _jsonable(row["mask_path"]),
        "values": values,
    }


def _jsonable(v):
    if v is None or (isinstance(v, float) and v != v) or v is pd.NA:
        return None
    return v.item() if hasattr(v, "item") else v


def scorable(manifest: pd.DataFrame, min_contrast: float) -> pd.DataFrame:
    """The pairs whose masks a person drew and that the suspect-mask check can score: both files decode, the photo
    shows something, and the mask is not an unreviewed draft (photos without masks have none)."""
    ok = (manifest["mask_path"].notna() & manifest["image_path"].notna() & manifest["image_error"].isna()
          & manifest["mask_error"].isna() & (manifest["image_contrast"] >= min_contrast)
          & manifest["mask_fit"].isin(["same", "scaled"]))
    if "mask_origin" in manifest:
        ok &= manifest["mask_origin"].eq(PERSON)
    return manifest[ok]


def suspect_summary(ranking: pd.DataFrame, above: float, worst: int, unread: list[str]) -> dict:
    """What validation.json says about the suspect masks: the model, the rule, every flagged pair and the worst."""
    flagged = ranking[ranking["disagreement"] > above]

    def rows(table: pd.DataFrame) -> list[dict]:
        return [{"name": r.name, "rank": int(r.rank), "disagreement": round(float(r.disagreement), 4),
                 "image": r.image_path, "mask": r.mask_path} for r in table.itertuples()]

    return {
        "model": str(ranking["model"].iloc[0]) if len(ranking) else None,
        "scored": len(ranking),
        "median": float(ranking["disagreement"].median()) if len(ranking) else None,
        "flag_above": above,
        "flagged": rows(flagged),
        "worst": rows(ranking.head(worst)),
        "unread": unread,
    }


def mask_summary(manifest: pd.DataFrame) -> dict:
    """What the report says about the masks: how many of each kind, how their sizes fit their photos', how
    many are resized, and the JPEG masks' compression noise (share of pixels neither near 0 nor near 255),
    with the noisiest files."""
    jpeg = manifest[manifest["mask_noise"].notna()]
    noisiest = jpeg.nlargest(NOISIEST, "mask_noise")
    origins = manifest["mask_origin"].value_counts() if "mask_origin" in manifest else pd.Series(dtype=int)
    return {
        "kinds": {str(k): int(n) for k, n in manifest["mask_kind"].value_counts().items()},
        # who made the masks: a person (drawn or checked) or a model (unreviewed drafts, train only)
        "origins": {PERSON: int(origins.get(PERSON, 0)), DRAFT: int(origins.get(DRAFT, 0)),
                    "draft_share": float(origins.get(DRAFT, 0) / max(int(origins.sum()), 1))},
        "fit": {str(k): int(n) for k, n in manifest["mask_fit"].value_counts().items()},
        "resized": int(manifest["mask_resize"].fillna(False).astype(bool).sum()),
        "jpeg": {
            "masks": len(jpeg),
            "noise_mean": float(jpeg["mask_noise"].mean()) if len(jpeg) else None,
            "noise_max": float(jpeg["mask_noise"].max()) if len(jpeg) else None,
            "noisiest": [{"name": r["name"], "mask": r["mask_path"], "noise": float(r["mask_noise"])}
                         for _, r in noisiest.iterrows()],
        },
    }


def mask_lines(summary: dict) -> list[str]:
    """The mask summary in a few lines for the log."""
    lines = ["masks by kind: " + ", ".join(f"{k} {n}" for k, n in summary["kinds"].items())]
    o = summary["origins"]
    if o[DRAFT]:
        lines.append(f"masks by who made them: {o[PERSON]} by a person, {o[DRAFT]} unreviewed drafts "
                     f"({o['draft_share']:.0%}; drafts only train)")
    if summary["resized"]:
        lines.append(f"{summary['resized']} scaled masks are resized to their photos (prepare.resize_masks)")
    j = summary["jpeg"]
    if j["masks"]:
        top = j["noisiest"][0]
        lines.append(f"{j['masks']} JPEG masks: compression noise (pixels neither near 0 nor near 255) "
                     f"{j['noise_mean']:.2%} on average, at most {j['noise_max']:.2%} ({top['mask']})")
    return lines


def summarise(outcomes: list[dict]) -> dict:
    """The report written to reports/validation.json."""
    failed = [o for o in outcomes if not o["success"] and o.get("severity", CRITICAL) == CRITICAL]
    warned = [o for o in outcomes if not o["success"] and o.get("severity", CRITICAL) != CRITICAL]
    return {
        "success": not failed,
        "evaluated": len(outcomes),
        "failed": len(failed),
        "failures": failed,
        "warnings": warned,  # reports, not gates (the suspect masks): listed, and the pipeline goes on
        "expectations": [{"guards": o["guards"], "expectation": o["expectation"], "success": o["success"],
                          "severity": o.get("severity", CRITICAL)} for o in outcomes],
    }


def failure_message(report: dict, limit: int = 8) -> str:
    """A human-readable account of what failed, naming files, and what to do next."""
    lines = [f"Data validation failed: {report['failed']} of {report['evaluated']} expectations not met."]
    for f in report["failures"]:
        n = f.get("unexpected_count")
        lines.append(f"- {f['guards']}" + (f" ({n} pair(s)):" if n else ":"))
        for u in f.get("unexpected", [])[:limit]:
            shown = ", ".join(f"{k}={v}" for k, v in u["values"].items())
            files = ", ".join(f for f in (u["image"], u["mask"]) if f)  # the pair's files, whichever exist
            lines.append(f"    {files}  [{shown}]")
        if n and n > limit:
            lines.append(f"    ... and {n - limit} more (see the report)")
        if "observed_value" in f:
            lines.append(f"    observed: {f['observed_value']}")
        if "error" in f:
            lines.append(f"    error: {f['error']}")
    lines.append("Fix or remove these files (or adjust prepare: / validate: in params.yaml as named above), "
                 "then run `dvc repro` again.")
    return "\n".join(lines)
