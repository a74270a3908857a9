"""The registered pyfunc end to end, on a model trained on toy data: in process, behind the real
`mlflow models serve` over HTTP, and through `bgremoval predict`."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from bgremoval import serving
from bgremoval.cli import main as cli
from tests.conftest import disc_image, free_port, running_server

NAME = "toy-bgremoval"
MAX_REQUEST_MB = 0.2
SERVER_PIDS: dict[int, int] = {}


def b64_png(array: np.ndarray) -> str:
    return base64.b64encode(serving.png_bytes(Image.fromarray(array))).decode("ascii")


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred >= 128, truth >= 128
    return float((p & t).sum() / max((p | t).sum(), 1))


@pytest.fixture(scope="module")
def registered(tmp_path_factory, toy_model):
    """The toy model logged as the pipeline logs it, registered, and aliased champion."""
    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("toy", artifact_location=(tmp / "artifacts").as_uri())
    mlflow.set_experiment("toy")
    example = serving.png_bytes(Image.fromarray(disc_image(24, 24)[0]))
    with mlflow.start_run() as run:
        info = serving.log_model(toy_model, size=32, max_pixels=10**6, example=example, max_request_mb=50)
    version = mlflow.register_model(info.model_uri, NAME).version
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", version)
    return {"uri": uri, "run_id": run.info.run_id, "model_uri": info.model_uri, "tmp": tmp}


def test_the_logged_model_carries_its_code_and_config(registered):
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion"))
    assert (local / "code" / "bgremoval" / "serving.py").exists()
    assert not list((local / "code").rglob("__pycache__"))
    loaded = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    assert loaded.model_config["size"] == 32 and loaded.model_config["max_request_mb"] == 50
    assert [c.name for c in loaded.metadata.get_input_schema().inputs] == ["image"]
    assert {p.name for p in loaded.metadata.get_params_schema().params} == {"output", "threshold", "bg_color"}


def test_pyfunc_cuts_out_the_toy_foreground_at_the_input_size(registered):
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    image, truth = disc_image(60, 90, seed=3)
    out = model.predict(pd.DataFrame({"image": [b64_png(image)]}), params={"output": "mask"})
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["png"][0]))))
    assert mask.shape == (60, 90)
    assert iou(mask, truth) > 0.7  # the toy model learned the discs
    cut = model.predict(pd.DataFrame({"image": [b64_png(image)]}), params={"output": "cutout"})
    rgba = np.asarray(Image.open(io.BytesIO(base64.b64decode(cut["png"][0]))))
    assert rgba.shape == (60, 90, 4) and (rgba[..., :3] == image).all() and (rgba[..., 3] == mask).all()


def test_pyfunc_turns_bad_input_into_invalid_parameter_errors(registered):
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    with pytest.raises(MlflowException) as err:
        model.predict(pd.DataFrame({"image": ["%%%"]}))
    assert err.value.get_http_status_code() == 400 and "row 0 (image): is not valid base64" in err.value.message


def _post(port: int, body: dict | bytes, content_type: str = "application/json") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=data,
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=180) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read() or b"{}"
        try:
            return exc.code, json.loads(text)
        except ValueError:  # the server's own plain-text answers (e.g. 415)
            return exc.code, {"message": text.decode(errors="replace")}


@pytest.fixture(scope="module")
def server(registered):
    """`mlflow models serve -m models:/NAME@champion --env-manager local` on a free port (no --host:
    the default binding is under test), started outside the checkout, with small pixel and request
    caps so a bomb and an oversized request are cheap to send."""
    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=registered["uri"], BGREMOVAL_MAX_PIXELS="200000",
               BGREMOVAL_MAX_REQUEST_MB=str(MAX_REQUEST_MB),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # its uvicorn
    env.pop("MLFLOW_HOST", None)
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local",
           "-p", str(port), "-w", "1"]
    with running_server(cmd, f"http://127.0.0.1:{port}/ping", Path(registered["tmp"]) / "serve.log", env,
                        cwd=registered["tmp"]) as proc:
        SERVER_PIDS[port] = proc.pid
        yield port


def _good(port, image, **params):
    body = {"dataframe_split": {"columns": ["image"], "data": [[b64_png(image)]]}}
    if params:
        body["params"] = params
    return _post(port, body)


@pytest.mark.slow
def test_server_answers_good_requests_in_every_output_mode(server):
    image, truth = disc_image(70, 50, seed=5)
    status, body = _good(server, image, output="composite", bg_color="#00ff00", threshold=0.5)
    assert status == 200, body
    row = body["predictions"][0]
    assert (row["width"], row["height"]) == (50, 70)
    comp = np.asarray(Image.open(io.BytesIO(base64.b64decode(row["png"]))))
    assert comp.shape == (70, 50, 3)
    background = truth == 0
    assert (comp[background] == [0, 255, 0]).all(axis=1).mean() > 0.9  # background replaced by green

    records = {"dataframe_records": [{"image": b64_png(image)}, {"image": b64_png(disc_image(40, 40)[0])}]}
    status, body = _post(server, records)  # default output: mask
    assert status == 200 and len(body["predictions"]) == 2
    assert Image.open(io.BytesIO(base64.b64decode(body["predictions"][1]["png"]))).size == (40, 40)


@pytest.mark.slow
def test_server_refuses_bad_requests_with_a_reason_and_keeps_serving(server):
    bomb = b64_png(np.zeros((500, 500, 3), np.uint8))  # 250,000 px > the 200,000 cap; ~1 KB of PNG
    cases = [
        ({"dataframe_split": {"columns": ["image"], "data": [["not base64 !!"]]}}, "is not valid base64"),
        ({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b"GIF89a nope").decode()]]}},
         "cannot be decoded as an image"),
        ({"dataframe_split": {"columns": ["image"], "data": [[bomb]]}}, "over the limit of 200000"),
        ({"dataframe_split": {"columns": ["image"], "data": [[""]]}}, "is empty (0 bytes)"),
        ({"dataframe_split": {"columns": ["image"], "data": []}}, "no rows"),
        ({"dataframe_split": {"columns": ["picture"], "data": [["x"]]}}, "missing inputs ['image']"),
        ({"dataframe_split": {"columns": ["image"], "data": [[b64_png(disc_image(8, 8)[0])]]},
          "params": {"output": "sticker"}}, "output 'sticker' is not one of"),
    ]
    for body, needle in cases:
        status, answer = _post(server, body)
        assert 400 <= status < 500, (needle, status, answer)
        assert needle in answer.get("message", ""), (needle, answer)
    status, body = _good(server, disc_image(30, 30)[0])
    assert status == 200 and body["predictions"][0]["width"] == 30


def test_cli_predicts_a_folder_and_reports_unreadable_files(registered, tmp_path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    a, a_truth = disc_image(48, 64, seed=1)
    Image.fromarray(a).save(src / "a.png")
    Image.fromarray(disc_image(50, 40, seed=2)[0]).save(src / "b.jpg", quality=95)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (src / "notes.txt").write_text("not an image, not even looked at")
    out = tmp_path / "out"
    code = cli(["predict", "--model", f"models:/{NAME}@champion", "--tracking-uri", registered["uri"],
                "--output", "mask", "--quiet", str(src), str(out)])
    captured = capsys.readouterr()
    assert code == 1  # one file could not be read; the rest were written
    assert "broken.jpg" in captured.err and "wrote 2 mask PNGs" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    mask_a = np.asarray(Image.open(out / "a.png"))
    assert mask_a.shape == (48, 64) and iou(mask_a, a_truth) > 0.7
    assert Image.open(out / "b.png").size == (40, 50)


@pytest.mark.parametrize("which", ["run", "folder", "keras"])
def test_cli_takes_a_run_uri_a_model_folder_or_a_keras_file(registered, toy_model, tmp_path, which):
    image, _ = disc_image(33, 47, seed=4)
    Image.fromarray(image).save(tmp_path / "one.png")
    model = {"run": f"runs:/{registered['run_id']}/model", "keras": str(toy_model),
             "folder": mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=str(tmp_path / "m"))}[which]
    code = cli(["predict", "--model", model, "--tracking-uri", registered["uri"], "--size", "32",
                "--output", "composite", "--bg-color", "0,0,255", "--threshold", "0.5", str(tmp_path / "one.png"), str(tmp_path / "cut.png")])
    assert code == 0
    comp = np.asarray(Image.open(tmp_path / "cut.png"))
    assert comp.shape == (33, 47, 3) and (comp[0, 0] == [0, 0, 255]).all()  # a corner is background


def test_cli_says_what_to_do_when_the_model_is_missing(tmp_path):
    (tmp_path / "x.png").write_bytes(serving.png_bytes(Image.new("RGB", (4, 4))))
    with pytest.raises(SystemExit) as err:
        cli(["predict", "--model", str(tmp_path / "nope.keras"), str(tmp_path / "x.png"), str(tmp_path / "o")])
    assert "cannot load model" in str(err.value) and "models:/bgremoval@champion" in str(err.value)


@pytest.mark.slow
def test_the_readme_python_client_works_against_the_server(server, tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    client = readme.split("A Python client, for a folder of photos:\n\n```python\n", 1)[1].split("```", 1)[0]
    assert len(client.splitlines()) <= 25
    client = client.replace("http://127.0.0.1:5001", f"http://127.0.0.1:{server}")
    (tmp_path / "client.py").write_text(client)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(disc_image(36, 52)[0]).save(photos / "ok.jpg", quality=95)
    (photos / "bad.jpg").write_bytes(b"not a jpeg")
    run = subprocess.run([sys.executable, str(tmp_path / "client.py"), str(photos), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "bad.jpg: " in run.stdout and "cannot be decoded as an image" in run.stdout
    assert Image.open(tmp_path / "out" / "ok.png").size == (52, 36)


@pytest.mark.slow
def test_the_readme_curl_example_works_against_the_server(server, tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    command = readme.split("```bash\ncurl -s http://127.0.0.1:5001/invocations", 1)[1].split("```", 1)[0]
    command = f"curl -s http://127.0.0.1:{server}/invocations" + command.replace("python -c", f"{sys.executable} -c")
    Image.fromarray(disc_image(44, 66)[0]).save(tmp_path / "photo.jpg", quality=95)
    run = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    cut = Image.open(tmp_path / "photo_cutout.png")
    assert cut.mode == "RGBA" and cut.size == (66, 44)


@pytest.mark.slow
def test_server_binds_loopback_only_unless_told_otherwise(server):
    import psutil

    parent = psutil.Process(SERVER_PIDS[server])
    listening = [c.laddr for p in [parent, *parent.children(recursive=True)] for c in p.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening


@pytest.mark.slow
def test_an_oversized_request_gets_413_naming_the_limit(server):
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)  # ~160 KB of PNG
    body = {"dataframe_split": {"columns": ["image"], "data": [[b64_png(noise)], [b64_png(noise)]]}}
    status, answer = _post(server, body)
    assert status == 413, answer
    assert f"over the limit of {MAX_REQUEST_MB:g} MB (serve.max_request_mb / BGREMOVAL_MAX_REQUEST_MB)" in answer["message"]
    assert "send fewer or smaller images" in answer["message"]
    status, _ = _good(server, disc_image(20, 20)[0])
    assert status == 200


MALFORMED = [
    ({"dataframe_split": {"columns": ["image"], "data": [["not base64 !!"]]}}, "application/json", 400),
    ({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b"\x89PNG broken").decode()]]}}, "application/json", 400),
    ({"dataframe_split": {"columns": ["image"], "data": [[12345]]}}, "application/json", 400),
    ({"dataframe_split": {"columns": ["image"], "data": []}}, "application/json", 400),
    ({"instances": "nonsense"}, "application/json", 400),
    (b"{not json", "application/json", 400),
    (b"image\nabc", "text/plain", 415),
]


@pytest.mark.slow
def test_server_under_load_answers_every_request_and_survives_malformed_ones(server):
    """200 requests at once, of mixed sizes; then 100 malformed ones; then it still answers."""
    from concurrent.futures import ThreadPoolExecutor

    sizes = [(24, 24), (48, 80), (120, 90), (200, 150), (64, 33)]

    def good(i):
        h, w = sizes[i % len(sizes)]
        status, body = _good(server, disc_image(h, w, seed=i)[0], output="cutout" if i % 2 else "mask")
        return status, (body["predictions"][0]["width"], body["predictions"][0]["height"]) if status == 200 else body, (w, h)

    with ThreadPoolExecutor(max_workers=200) as pool:
        answers = list(pool.map(good, range(200)))
    failed = [(status, got) for status, got, want in answers if status != 200 or got != want]
    assert not failed, failed[:5]

    def bad(i):
        body, content_type, expected = MALFORMED[i % len(MALFORMED)]
        return _post(server, body, content_type)[0], expected

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(bad, range(100)))
    assert all(got == expected for got, expected in statuses), sorted(set(statuses))
    assert psutil_alive(SERVER_PIDS[server])
    status, body = _good(server, disc_image(40, 30)[0])
    assert status == 200 and (body["predictions"][0]["width"], body["predictions"][0]["height"]) == (30, 40)


def psutil_alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
