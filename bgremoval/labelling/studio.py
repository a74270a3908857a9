"""Correcting the drafts in Label Studio: one project per data folder, its photos worst first with their drafts
as pre-annotations (brush masks), and what a person submitted pulled back as masks into FOLDER/masks/.

The server is reached through its REST API with `requests`, not its SDK: label-studio-sdk 2.x needs
opencv-python-headless 4.12, which needs numpy < 2.3, older than the numpy the pipeline runs on. Brush masks
go through Label Studio's own RLE functions from label-studio-converter, the package the SDK's
`converter.brush` was moved from (the same code), which leaves the pipeline's packages as they are.

Photos are uploaded through the import API and the tasks then imported as JSON pointing at the uploaded
files: that works with any server, a plain local one or one on another machine, needs no local-file serving
or storage set up on it, and keeps the photos out of the tasks' JSON (a data URI would put megabytes into
every task list the UI loads).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from bgremoval.data.masks import load_mask
from bgremoval.images import ImageReadError, open_image
from bgremoval.labelling import folders

log = logging.getLogger(__name__)

URL_ENV, KEY_ENV = "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"
LOCAL_HOST, LOCAL_PORT = "127.0.0.1", 8080  # `label-studio start`'s own port
IMAGE, BRUSH, LABEL = "image", "mask", "Foreground"  # the labelling config's names
TITLE_LENGTH = (3, 50)  # the project titles Label Studio accepts
KEY_LENGTH = (6, 40)  # the user tokens Label Studio applies (shorter ones it ignores) and can store
DATABASE = "label_studio.sqlite3"  # in the data folder: there once the first start has created the user
UPLOADS_PER_IMPORT = 25  # photos uploaded before their tasks are imported in one request
TASKS_PER_PAGE = 100
RANKING_COLUMNS = ("name", "rank", "uncertainty", "model")
# Label Studio serves its uploads under its MEDIA_URL, /data/, below the path it is served at.
MEDIA = "/data/"


class StudioError(RuntimeError):
    """Label Studio could not be reached, or refused a request; the message says which and why."""


class Studio:
    """A Label Studio server's REST API, authenticated by an API token."""

    def __init__(self, url: str, api_key: str, timeout: float = 120):
        import requests

        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {api_key}"
        self.timeout = timeout

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request; its JSON answer, or a StudioError with the server's reason."""
        import requests

        try:
            resp = self.session.request(method, f"{self.url}{path}", timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise StudioError(f"cannot reach Label Studio at {self.url} ({exc}); start it with "
                              f"`bgremoval label start` or point --url / ${URL_ENV} at it") from exc
        if resp.status_code >= 400:
            hint = ""
            if resp.status_code == 401:
                hint = (f"; check ${KEY_ENV}: Label Studio takes it as the user's legacy token only if legacy "
                        "tokens are enabled (`bgremoval label start` enables them)")
            raise StudioError(f"Label Studio at {self.url}: {method} {path} answered {resp.status_code}: "
                              f"{_reason(resp)}{hint}")
        return resp.json() if resp.content else None

    def media_url(self, file: str) -> str:
        """The URL (path) a task's data uses for an uploaded file, as Label Studio names it itself."""
        return urlsplit(self.url).path.rstrip("/") + MEDIA + file.lstrip("/")


def _reason(resp: Any) -> str:
    """What a refusing server said, shortly."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or resp.reason
    if isinstance(body, dict):
        return json.dumps(body.get("validation_errors") or body.get("detail") or body)[:500]
    return json.dumps(body)[:500]


def connect(url: str | None = None, environ: Mapping[str, str] = os.environ) -> Studio:
    """The server at `url`, else $LABEL_STUDIO_URL, else a local one; the API key from $LABEL_STUDIO_API_KEY."""
    key = environ.get(KEY_ENV)
    if not key:
        raise StudioError(f"{KEY_ENV} is not set: export the API token of your Label Studio user (the one "
                          "`bgremoval label start` was first started with, or Account & Settings in Label Studio)")
    return Studio(url or environ.get(URL_ENV) or f"http://{LOCAL_HOST}:{LOCAL_PORT}", key)


# --- the labelling config and brush masks ------------------------------------------------------------------

def label_config() -> str:
    """The labelling config: the photo, and one brush label to paint the foreground with."""
    return (f'<View>\n'
            f'  <Header value="$name"/>\n'
            f'  <Image name="{IMAGE}" value="${IMAGE}" zoom="true" zoomControl="true"/>\n'
            f'  <BrushLabels name="{BRUSH}" toName="{IMAGE}">\n'
            f'    <Label value="{LABEL}" background="#ff00ff"/>\n'
            f'  </BrushLabels>\n'
            f'</View>')


def config_fits(config: str) -> bool:
    """Whether a project's labelling config has what push and pull rely on (a person may have added to it)."""
    try:
        root = ElementTree.fromstring(config)
    except ElementTree.ParseError:
        return False
    images = [e for e in root.iter("Image") if e.get("name") == IMAGE and e.get("value") == f"${IMAGE}"]
    brushes = [e for e in root.iter("BrushLabels") if e.get("name") == BRUSH and e.get("toName") == IMAGE]
    return bool(images) and any(label.get("value") == LABEL for b in brushes for label in b.iter("Label"))


def brush_result(mask: np.ndarray) -> dict:
    """A (H, W) uint8 mask as a brush region of the labelling config (Label Studio's RLE of RGBA, the mask
    in every channel, so that its alpha is the mask)."""
    from label_studio_converter.brush import mask2rle

    h, w = mask.shape
    return {"from_name": BRUSH, "to_name": IMAGE, "type": "brushlabels", "original_width": int(w),
            "original_height": int(h), "image_rotation": 0,
            "value": {"format": "rle", "rle": [int(v) for v in mask2rle(np.ascontiguousarray(mask, np.uint8))],
                      "brushlabels": [LABEL]}}


def mask_from_results(results: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """The (H, W) uint8 mask an annotation's brush regions paint (their union); all background without one."""
    from label_studio_converter.brush import decode_rle

    mask = np.zeros(shape, np.uint8)
    for result in results:
        value = result.get("value") or {}
        if result.get("type") != "brushlabels" or "rle" not in value:
            continue
        if value.get("format", "rle") != "rle":
            raise ValueError(f"a brush region in format {value.get('format')!r}; only rle is read")
        size = (result.get("original_height"), result.get("original_width"))
        if size != tuple(shape):
            raise ValueError(f"a brush region drawn on {size[1]}x{size[0]} pixels, "
                             f"not the photo's {shape[1]}x{shape[0]}")
        rgba = decode_rle(value["rle"])
        if rgba.size != shape[0] * shape[1] * 4:
            raise ValueError(f"a brush region's RLE holds {rgba.size} values, not {shape[0]}x{shape[1]}x4")
        np.maximum(mask, rgba.reshape(shape[0], shape[1], 4)[..., 3], out=mask)  # painted where alpha is
    return mask


# --- projects and tasks ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Project:
    """A Label Studio project, and whether this call created it."""

    id: int
    title: str
    created: bool


CHECK_SUFFIX = " masks to check"  # the default title of a folder's project of suspect masks


def project_title(folder: Path, title: str | None, suspects: bool = False) -> str:
    """The project's title: the one given, else the data folder's name (with CHECK_SUFFIX for its suspect masks:
    a project of their own); checked as Label Studio checks it."""
    title = title or Path(folder).resolve().name + (CHECK_SUFFIX if suspects else "")
    low, high = TITLE_LENGTH
    if not low <= len(title) <= high:
        raise StudioError(f"project title {title!r} has {len(title)} characters; Label Studio takes {low} to {high} "
                          "(name one with --project)")
    return title


def find_project(studio: Studio, title: str) -> dict | None:
    """The project of that exact title (the oldest, if several), or None."""
    found, page = [], 1
    while True:
        answer = studio.call("GET", "/api/projects/", params={"title": title, "page": page, "page_size": 100})
        found += [p for p in answer.get("results", []) if p.get("title") == title]
        if not answer.get("next"):
            break
        page += 1
    if len(found) > 1:
        log.warning("%d projects are titled %r; using the oldest (id %d)", len(found), title,
                    min(p["id"] for p in found))
    return min(found, key=lambda p: p["id"]) if found else None


def open_project(studio: Studio, title: str) -> Project:
    """The project of that title, created with the labelling config if there is none; an existing one keeps
    its config if that still has the photo and the brush label, and is given ours if not."""
    project = find_project(studio, title)
    if project is None:
        created = studio.call("POST", "/api/projects/", json={"title": title, "label_config": label_config()})
        log.info("created project %r (id %d)", title, created["id"])
        return Project(created["id"], title, True)
    if not config_fits(project.get("label_config", "")):
        studio.call("PATCH", f"/api/projects/{project['id']}/", json={"label_config": label_config()})
        log.info("project %r (id %d): labelling config updated", title, project["id"])
    return Project(project["id"], title, False)


def project_tasks(studio: Studio, project_id: int, full: bool) -> list[dict]:
    """Every task of a project, in Label Studio's order (by id); with its annotations and predictions if full."""
    tasks: list[dict] = []
    page = 1
    while True:
        params = {"project": project_id, "page": page, "page_size": TASKS_PER_PAGE}
        if full:
            params["fields"] = "all"
        answer = studio.call("GET", "/api/tasks/", params=params)
        batch = answer.get("tasks", []) if isinstance(answer, dict) else answer
        tasks += batch
        total = answer.get("total", len(tasks)) if isinstance(answer, dict) else len(tasks)
        if not batch or len(tasks) >= total:
            return tasks
        page += 1


# --- push --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Draft:
    """A photo to correct: its draft (or, to check a suspect mask, the mask a person drew: `person`) and its place
    in the ranking (uncertainty: the draft's, or the suspect mask's disagreement with the model)."""

    name: str
    rank: int
    uncertainty: float
    model: str
    photo: Path
    draft: Path
    person: bool


@dataclass(frozen=True)
class Plan:
    """What a folder has to push: the drafts of photos without a person's mask, worst first; the rows that
    cannot be pushed, each with the reason; how many photos already have a person's mask."""

    drafts: list[Draft]
    skipped: list[str]
    masked: int


def _images(folder: Path, sub: str) -> dict[str, Path]:
    from bgremoval.data.manifest import list_images

    path = Path(folder) / sub
    return list_images(path, root=folder) if path.is_dir() else {}


def plan_push(folder: Path, suspects: bool = False) -> Plan:
    """The drafts of FOLDER/drafts.csv whose photo has no mask a person drew or checked, in rank order; with
    `suspects`, the masks of FOLDER/suspects.csv, most suspect first."""
    if suspects:
        return plan_check(folder)
    ranking_file = Path(folder) / folders.RANKING
    if not ranking_file.is_file():
        raise FileNotFoundError(f"{ranking_file} not found: draft the photos first (`bgremoval draft {folder}`)")
    # Read as text: a photo named 007 or NA keeps its name.
    ranking = pd.read_csv(ranking_file, dtype=str, keep_default_na=False)
    missing = [c for c in RANKING_COLUMNS if c not in ranking.columns]
    if missing:
        raise ValueError(f"{ranking_file} has no column(s) {', '.join(missing)}; draft the photos again")
    ranking["rank"] = pd.to_numeric(ranking["rank"], errors="coerce")
    ranking["uncertainty"] = pd.to_numeric(ranking["uncertainty"], errors="coerce")
    photos = _images(folder, folders.IMAGES)
    # A draft copied into masks/ by hand is still a draft, not a person's mask.
    masks = {name for name, path in _images(folder, folders.MASKS).items() if not folders.is_draft(path)}
    drafts, skipped, masked = [], [], 0
    for row in ranking.sort_values(["rank", "name"], kind="mergesort").itertuples(index=False):
        name = row.name
        if name in masks:
            masked += 1
        elif pd.isna(row.rank) or pd.isna(row.uncertainty):
            skipped.append(f"{name}: {ranking_file} gives it no numeric rank and uncertainty")
        elif name not in photos:
            skipped.append(f"{name}: no photo {name}.* in {Path(folder) / folders.IMAGES}")
        elif not folders.draft_path(folder, name).is_file():
            skipped.append(f"{name}: no draft {folders.draft_path(folder, name)}")
        else:
            drafts.append(Draft(name=name, rank=int(row.rank), uncertainty=float(row.uncertainty), model=row.model,
                                photo=photos[name], draft=folders.draft_path(folder, name), person=False))
    return Plan(drafts, skipped, masked)


def plan_check(folder: Path) -> Plan:
    """The masks of FOLDER/suspects.csv (`bgremoval suspects`), most suspect first, each with its photo."""
    from bgremoval.labelling.suspects import RANKING

    ranking_file = Path(folder) / RANKING
    if not ranking_file.is_file():
        raise FileNotFoundError(f"{ranking_file} not found: rank the masks first (`bgremoval suspects {folder}`)")
    ranking = pd.read_csv(ranking_file, dtype=str, keep_default_na=False)
    missing = [c for c in ("name", "rank", "disagreement", "model") if c not in ranking.columns]
    if missing:
        raise ValueError(f"{ranking_file} has no column(s) {', '.join(missing)}; rank the masks again")
    ranking["rank"] = pd.to_numeric(ranking["rank"], errors="coerce")
    ranking["disagreement"] = pd.to_numeric(ranking["disagreement"], errors="coerce")
    photos, masks = _images(folder, folders.IMAGES), _images(folder, folders.MASKS)
    checks, skipped = [], []
    for row in ranking.sort_values(["rank", "name"], kind="mergesort").itertuples(index=False):
        if pd.isna(row.rank) or pd.isna(row.disagreement):
            skipped.append(f"{row.name}: {ranking_file} gives it no numeric rank and disagreement")
        elif row.name not in photos:
            skipped.append(f"{row.name}: no photo {row.name}.* in {Path(folder) / folders.IMAGES}")
        elif row.name not in masks:
            skipped.append(f"{row.name}: no mask {row.name}.* in {Path(folder) / folders.MASKS}")
        else:
            checks.append(Draft(name=row.name, rank=int(row.rank), uncertainty=float(row.disagreement), model=row.model,
                                photo=photos[row.name], draft=masks[row.name], person=True))
    return Plan(checks, skipped, 0)


def check_draft(draft: Draft, max_pixels: int) -> np.ndarray:
    """A draft that fits its photo, as (H, W) uint8; a ValueError naming the file that is unreadable or off."""
    try:
        with open_image(draft.photo, max_pixels) as photo:
            width, height = photo.size  # as a viewer shows it (EXIF orientation applied), as the draft is drawn
    except ImageReadError as exc:
        raise ValueError(str(exc)) from exc
    try:
        # a person's mask is read as prepare reads it (palette, JPEG, grey); a draft is 8-bit grey
        mask = load_mask(draft.draft, max_pixels) if draft.person else folders.read_draft(draft.draft)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"{draft.draft}: cannot be read as a {'mask' if draft.person else 'draft'} ({exc})") from exc
    if mask.shape != (height, width):
        raise ValueError(f"{draft.draft}: {mask.shape[1]}x{mask.shape[0]} pixels, but its photo {draft.photo} is "
                         f"{width}x{height}; draft it again")
    return mask


def task_json(draft: Draft, image_url: str, mask: np.ndarray) -> dict:
    """A task for a photo, with its ranking in the data (a column to sort by) and its draft as the prediction."""
    return {"data": {IMAGE: image_url, "name": draft.name, "rank": draft.rank, "uncertainty": draft.uncertainty,
                     "model": draft.model},
            "predictions": [{"model_version": draft.model, "result": [brush_result(mask)]}]}


@dataclass(frozen=True)
class Pushed:
    """What a push did: the project, the photos imported (worst first), those the project already had, those
    with a person's mask, those left for a later push (--limit), and those skipped, each with the reason."""

    project: Project
    imported: list[str]
    already: int
    masked: int
    left: int
    skipped: list[str]


def _upload(studio: Studio, project_id: int, photo: Path) -> int:
    """Upload a photo into the project's files without making a task of it; its upload id."""
    mime = mimetypes.guess_type(photo.name)[0] or "application/octet-stream"
    with open(photo, "rb") as fh:
        answer = studio.call("POST", f"/api/projects/{project_id}/import", params={"commit_to_project": "false"},
                             files={"file": (photo.name, fh, mime)})
    ids = answer.get("file_upload_ids") or []
    if len(ids) != 1:
        raise StudioError(f"Label Studio did not take {photo} as one uploaded file: {answer}")
    return ids[0]


def _import(studio: Studio, project_id: int, batch: list[tuple[Draft, int, np.ndarray]]) -> None:
    """Tasks for uploaded photos, in the batch's order (Label Studio numbers them so, and its labelling
    stream follows the numbers)."""
    ids = [upload for _, upload, _ in batch]
    files = {f["id"]: f["file"] for f in studio.call("GET", f"/api/projects/{project_id}/file-uploads",
                                                     params={"ids": json.dumps(ids)})}
    tasks = [task_json(draft, studio.media_url(files[upload]), mask) for draft, upload, mask in batch]
    answer = studio.call("POST", f"/api/projects/{project_id}/import", json=tasks)
    if answer.get("task_count") != len(tasks):
        raise StudioError(f"Label Studio imported {answer.get('task_count')} of {len(tasks)} tasks: {answer}")


def push(studio: Studio, folder: Path, title: str, max_pixels: int, limit: int | None = None,
         progress: bool = True, suspects: bool = False) -> Pushed:
    """Import the folder's drafted photos that have no mask yet into the project (created if need be), worst
    first, each with its draft as the prediction; photos the project has (by name) are not imported again.
    With `suspects`, the masks of FOLDER/suspects.csv instead, most suspect first, each with the mask a person
    drew as the prediction, for a person to check."""
    from tqdm import tqdm

    plan = plan_push(folder, suspects)
    project = open_project(studio, title)
    there = {str(t.get("data", {}).get("name")) for t in project_tasks(studio, project.id, full=False)}
    todo = [d for d in plan.drafts if d.name not in there]
    imported, skipped, batch = [], list(plan.skipped), []
    total = len(todo) if limit is None else min(limit, len(todo))
    bar = tqdm(total=total, desc="push", unit="photo", disable=not progress or total == 0)
    tried = 0
    for draft in todo:
        if limit is not None and len(imported) + len(batch) >= limit:
            break
        tried += 1
        try:
            mask = check_draft(draft, max_pixels)
        except ValueError as exc:
            skipped.append(f"{draft.name}: {exc}")
            continue
        batch.append((draft, _upload(studio, project.id, draft.photo), mask))
        bar.update()
        if len(batch) == UPLOADS_PER_IMPORT:
            _import(studio, project.id, batch)
            imported += [d.name for d, _, _ in batch]
            batch = []
    if batch:
        _import(studio, project.id, batch)
        imported += [d.name for d, _, _ in batch]
    bar.close()
    return Pushed(project=project, imported=imported, already=len(plan.drafts) - len(todo), masked=plan.masked,
                  left=len(todo) - tried, skipped=skipped)


# --- pull --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pulled:
    """What a pull did: the masks written, the tasks a person skipped, those nobody touched, and the
    submitted ones that could not become masks, each with the reason."""

    project: Project
    written: list[str]
    skipped: int
    untouched: int
    failed: list[str]


SAFE_NAME = re.compile(r"^[^/\\]+$")  # a task's name becomes a file name in masks/: never a path


def latest_submitted(annotations: list[dict]) -> dict | None:
    """The annotation last submitted or updated (a skipped one, `was_cancelled`, is not submitted), or None."""
    submitted = [a for a in annotations if not a.get("was_cancelled")]

    def when(a: dict) -> tuple[datetime, int]:
        stamp = a.get("updated_at") or a.get("created_at") or "1970-01-01T00:00:00+00:00"
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")), int(a.get("id") or 0)

    return max(submitted, key=when) if submitted else None


def _shape(task: dict, draft: Path) -> tuple[int, int] | None:
    """The photo's (H, W): its draft's, else the task's prediction's."""
    from PIL import Image

    if draft.is_file():
        try:
            with Image.open(draft) as img:
                return img.size[1], img.size[0]
        except OSError:
            pass
    for prediction in task.get("predictions") or []:
        for result in prediction.get("result") or []:
            if result.get("original_height") and result.get("original_width"):
                return result["original_height"], result["original_width"]
    return None


def pull(studio: Studio, folder: Path, title: str, progress: bool = True) -> Pulled:
    """Write the latest submitted annotation of each of the project's tasks as FOLDER/masks/NAME.png; skipped
    and untouched tasks write nothing (their photos keep their drafts). A mask it replaces (a suspect mask a
    person checked) is kept in FOLDER/replaced/."""
    from tqdm import tqdm

    project = find_project(studio, title)
    if project is None:
        raise StudioError(f"Label Studio at {studio.url} has no project titled {title!r}; push the folder first "
                          f"(`bgremoval label push {folder}`) or name the project with --project")
    photos = _images(folder, folders.IMAGES)
    written, failed, skipped, untouched = [], [], 0, 0
    for task in tqdm(project_tasks(studio, project["id"], full=True), desc="pull", unit="task", disable=not progress):
        name = str((task.get("data") or {}).get("name", ""))
        annotation = latest_submitted(task.get("annotations") or [])
        if annotation is None:
            if task.get("annotations"):
                skipped += 1
            else:
                untouched += 1
            continue
        if not SAFE_NAME.match(name) or name in (".", ".."):
            failed.append(f"task {task['id']}: its data names no photo (name {name!r})")
            continue
        if name not in photos:
            failed.append(f"{name} (task {task['id']}): no photo {name}.* in {Path(folder) / folders.IMAGES}")
            continue
        shape = _shape(task, folders.draft_path(folder, name))
        if shape is None:
            failed.append(f"{name} (task {task['id']}): neither a draft nor a prediction says the photo's size")
            continue
        try:
            mask = mask_from_results(annotation.get("result") or [], shape)
        except ValueError as exc:
            failed.append(f"{name} (task {task['id']}, annotation {annotation.get('id')}): {exc}")
            continue
        folders.replace_mask(folder, name, mask)
        written.append(name)
    return Pulled(Project(project["id"], title, False), written, skipped, untouched, failed)


# --- the server --------------------------------------------------------------------------------------------

def start_command(label_studio: str, *, port: int, data_dir: Path, username: str | None, password: str | None,
                  api_key: str | None, environ: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """`label-studio start`'s command line and environment: on this machine only, its data in data_dir, the
    user and the API key (a legacy token, enabled) in the environment rather than on the command line, where
    any user's `ps` shows them; and nothing sent out (no error reports, analytics or version checks)."""
    low, high = KEY_LENGTH
    if api_key and not low <= len(api_key) <= high:
        raise StudioError(f"{KEY_ENV} has {len(api_key)} characters; Label Studio takes a token of {low} to {high}")
    argv = [label_studio, "start", "--no-browser", "--host", LOCAL_HOST, "--port", str(port)]
    env = {"COLLECT_ANALYTICS": "false", "LABEL_STUDIO_SENTRY_DSN": "", "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
           "LATEST_VERSION_CHECK": "false", **environ,
           "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
           # Label Studio 1.23 refuses a user's token unless legacy tokens are on for the organisation, which
           # is decided when the first start creates it.
           "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true"}
    for var, value in (("LABEL_STUDIO_USERNAME", username), ("LABEL_STUDIO_PASSWORD", password),
                       ("LABEL_STUDIO_USER_TOKEN", api_key)):
        if value:
            env[var] = value
    return argv, env
