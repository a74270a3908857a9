"""The benchmark scripts' own logic: the quality benchmark's held-out photos, its --set overrides over the
real-data profile and its pass/fail check (--require-beats); the speed benchmark's paired timing."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, monkeypatch):
    """benchmarks/NAME.py as a module, importing its siblings as it does when run as a script."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def quality(monkeypatch):
    return _script("quality", monkeypatch)


def test_the_champion_must_beat_the_stock_model_on_every_headline_metric(quality):
    stock = {"mae": 0.0323, "max_f": 0.897, "iou": 0.688, "boundary_f": 0.61}
    assert quality.shortfalls({"mae": 0.0260, "max_f": 0.938, "iou": 0.809, "boundary_f": 0.70}, stock, "u2netp") == []
    # A collapsed champion (IoU 0) with a lower MAE still fails, on every metric but MAE.
    missed = quality.shortfalls({"mae": 0.0300, "max_f": 0.192, "iou": 0.0, "boundary_f": 0.1}, stock, "u2netp")
    assert [m.split(":")[0] for m in missed] == ["max_f", "iou", "boundary_f"]
    assert "champion 0.1920, u2netp 0.8970" in missed[0]
    # A tie is not a win, and a higher MAE is a loss.
    tied = quality.shortfalls({"mae": 0.0400, "max_f": 0.897, "iou": 0.7, "boundary_f": 0.62}, stock, "u2net")
    assert [m.split(":")[0] for m in tied] == ["mae", "max_f"]


def test_set_overrides_are_yaml_values_over_the_profile(quality, tmp_path):
    sets = quality.parse_sets(["train.epochs=1", "export.sizes=[64, 96]", "export.refine.flip=[true]"])
    assert sets == {"train.epochs": 1, "export.sizes": [64, 96], "export.refine.flip": [True]}
    profile = yaml.safe_load(quality.PROFILE.read_text())["set"]
    assert profile["train.epochs"] != 1 and profile["export.sizes"] != [64, 96]  # so the overrides show
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    applied = quality.apply_profile(params, sets)
    written = yaml.safe_load(params.read_text())
    assert written["train"]["epochs"] == 1 and applied["train.epochs"] == 1
    assert written["export"]["sizes"] == [64, 96]
    assert written["export"]["refine"]["flip"] == [True]
    # The profile's other settings are written too, and the rest of params.yaml is left as it was.
    assert written["export"]["refine"]["sharpen"] == profile["export.refine.sharpen"]
    assert written["register"]["require_beats_baseline"] is True
    assert written["tune"]["space"] == profile["tune.space"]
    assert written["serve"] == yaml.safe_load((ROOT / "params.yaml").read_text())["serve"]
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        quality.parse_sets(["train.epochs"])


def test_every_profile_key_is_a_param_and_a_misspelt_override_fails(quality, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    quality.apply_profile(params)  # the profile alone: every key exists in params.yaml
    for key in ("evaluate.size", "export.size", "exports.sizes"):  # a key that moved, a typo, a missing section
        params.write_text((ROOT / "params.yaml").read_text())
        with pytest.raises(SystemExit, match=re.escape(key)):
            quality.apply_profile(params, {key: 320})


NAMES = [f"scene{g:02d}_{f:03d}" for g in range(12) for f in range(8)]  # 12 groups of 8 frames
PATTERN = r"^(.*)_\d+$"


def test_held_out_photos_are_seeded_disjoint_from_the_pipelines_share_and_of_the_asked_size(quality):
    chosen = quality.held_out(NAMES, 20, seed=0)
    assert len(chosen) == len(set(chosen)) == 20
    assert set(chosen) <= set(NAMES)
    rest = set(NAMES) - set(chosen)
    assert len(rest) == len(NAMES) - 20 and not rest & set(chosen)
    # The same seed draws the same photos whatever order the files are listed in; another seed others.
    assert quality.held_out(list(reversed(NAMES)), 20, seed=0) == chosen
    assert quality.held_out(NAMES, 20, seed=1) != chosen
    # Drawn across the folder, not its first names.
    assert len({name.split("_")[0] for name in chosen}) > 3
    for n in (0, len(NAMES)):
        with pytest.raises(ValueError, match="--holdout"):
            quality.held_out(NAMES, n, seed=0)


def test_held_out_groups_are_never_split(quality):
    group = lambda name: name.split("_")[0]  # noqa: E731
    for seed in range(5):
        chosen = quality.held_out(NAMES, 20, seed=seed, group_pattern=PATTERN)
        groups = {group(n) for n in chosen}
        # Whole groups: every frame of a chosen group is held out, none of the others.
        assert set(chosen) == {n for n in NAMES if group(n) in groups}
        assert len(chosen) >= 20 and len(chosen) - 8 < 20  # groups are added only until there are 20
        assert quality.held_out(NAMES, 20, seed=seed, group_pattern=PATTERN) == chosen
    assert len({tuple(quality.held_out(NAMES, 20, seed=s, group_pattern=PATTERN)) for s in range(5)}) > 1
    with pytest.raises(ValueError, match="takes all 12 groups"):
        quality.held_out(NAMES, 90, seed=0, group_pattern=PATTERN)


def photo_folder(folder: Path, names: list[str]) -> Path:
    """images/ and masks/ with a tiny pair per name."""
    from PIL import Image

    for kind in ("images", "masks"):
        (folder / kind).mkdir(parents=True)
    for name in names:
        Image.new("RGB", (8, 8)).save(folder / "images" / f"{name}.jpg")
        Image.new("L", (8, 8)).save(folder / "masks" / f"{name}.png")
    return folder


def test_the_held_out_pairs_are_not_copied_into_the_pipelines_data(quality, tmp_path):
    import pandas as pd

    folder = photo_folder(tmp_path / "photos", NAMES[:24])
    workdir = tmp_path / "work"
    holdout = quality.split_folder(folder, workdir, 5, 3, None)
    copied = {p.stem for p in (workdir / "data" / "images").iterdir()}
    assert sorted(holdout["name"]) == quality.held_out(NAMES[:24], 5, seed=3)
    assert copied == set(NAMES[:24]) - set(holdout["name"])
    assert {p.stem for p in (workdir / "data" / "masks").iterdir()} == copied
    assert list(pd.read_csv(workdir / quality.HOLDOUT)["name"]) == list(holdout["name"])


def test_fit_holdout_gives_the_held_out_pairs_to_train_and_splits_the_rest_as_prepare_would(quality, tmp_path):
    import pandas as pd

    folder = photo_folder(tmp_path / "photos", NAMES[:40])
    fractions = {"train": 0.5, "val": 0.25, "test": 0.25}
    for pattern in (r"^none$", PATTERN):  # every photo a group of its own; frames grouped by scene
        workdir = tmp_path / f"work{len(pattern)}"
        holdout = quality.split_folder(folder, workdir, 8, 3, None,
                                       fit_holdout={"splits": fractions, "group_pattern": pattern})
        splits = pd.read_csv(workdir / quality.SPLITS)
        assert {p.stem for p in (workdir / "data" / "images").iterdir()} == set(NAMES[:40]) == set(splits["name"])
        assert set(splits.loc[splits["split"] == "train", "name"]) >= set(holdout["name"])
        rest = splits[~splits["name"].isin(holdout["name"])]
        if pattern == PATTERN:  # no scene of the pipeline's own pairs is split (val and test stay unseen groups)
            assert (rest.groupby(rest["name"].str.replace(r"_\d+$", "", regex=True))["split"].nunique() == 1).all()
        else:
            assert dict(rest["split"].value_counts()) == {"train": 16, "val": 8, "test": 8}  # 32 pairs by the fractions


def test_speed_ratios_time_their_two_sides_in_alternation(monkeypatch):
    speed = _script("speed", monkeypatch)
    calls = []
    speed.timed_pair(lambda: calls.append("a"), lambda: calls.append("b"), repeat=4, warmup=1)
    # One warm-up of each, then a b, b a, a b, b a: neither side always runs first.
    assert "".join(calls) == "ab" + "ab" + "ba" + "ab" + "ba"


def test_speed_ratio_is_the_median_of_the_paired_rounds_not_a_ratio_of_medians(monkeypatch):
    speed = _script("speed", monkeypatch)
    # A fake clock (seconds) whose machine slows down and speeds up between rounds: rounds (a, b) in ms are
    # (2, 1), (4, 2), (6, 3), (1, 2), (1, 2), called a b, b a, a b, b a, a b after one warm-up of each.
    now = [0.0]
    costs = iter([0.001, 0.001] + [0.002, 0.001, 0.002, 0.004, 0.006, 0.003, 0.002, 0.001, 0.001, 0.002])

    def side():
        now[0] += next(costs)

    monkeypatch.setattr(speed.time, "perf_counter", lambda: now[0])
    a_ms, b_ms, ratio = speed.timed_pair(side, side, repeat=5, warmup=1)
    assert a_ms == pytest.approx(2.0) and b_ms == pytest.approx(2.0)  # medians of each side alone
    assert ratio == pytest.approx(2.0)  # round ratios 2, 2, 2, 0.5, 0.5; the ratio of the medians would be 1


def test_edge_errors_measure_the_boundarys_distance_in_tolerances_of_boundary_f(monkeypatch):
    edges = _script("edge_errors", monkeypatch)
    from bgremoval.scoring.metrics import boundary_f

    # A disc of radius 20, away from the photo's border (which counts as boundary); the diagonal is 141 px, so
    # boundary F's tolerance is ceil(1.13) = 2 px. Predictions: discs 1, 3 and 9 px wider.
    yy, xx = np.mgrid[:100, :100]
    radius = np.hypot(yy - 50, xx - 50)
    truth = radius <= 20
    for grown, band in ((1, "within"), (3, "1-2x"), (9, "2x+")):
        pred = radius <= 20 + grown
        shares = edges.band_shares(edges.boundary_distances(pred, truth))
        assert shares[band] == pytest.approx(1.0), (grown, shares)
        # What boundary F counts as matched is exactly the "within" band.
        assert (boundary_f(pred.astype(float), truth.astype(float)) > 0.9999) == (band == "within")
    # A predicted mask that adds a far blob: its boundary pixels land in the far band, in proportion.
    pred = truth.copy()
    pred[5:15, 80:95] = True
    shares = edges.band_shares(edges.boundary_distances(pred, truth))
    assert 0 < shares["2x+"] < 0.5 and shares["within"] > 0.5 and sum(shares.values()) == pytest.approx(1.0)


def test_label_budget_rows_give_masks_to_the_chosen_and_checked_and_drafts_to_the_rest(monkeypatch, tmp_path):
    import pandas as pd

    budget = _script("label_budget", monkeypatch)
    names = [f"p{i}" for i in range(8)]
    for kind in ("images", "masks", "pool/drafts"):
        (tmp_path / kind).mkdir(parents=True)
    for n in names:
        for kind, ext in (("images", "jpg"), ("masks", "png"), ("pool/drafts", "png")):
            (tmp_path / kind / f"{n}.{ext}").write_bytes(n.encode())
    pairs = pd.DataFrame({"name": names, "image_path": [str(tmp_path / "images" / f"{n}.jpg") for n in names],
                          "mask_path": [str(tmp_path / "masks" / f"{n}.png") for n in names]})
    checked, pool = pairs.head(2), pairs.iloc[2:].reset_index(drop=True)
    ranking = pd.DataFrame({"name": ["p5", "p2", "p7", "p3", "p4", "p6"], "rank": range(1, 7)})

    assert budget.chosen(ranking, 2, "ranked", 0) == ["p5", "p2"]
    drawn = budget.chosen(ranking, 2, "random", 0)
    assert len(set(drawn)) == 2 and set(drawn) <= set(names[2:]) and drawn == budget.chosen(ranking, 2, "random", 0)
    assert budget.row_spec("k0", 6) == (0, "ranked") and budget.row_spec("all", 6) == (6, "ranked")
    assert budget.row_spec("k2-alone", 6) == (2, "alone")
    with pytest.raises(ValueError, match="k9-ranked"):
        budget.row_spec("k9-ranked", 6)

    def built(row, alone):
        splits = budget.build_row(tmp_path / row, tmp_path / "pool" / "drafts", pool, checked, ["p5", "p2"], alone)
        data = tmp_path / row / "data"
        return ({p.stem for p in (data / "images").iterdir()}, {p.stem for p in (data / "masks").iterdir()},
                {p.stem for p in (data / "drafts").iterdir()}, pd.read_csv(splits).set_index("name")["split"].to_dict())

    images, masks, drafts, splits = built("kept", alone=False)
    assert images == set(names) and masks == {"p0", "p1", "p2", "p5"} and drafts == {"p3", "p4", "p6", "p7"}
    assert splits == {"p0": "val", "p1": "test", **{n: "train" for n in names[2:]}}
    assert (tmp_path / "kept" / "data" / "drafts" / "p3.png").read_bytes() == b"p3"  # the draft, not the true mask
    images, masks, drafts, splits = built("alone", alone=True)
    assert images == masks == {"p0", "p1", "p2", "p5"} and drafts == set()
    assert splits == {"p0": "val", "p1": "test", "p2": "train", "p5": "train"}
