"""`bgremoval draft`: drafts kept apart from a person's masks and tagged, a ranking whose order follows the
disagreement of two looks, unreadable photos named, the best model at hand chosen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bgremoval.cli import main as cli
from bgremoval.labelling import folders
from bgremoval.labelling.drafts import (
    Drafter, contact_sheet, disagreement, draft_folder, draft_one, open_drafter, photos_to_draft, rank, registry_has,
)
from tests.helpers import disc_image

MAX_PIXELS = 10**7


def left_half(image: np.ndarray) -> np.ndarray:
    """A model that sees the photo's left half as foreground: mirrored, it disagrees everywhere."""
    prob = np.zeros(image.shape[:2], np.float32)
    prob[:, : image.shape[1] // 2] = 1
    return prob


def bright(image: np.ndarray) -> np.ndarray:
    """A model that finds the bright disc: the same on the mirrored photo."""
    return (image.mean(axis=2) > 100).astype(np.float32)


def photo_folder(root: Path, n: int = 3) -> Path:
    (root / "images").mkdir(parents=True)
    for i in range(n):
        image, _ = disc_image(40, 56, seed=i)
        Image.fromarray(image).save(root / "images" / f"p_{i}.png")
    return root


def test_a_draft_is_tagged_and_a_persons_mask_is_not(tmp_path):
    mask = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    folders.write_draft(tmp_path / "drafts" / "a.png", mask, "u2net")
    folders.write_mask(tmp_path / "masks" / "a.png", mask)
    assert folders.drafted_by(tmp_path / "drafts" / "a.png") == "u2net" and folders.is_draft(tmp_path / "drafts" / "a.png")
    assert not folders.is_draft(tmp_path / "masks" / "a.png")
    assert np.array_equal(folders.read_draft(tmp_path / "drafts" / "a.png"), mask)  # soft values kept exactly
    # a draft copied into masks/ by hand is still a draft
    (tmp_path / "masks" / "b.png").write_bytes((tmp_path / "drafts" / "a.png").read_bytes())
    assert folders.is_draft(tmp_path / "masks" / "b.png")
    assert not list(tmp_path.rglob("*.part"))


def test_disagreement_of_two_looks():
    image, _ = disc_image(40, 56)
    assert draft_one(Drafter("bright", bright, None, None), image)[1] == {"uncertainty": 0.0, "flip": 0.0, "second": None}
    looks = draft_one(Drafter("left", left_half, "bright", bright), image)[1]
    assert looks["flip"] == 1.0  # the mirrored photo's mask shares no pixel with the photo's
    assert looks["second"] == pytest.approx(disagreement(left_half(image), bright(image)))
    assert looks["uncertainty"] == pytest.approx((1.0 + looks["second"]) / 2)


def test_only_photos_without_a_persons_mask_are_drafted_unless_all(tmp_path):
    folder = photo_folder(tmp_path / "shop")
    folders.write_mask(folders.mask_path(folder, "p_1"), np.zeros((40, 56), np.uint8))
    assert [p.stem for p in photos_to_draft(folder, every=False)] == ["p_0", "p_2"]
    assert [p.stem for p in photos_to_draft(folder, every=True)] == ["p_0", "p_1", "p_2"]
    with pytest.raises(FileNotFoundError, match="no images/ folder"):
        photos_to_draft(tmp_path / "empty", every=False)


def test_drafts_are_ranked_most_uncertain_first_and_bad_photos_named(tmp_path):
    folder = photo_folder(tmp_path / "shop")
    (folder / "images" / "broken.jpg").write_bytes(b"not a jpeg")

    # p_1 is the one photo the model is unsure of: its mirror image gives another mask
    def unsure_of_p1(image):
        return left_half(image) if image[0, 0, 0] == unsure_pixel else bright(image)

    unsure_pixel = np.asarray(Image.open(folder / "images" / "p_1.png"))[0, 0, 0]
    done = draft_folder(folder, Drafter("toy", unsure_of_p1, None, None), photos_to_draft(folder, False), MAX_PIXELS, progress=False)
    assert len(done.skipped) == 1 and "broken.jpg" in done.skipped[0]
    written = pd.read_csv(folder / folders.RANKING, dtype={"name": str})
    assert list(written["name"])[0] == "p_1" and list(written["rank"]) == [1, 2, 3]
    assert list(written.columns[:6]) == ["name", "rank", "uncertainty", "image_path", "draft_path", "model"]
    assert sorted(p.name for p in (folder / "drafts").iterdir()) == ["p_0.png", "p_1.png", "p_2.png"]
    assert all(folders.drafted_by(Path(p)) == "toy" for p in written["draft_path"])
    assert not (folder / "masks").exists()  # nothing a person would mistake for their own
    assert contact_sheet(done.ranking, 2, MAX_PIXELS, folder / folders.CONTACT_SHEET) == 2
    assert Image.open(folder / folders.CONTACT_SHEET).size[0] > 0


def test_ties_are_ranked_by_name():
    table = pd.DataFrame({"name": ["b", "a", "c"], "uncertainty": [0.1, 0.1, 0.3], "image_path": "", "draft_path": "",
                          "model": "m", "flip": 0.0, "second": None, "second_model": None})
    assert list(rank(table)["name"]) == ["c", "a", "b"]


def test_without_a_registry_or_u2net_the_drafter_is_stock_u2netp(tmp_path, monkeypatch):
    missing = tmp_path / "mlflow.db"
    assert not registry_has("models:/shop@champion", f"sqlite:///{missing}")
    assert not missing.exists()  # looking did not create a store
    monkeypatch.setenv("BGREMOVAL_U2NET_ONNX", str(tmp_path / "no-u2net.onnx"))
    drafter = open_drafter(None, "models:/shop@champion", f"sqlite:///{missing}")
    assert drafter.name == "u2netp" and drafter.second is None  # no second model to ask


def test_draft_command_on_real_photos_with_u2netp(tmp_path, capsys):
    from tests.helpers import sample_photo

    folder = tmp_path / "photos"
    (folder / "images").mkdir(parents=True)
    for name in ("china", "flower"):
        Image.fromarray(sample_photo(f"{name}.jpg")).resize((160, 107)).save(folder / "images" / f"{name}.jpg")
    (folder / "images" / "empty.png").write_bytes(b"")
    assert cli(["draft", "--model", "u2netp", "--quiet", str(folder)]) == 1  # one photo could not be read
    out, err = capsys.readouterr()
    assert "empty.png" in err and "drafted 2 photo(s) with u2netp" in out
    ranking = pd.read_csv(folder / folders.RANKING)
    assert set(ranking["name"]) == {"china", "flower"} and (folder / folders.CONTACT_SHEET).is_file()
    draft = folders.read_draft(folder / "drafts" / "flower.png")
    assert draft.shape == (107, 160) and draft.max() > 200 and draft.min() < 50  # a mask, not a blank


def test_a_folder_where_every_photo_has_a_mask_needs_no_drafts(tmp_path, capsys):
    folder = photo_folder(tmp_path / "done", n=1)
    folders.write_mask(folders.mask_path(folder, "p_0"), np.zeros((40, 56), np.uint8))
    assert cli(["draft", "--model", "u2netp", str(folder)]) == 0
    assert "nothing to draft" in capsys.readouterr().out and not (folder / "drafts").exists()
