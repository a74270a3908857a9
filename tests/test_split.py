"""Group-aware splitting: deterministic, groups never straddle splits, the user's file wins."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bgremoval.data.split import assign_groups, read_split_file, split_checked, split_groups

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def _names(n_groups=20, seed=0):
    rng = np.random.default_rng(seed)
    return pd.Series([f"seq{g}_{f:05d}" for g in range(n_groups) for f in range(int(rng.integers(2, 12)))])


def test_groups_from_pattern():
    names = pd.Series(["dog_00001", "dog_00002", "car-round_7", "loner"])
    assert assign_groups(names, r"^(.*)_\d+$").tolist() == ["dog", "dog", "car-round", "loner"]


def test_bad_regex_names_the_param():
    with pytest.raises(ValueError, match="prepare.group_pattern"):
        assign_groups(pd.Series(["a"]), "(")


@pytest.mark.parametrize("seed", range(5))
def test_no_group_crosses_splits_and_fractions_are_near(seed):
    names = _names(seed=seed)
    groups = assign_groups(names, r"^(.*)_\d+$")
    splits = split_groups(groups, FRACTIONS, seed)
    assert (pd.DataFrame({"g": groups, "s": splits}).groupby("g")["s"].nunique() == 1).all()
    shares = splits.value_counts(normalize=True)
    for name, want in FRACTIONS.items():
        assert abs(shares.get(name, 0) - want) < 0.12


def test_split_is_deterministic_and_depends_on_seed():
    groups = assign_groups(_names(), r"^(.*)_\d+$")
    a, b, c = (split_groups(groups, FRACTIONS, s) for s in (1, 1, 2))
    assert a.equals(b)
    assert not a.equals(c)


def test_every_requested_split_gets_a_group_even_with_few_groups():
    groups = pd.Series(["a"] * 10 + ["b"] * 10 + ["c"] * 1)
    assert set(split_groups(groups, FRACTIONS, 0)) == {"train", "val", "test"}


def test_too_few_groups_is_a_clear_error():
    with pytest.raises(ValueError, match="finds 2 group"):
        split_groups(pd.Series(["a", "b"]), FRACTIONS, 0)


def test_fractions_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        split_groups(pd.Series(["a", "b", "c"]), {"train": 0.7, "val": 0.7}, 0)


def test_split_file_overrides_and_uses_base_names_only(tmp_path):
    csv = tmp_path / "split.csv"
    csv.write_text("name,split\nimages/a_1.jpg,test\nmasks\\b_1.png,val\nc_1,train\n")
    names = pd.Series(["a_1", "b_1", "c_1", "d_1"])
    got = read_split_file(csv, names)
    assert got.tolist()[:3] == ["test", "val", "train"]
    assert pd.isna(got.iloc[3])  # unlisted files get no split; validation reports them


@pytest.mark.parametrize(
    ("text", "message"),
    [("file,part\na,train\n", "needs columns"), ("name,split\na,holdout\n", "a='holdout'"), ("name,split\na,train\na,val\n", "listed twice")],
)
def test_bad_split_files_are_named(tmp_path, text, message):
    csv = tmp_path / "split.csv"
    csv.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_split_file(csv, pd.Series(["a"]))


@pytest.mark.parametrize("entry", ["../../etc/passwd", "/etc/passwd", "images/../../secret_1", "C:\\data\\a_1.jpg", "..\\a_1"])
def test_split_file_entries_cannot_leave_the_data_folder(tmp_path, entry):
    csv = tmp_path / "split.csv"
    csv.write_text(f"name,split\na_1,train\n{entry},test\n")
    with pytest.raises(ValueError, match="point outside") as err:
        read_split_file(csv, pd.Series(["a_1"]))
    assert entry in str(err.value) and str(csv) in str(err.value)


def test_drafts_only_train_and_a_persons_masks_are_split_by_the_fractions_among_themselves():
    groups = pd.Series([f"g{i}" for i in range(40)] + ["g0", "d1", "d2"] * 20)
    draft = pd.Series([False] * 40 + [True, True, True] * 20)
    splits = split_checked(groups, draft, FRACTIONS, 0)
    assert set(splits[draft]) == {"train"}
    assert splits[groups == "g0"].eq("train").all()  # a group holding a draft trains, its checked masks too
    checked = splits[~groups.isin(["g0", "d1", "d2"])]
    assert abs(checked.eq("train").mean() - 0.7) < 0.06 and checked.eq("val").sum() >= 5
    # without drafts, exactly the plain split
    assert split_checked(groups[:40], draft[:40], FRACTIONS, 3).equals(split_groups(groups[:40], FRACTIONS, 3))


def test_too_few_checked_masks_for_val_and_test_says_so():
    with pytest.raises(ValueError, match="hold no unreviewed draft.*bgremoval label push"):
        split_checked(pd.Series(["a", "b", "c", "d"]), pd.Series([True, True, True, False]), FRACTIONS, 0)
