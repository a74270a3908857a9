"""`bgremoval label`: the labelling config, brush masks that round-trip exactly, what a push takes from a folder;
then, against a real Label Studio (`make label-studio`): a project made once and updated, photos imported worst
first with their drafts as predictions and never twice, what a person submits pulled back as masks (and what
they skip or leave alone not), and the draft shown over the photo in headless Chromium."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image

from bgremoval.cli import build_parser
from bgremoval.cli import main as cli
from bgremoval.labelling import folders
from bgremoval.labelling.studio import (
    BRUSH, IMAGE, KEY_ENV, LABEL, URL_ENV, Draft, StudioError, brush_result, check_draft, config_fits, connect,
    label_config, latest_submitted, mask_from_results, plan_push, project_title, start_command,
)
from tests.helpers import ROOT, disc_image, free_port, project_env, running_server, sample_photo

LS_VENV = ROOT / ".venv-label-studio"
KEY = "bgremoval-test-token-0123456789"
USER, PASSWORD = "person@example.com", "correct-horse-battery"


def soft_draft(h: int, w: int, seed: int) -> np.ndarray:
    """A draft as a model draws one: a blob with a soft rim (every value 0-255 can occur)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    cy, cx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65)
    r = np.hypot((yy - cy) / (h * 0.3), (xx - cx) / (w * 0.3))
    return np.round(np.clip((1.2 - r) / 0.4, 0, 1) * 255).astype(np.uint8)


def drafted_folder(folder: Path, uncertainty: dict[str, float], size=(64, 48)) -> dict[str, np.ndarray]:
    """A data folder as `bgremoval draft` leaves it: photos, tagged drafts, drafts.csv ranked; the drafts."""
    w, h = size
    drafts, rows = {}, []
    for i, name in enumerate(sorted(uncertainty)):
        image, _ = disc_image(h, w, seed=i)
        (folder / folders.IMAGES).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / folders.IMAGES / f"{name}.jpg", quality=90)
        drafts[name] = soft_draft(h, w, seed=i)
        folders.write_draft(folders.draft_path(folder, name), drafts[name], "toy")
        rows.append({"name": name, "uncertainty": uncertainty[name], "image_path": f"{folder}/images/{name}.jpg",
                     "draft_path": folders.draft_path(folder, name).as_posix(), "model": "toy"})
    table = pd.DataFrame(rows).sort_values("uncertainty", ascending=False).reset_index(drop=True)
    table.insert(1, "rank", np.arange(1, len(table) + 1))
    table.to_csv(folder / folders.RANKING, index=False)
    return drafts


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L", f"{path} is {img.mode}, not 8-bit grey"
        return np.asarray(img)


# --- without a server -----------------------------------------------------------------------------------

def test_the_labelling_config_shows_the_photo_with_one_brush_label():
    root = ElementTree.fromstring(label_config())
    (image,) = root.iter("Image")
    (brush,) = root.iter("BrushLabels")
    assert (image.get("name"), image.get("value")) == (IMAGE, f"${IMAGE}")
    assert (brush.get("name"), brush.get("toName")) == (BRUSH, IMAGE)
    assert [label.get("value") for label in brush.iter("Label")] == [LABEL]
    assert config_fits(label_config())
    # a person's extra label keeps the config; one without the brush or the photo does not fit
    assert config_fits(label_config().replace("</BrushLabels>", '<Label value="Hair"/></BrushLabels>'))
    assert not config_fits('<View><Image name="image" value="$image"/><RectangleLabels name="box" toName="image">'
                           '<Label value="Foreground"/></RectangleLabels></View>')
    assert not config_fits(label_config().replace('value="$image"', 'value="$photo"'))
    assert not config_fits("<View><Image")


@pytest.mark.parametrize("mask", [
    soft_draft(23, 37, seed=1),                                        # odd sizes, every soft value
    np.random.default_rng(0).integers(0, 256, (16, 20), dtype=np.uint8),  # no two neighbours alike
    np.zeros((300, 300), np.uint8),                                    # one run longer than the RLE's 2^16
    np.full((5, 7), 255, np.uint8),
], ids=["soft", "noise", "long-run", "full"])
def test_a_brush_region_comes_back_exactly(mask):
    result = brush_result(mask)
    assert result["type"] == "brushlabels" and result["value"]["brushlabels"] == [LABEL]
    assert (result["original_height"], result["original_width"]) == mask.shape
    json.dumps(result)  # plain JSON: ints, not numpy scalars
    assert np.array_equal(mask_from_results([result], mask.shape), mask)


def test_regions_paint_their_union_and_none_paints_background():
    a, b = np.zeros((8, 10), np.uint8), np.zeros((8, 10), np.uint8)
    a[:4], b[:, :3] = 200, 90
    union = mask_from_results([brush_result(a), brush_result(b)], a.shape)
    assert union[0, 0] == 200 and union[6, 1] == 90 and union[6, 8] == 0
    assert not mask_from_results([], (8, 10)).any()  # a person erased the draft and submitted: no foreground
    note = {"type": "textarea", "value": {"text": ["hair?"]}}
    assert np.array_equal(mask_from_results([note, brush_result(a)], a.shape), a)


def test_a_region_of_another_size_or_a_short_rle_is_refused():
    region = brush_result(np.ones((8, 10), np.uint8))
    with pytest.raises(ValueError, match="10x8 pixels, not the photo's 12x8"):
        mask_from_results([region], (8, 12))
    region["value"]["rle"] = brush_result(np.ones((4, 10), np.uint8))["value"]["rle"]
    with pytest.raises(ValueError, match="holds 160 values"):
        mask_from_results([region], (8, 10))


def test_the_latest_submitted_annotation_counts_and_a_skipped_one_does_not():
    older = {"id": 1, "was_cancelled": False, "updated_at": "2026-01-01T10:00:00.5Z"}
    newer = {"id": 2, "was_cancelled": False, "updated_at": "2026-01-01T10:00:01Z"}
    skipped = {"id": 3, "was_cancelled": True, "updated_at": "2026-01-02T00:00:00Z"}
    assert latest_submitted([newer, older, skipped]) is newer
    assert latest_submitted([older, skipped]) is older
    assert latest_submitted([skipped]) is None and latest_submitted([]) is None
    edited = {**older, "updated_at": "2026-01-03T00:00:00Z"}  # submitted first, then updated
    assert latest_submitted([edited, newer]) is edited


def test_the_key_comes_from_the_environment_and_the_url_from_the_flag_the_environment_or_this_machine():
    with pytest.raises(StudioError, match=KEY_ENV):
        connect(None, {})
    assert connect(None, {KEY_ENV: "k" * 8}).url == "http://127.0.0.1:8080"
    assert connect(None, {KEY_ENV: "k" * 8, URL_ENV: "http://studio:9000/"}).url == "http://studio:9000"
    studio = connect("http://elsewhere/ls/", {KEY_ENV: "secret-key", URL_ENV: "http://studio:9000"})
    assert studio.url == "http://elsewhere/ls" and studio.session.headers["Authorization"] == "Token secret-key"
    assert studio.media_url("upload/3/ab12-cat.jpg") == "/ls/data/upload/3/ab12-cat.jpg"


def test_the_project_is_named_after_the_folder_within_label_studios_limits(tmp_path):
    assert project_title(tmp_path / "garden", None) == "garden"
    assert project_title(tmp_path / "ab", "Garden, corrected") == "Garden, corrected"
    with pytest.raises(StudioError, match="--project"):
        project_title(tmp_path / "ab", None)
    with pytest.raises(StudioError, match="51 characters"):
        project_title(tmp_path, "x" * 51)


def test_a_push_takes_the_drafts_without_a_persons_mask_worst_first_and_names_what_it_cannot(tmp_path):
    folder = tmp_path / "photos"
    drafts = drafted_folder(folder, {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.7, "e": 0.3})
    folders.write_mask(folders.mask_path(folder, "b"), drafts["b"])  # a person's mask: done
    (folder / folders.MASKS / "c.png").write_bytes(folders.draft_path(folder, "c").read_bytes())  # a draft copied
    folders.draft_path(folder, "e").unlink()
    (folder / folders.IMAGES / "a.jpg").unlink()
    plan = plan_push(folder)
    assert [d.name for d in plan.drafts] == ["d", "c"] and [d.rank for d in plan.drafts] == [2, 3]
    assert plan.masked == 1
    assert len(plan.skipped) == 2 and plan.skipped[0].startswith("e: no draft") and "no photo a.*" in plan.skipped[1]
    # names are names, even those that look like numbers or a missing value
    other = tmp_path / "numbered"
    drafted_folder(other, {"007": 0.2, "NA": 0.4})
    assert [(d.name, d.rank, d.model) for d in plan_push(other).drafts] == [("NA", 1, "toy"), ("007", 2, "toy")]
    with pytest.raises(FileNotFoundError, match="bgremoval draft"):
        plan_push(tmp_path)


def test_an_unreadable_photo_or_a_draft_of_another_size_is_named(tmp_path):
    folder = tmp_path / "photos"
    drafted_folder(folder, {"a": 0.5})
    draft = Draft("a", 1, 0.5, "toy", folder / folders.IMAGES / "a.jpg", folders.draft_path(folder, "a"), person=False)
    assert check_draft(draft, 10**7).shape == (48, 64)
    folders.write_draft(draft.draft, np.zeros((10, 10), np.uint8), "toy")
    with pytest.raises(ValueError, match=r"10x10 pixels, but its photo .*a.jpg is 64x48"):
        check_draft(draft, 10**7)
    draft.photo.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="a.jpg"):
        check_draft(draft, 10**7)


def test_label_studio_starts_on_this_machine_with_the_token_from_the_environment_not_the_command_line(tmp_path):
    argv, env = start_command("/ls/bin/label-studio", port=8123, data_dir=tmp_path, username="me@example.com",
                              password="pw", api_key="t" * 20, environ={"PATH": "/bin", "COLLECT_ANALYTICS": "true"})
    assert argv[:2] == ["/ls/bin/label-studio", "start"] and "--no-browser" in argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "8123"
    assert not any("t" * 20 in a or a == "pw" for a in argv)
    assert env["LABEL_STUDIO_USER_TOKEN"] == "t" * 20 and env["LABEL_STUDIO_PASSWORD"] == "pw"
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true" and env["LABEL_STUDIO_BASE_DATA_DIR"] == str(tmp_path)
    assert env["PATH"] == "/bin" and env["COLLECT_ANALYTICS"] == "true"  # the user's own setting wins
    assert env["LATEST_VERSION_CHECK"] == "false" and env["LABEL_STUDIO_SENTRY_DSN"] == ""
    with pytest.raises(StudioError, match="6 to 40"):
        start_command("ls", port=8123, data_dir=tmp_path, username=None, password=None, api_key="short", environ={})


def test_the_commands_name_what_is_missing(tmp_path, monkeypatch):
    args = build_parser().parse_args(["label", "push", str(tmp_path)])
    assert (args.url, args.project, args.limit) == (None, None, None)
    assert build_parser().parse_args(["label", "start"]).port is None
    monkeypatch.delenv(KEY_ENV, raising=False)
    drafted_folder(tmp_path / "photos", {"a": 0.5})
    for command in ("push", "pull"):
        with pytest.raises(SystemExit) as exit_:
            cli(["label", command, str(tmp_path / "photos"), "--quiet"])
        assert f"bgremoval label {command}: {KEY_ENV} is not set" in str(exit_.value.code)
    with pytest.raises(SystemExit) as exit_:
        cli(["label", "push", str(tmp_path / "nowhere")])
    assert "nowhere is not a folder" in str(exit_.value.code)
    monkeypatch.chdir(tmp_path)  # no .venv-label-studio here
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit) as exit_:
        cli(["label", "start"])
    assert "make label-studio" in str(exit_.value.code)


# --- against a real Label Studio --------------------------------------------------------------------------

# The tests below run in one pytest-xdist worker (xdist_group "label_studio"), so that one server is started.
@pytest.fixture(scope="module")
def label_studio(tmp_path_factory) -> Iterator[str]:
    """`bgremoval label start` on a free port, its data in a temporary folder; its URL once it answers."""
    if not (LS_VENV / "bin" / "label-studio").is_file():
        pytest.fail(f"{LS_VENV} not found: `make label-studio` installs Label Studio there (`make test` does)")
    tmp = tmp_path_factory.mktemp("label_studio")
    port = free_port()
    env = project_env(LABEL_STUDIO_BASE_DATA_DIR=str(tmp / "data"), **{KEY_ENV: KEY})
    cmd = [sys.executable, "-m", "bgremoval.cli", "label", "start", "--port", str(port), "--username", USER,
           "--password", PASSWORD]
    # The first start migrates a new database: about 45 s on 2 cores, longer while other tests run.
    with running_server(cmd, f"http://127.0.0.1:{port}/health", tmp / "label-studio.log", env, cwd=ROOT, timeout=300):
        yield f"http://127.0.0.1:{port}"


def api(url: str, method: str, path: str, **kwargs):
    """One call to Label Studio's API as the test user; its JSON."""
    resp = requests.request(method, f"{url}{path}", headers={"Authorization": f"Token {KEY}"}, timeout=60, **kwargs)
    assert resp.status_code < 400, f"{method} {path}: {resp.status_code} {resp.text[:500]}"
    return resp.json() if resp.content else None


def projects_titled(url: str, title: str) -> list[dict]:
    return [p for p in api(url, "GET", "/api/projects/", params={"title": title, "page_size": 100})["results"]
            if p["title"] == title]


def tasks_of(url: str, project_id: int) -> list[dict]:
    """The project's tasks with their annotations and predictions, in Label Studio's order."""
    return api(url, "GET", "/api/tasks/", params={"project": project_id, "fields": "all", "page_size": 100})["tasks"]


def push(url: str, folder: Path, *flags: str) -> int:
    return cli(["label", "push", str(folder), "--url", url, "--quiet", *flags])


@pytest.mark.slow
@pytest.mark.xdist_group("label_studio")
def test_push_imports_each_photo_once_worst_first_with_its_draft_as_the_prediction(label_studio, tmp_path,
                                                                                  monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, KEY)
    folder = tmp_path / "garden-photos"
    drafts = drafted_folder(folder, {"a": 0.2, "b": 0.9, "c": 0.5, "d": 0.7, "done": 0.95, "broken": 0.8})
    folders.write_mask(folders.mask_path(folder, "done"), drafts["done"])
    (folder / folders.IMAGES / "broken.jpg").write_bytes(b"not a jpeg")

    assert push(label_studio, folder, "--limit", "2") == 1  # the broken photo is named and skipped
    out, err = capsys.readouterr()
    assert "skipped broken: " in err and "broken.jpg" in err
    assert "pushed 2 photo(s) to new project 'garden-photos'" in out and "2 left for a later push" in out
    assert push(label_studio, folder) == 1
    out, _ = capsys.readouterr()
    assert "pushed 2 photo(s) to project 'garden-photos'" in out and "2 already there, 1 with a person's mask" in out
    assert push(label_studio, folder) == 1
    assert "pushed 0 photo(s)" in capsys.readouterr().out

    (project,) = projects_titled(label_studio, "garden-photos")  # one project, the same one every time
    assert project["label_config"] == label_config()
    tasks = tasks_of(label_studio, project["id"])
    # Label Studio's stream goes by task id: the worst first (rank 1 has a person's mask, 3 is unreadable)
    assert [t["data"]["name"] for t in sorted(tasks, key=lambda t: t["id"])] == ["b", "d", "c", "a"]
    assert [t["data"]["rank"] for t in sorted(tasks, key=lambda t: t["id"])] == [2, 4, 5, 6]
    for task in tasks:
        name = task["data"]["name"]
        assert task["data"]["uncertainty"] == pytest.approx({"a": 0.2, "b": 0.9, "c": 0.5, "d": 0.7}[name])
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "toy" and not task["annotations"]
        assert np.array_equal(mask_from_results(prediction["result"], (48, 64)), drafts[name]), name
        photo = requests.get(label_studio + task["data"][IMAGE], headers={"Authorization": f"Token {KEY}"}, timeout=60)
        assert photo.content == (folder / folders.IMAGES / f"{name}.jpg").read_bytes(), name  # the photo as it is


@pytest.mark.slow
@pytest.mark.xdist_group("label_studio")
def test_push_into_a_project_of_that_title_keeps_it_and_gives_it_the_brush(label_studio, tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.setenv(KEY_ENV, KEY)
    boxes = ('<View><Image name="image" value="$image"/><RectangleLabels name="box" toName="image">'
             '<Label value="Cat"/></RectangleLabels></View>')
    made = api(label_studio, "POST", "/api/projects/", json={"title": "Kitchen, by hand", "label_config": boxes})
    folder = tmp_path / "kitchen"
    drafted_folder(folder, {"k1": 0.4, "k2": 0.6})
    assert push(label_studio, folder, "--project", "Kitchen, by hand") == 0
    assert f"project 'Kitchen, by hand' (id {made['id']})" in capsys.readouterr().out
    (project,) = projects_titled(label_studio, "Kitchen, by hand")
    assert project["id"] == made["id"] and config_fits(project["label_config"])
    assert [t["data"]["name"] for t in tasks_of(label_studio, made["id"])] == ["k2", "k1"]


@pytest.mark.slow
@pytest.mark.xdist_group("label_studio")
def test_pull_writes_what_a_person_submitted_and_nothing_for_what_they_skipped_or_left(label_studio, tmp_path,
                                                                                      monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, KEY)
    folder = tmp_path / "pull-photos"
    names = ["corrected", "unchanged", "skipped", "untouched", "twice"]
    drafts = drafted_folder(folder, {name: i / 10 for i, name in enumerate(names)})
    assert push(label_studio, folder) == 0
    (project,) = projects_titled(label_studio, "pull-photos")
    tasks = {t["data"]["name"]: t for t in tasks_of(label_studio, project["id"])}

    def annotate(name: str, result: list, cancelled: bool = False) -> None:
        api(label_studio, "POST", f"/api/tasks/{tasks[name]['id']}/annotations/",
            json={"result": result, "was_cancelled": cancelled})

    corrected = drafts["corrected"].copy()
    corrected[:, :20] = 0  # the person erased a wrong part ...
    corrected[40:, 30:50] = 255  # ... and painted a missing one
    annotate("corrected", [brush_result(corrected)])
    annotate("unchanged", tasks["unchanged"]["predictions"][0]["result"])  # the draft, submitted as it was
    annotate("skipped", [], cancelled=True)
    first, second = np.full((48, 64), 255, np.uint8), drafts["twice"] // 2
    annotate("twice", [brush_result(first)])
    annotate("twice", [brush_result(second)])  # submitted later: this one counts
    annotate("twice", [], cancelled=True)  # skipped later still: not submitted

    assert cli(["label", "pull", str(folder), "--url", label_studio, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "wrote 3 mask(s)" in out and "1 skipped and 1 untouched" in out
    assert np.array_equal(read_png(folders.mask_path(folder, "corrected")), corrected)
    assert np.array_equal(read_png(folders.mask_path(folder, "unchanged")),
                          read_png(folders.draft_path(folder, "unchanged")))  # pixel for pixel the draft file
    assert np.array_equal(read_png(folders.mask_path(folder, "twice")), second)
    assert not folders.is_draft(folders.mask_path(folder, "unchanged"))  # now a person's mask
    for name in ("skipped", "untouched"):
        assert not folders.mask_path(folder, name).exists(), name
    assert all(folders.is_draft(folders.draft_path(folder, name)) for name in names)  # drafts stay
    # a second push sends nothing new: every photo is there, and three now have a person's mask
    assert push(label_studio, folder) == 0
    assert "pushed 0 photo(s)" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.xdist_group("label_studio")
def test_label_studios_own_sdk_reads_our_brush_masks_and_we_read_its(tmp_path):
    """The RLE comes from label-studio-converter in our venv; the SDK that ships with Label Studio decodes it
    the same, and its encoding decodes the same here."""
    python = LS_VENV / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"{LS_VENV} not found: `make label-studio` installs Label Studio there (`make test` does)")
    mask = soft_draft(31, 45, seed=5)
    (tmp_path / "ours.json").write_text(json.dumps(brush_result(mask)["value"]["rle"]))
    np.save(tmp_path / "mask.npy", mask)
    script = ("import json, sys, numpy as np; from label_studio_sdk.converter.brush import decode_rle, mask2rle; "
              "d = sys.argv[1]; m = np.load(d + '/mask.npy'); "
              "rgba = decode_rle(json.load(open(d + '/ours.json'))).reshape(m.shape + (4,)); "
              "np.save(d + '/decoded.npy', rgba); "
              "json.dump([int(v) for v in mask2rle(m)], open(d + '/theirs.json', 'w'))")
    done = subprocess.run([str(python), "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.array_equal(np.load(tmp_path / "decoded.npy")[..., 3], mask)
    theirs = brush_result(mask)
    theirs["value"]["rle"] = json.loads((tmp_path / "theirs.json").read_text())
    assert np.array_equal(mask_from_results([theirs], mask.shape), mask)


@pytest.mark.slow
@pytest.mark.xdist_group("label_studio")
def test_a_person_sees_the_draft_over_the_photo(label_studio, browser, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv(KEY_ENV, KEY)
    folder = tmp_path / "flower-photos"
    photo = sample_photo("flower.jpg")  # a real photo, so that the screenshot shows what a person sees
    h, w = photo.shape[:2]
    (folder / folders.IMAGES).mkdir(parents=True)
    Image.fromarray(photo).save(folder / folders.IMAGES / "flower.jpg", quality=92)
    folders.write_draft(folders.draft_path(folder, "flower"), soft_draft(h, w, seed=3), "toy")
    pd.DataFrame([{"name": "flower", "rank": 1, "uncertainty": 0.4, "image_path": "", "draft_path": "",
                   "model": "toy"}]).to_csv(folder / folders.RANKING, index=False)
    assert push(label_studio, folder) == 0
    (project,) = projects_titled(label_studio, "flower-photos")
    (task,) = tasks_of(label_studio, project["id"])

    driver = browser.driver
    driver.get(f"{label_studio}/user/login/")
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.NAME, "email"))
    driver.find_element(By.NAME, "email").send_keys(USER)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 60).until(lambda d: "/user/login" not in d.current_url)
    driver.get(f"{label_studio}/projects/{project['id']}/data?task={task['id']}")
    # The photo, at its size, and the draft decoded from its RLE into an image of the same size (a blob: URL).
    sizes = ("return Array.from(document.images).filter(i => i.complete && i.naturalWidth)"
             ".map(i => [i.src.startsWith('blob:') ? 'region' : i.src, i.naturalWidth, i.naturalHeight])")
    body = lambda: driver.find_element(By.TAG_NAME, "body").text  # noqa: E731
    try:
        WebDriverWait(driver, 120).until(
            lambda d: any(src == "region" for src, *_ in d.execute_script(sizes)) and LABEL in body())
    finally:
        browser.screenshot("label-studio-task")
    images = driver.execute_script(sizes)
    assert [label_studio + task["data"][IMAGE], w, h] in images, images
    assert ["region", w, h] in images, images
    assert "flower" in body().split("\n")  # the task's header: the photo's name


@pytest.mark.slow
@pytest.mark.xdist_group("label_studio")
def test_suspect_masks_go_to_a_project_of_their_own_and_a_checked_mask_replaces_the_old_which_is_kept(
        label_studio, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, KEY)
    folder = tmp_path / "shop"
    masks = {}
    for i, name in enumerate(["p1", "p2", "p3"]):
        image, mask = disc_image(48, 64, seed=i)
        (folder / folders.IMAGES).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / folders.IMAGES / f"{name}.png")
        masks[name] = mask
    masks["p2"] = 255 - masks["p2"]  # the background marked instead of the subject
    folders.write_mask(folders.mask_path(folder, "p1"), masks["p1"])
    folders.write_mask(folders.mask_path(folder, "p2"), masks["p2"])
    Image.fromarray(masks["p3"]).save(folder / folders.MASKS / "p3.jpg", quality=100)  # a JPEG mask
    assert cli(["suspects", str(folder), "--model", "u2netp", "--quiet"]) == 0
    ranking = pd.read_csv(folder / "suspects.csv")
    assert ranking["name"][0] == "p2" and (folder / "suspects_worst.png").is_file()

    assert push(label_studio, folder, "--suspects") == 0
    assert "pushed 3 photo(s) to new project 'shop masks to check'" in capsys.readouterr().out
    (project,) = projects_titled(label_studio, "shop masks to check")
    tasks = sorted(tasks_of(label_studio, project["id"]), key=lambda t: t["id"])
    assert [t["data"]["name"] for t in tasks] == ranking["name"].tolist()  # the most suspect first
    for task in tasks:
        name = task["data"]["name"]
        shown = mask_from_results(task["predictions"][0]["result"], (48, 64))
        expected = masks[name] if name != "p3" else np.asarray(Image.open(folder / folders.MASKS / "p3.jpg"))
        assert np.array_equal(shown, expected), name  # the mask a person drew, as its file holds it
    by_name = {t["data"]["name"]: t for t in tasks}
    fixed = 255 - masks["p2"]
    for name, result in (("p2", [brush_result(fixed)]), ("p3", by_name["p3"]["predictions"][0]["result"]),
                         ("p1", by_name["p1"]["predictions"][0]["result"])):
        api(label_studio, "POST", f"/api/tasks/{by_name[name]['id']}/annotations/", json={"result": result})

    assert cli(["label", "pull", str(folder), "--url", label_studio, "--quiet", "--suspects"]) == 0
    assert np.array_equal(read_png(folders.mask_path(folder, "p2")), fixed)
    assert np.array_equal(read_png(folder / "replaced" / "p2.png"), masks["p2"])  # the old one, kept
    assert not (folder / folders.MASKS / "p3.jpg").exists() and (folder / "replaced" / "p3.jpg").is_file()
    assert (folder / folders.MASKS / "p3.png").is_file()  # one mask per name in masks/
    assert not (folder / "replaced" / "p1.png").exists()  # submitted unchanged: nothing to keep
    assert np.array_equal(read_png(folders.mask_path(folder, "p1")), masks["p1"])
