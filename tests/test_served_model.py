"""The served model end to end: a served folder opened in process (onnxruntime and Keras), the MLflow pyfunc
as it is logged (its code, config and requirements), behind the real `mlflow models serve` over HTTP, and
through `bgremoval predict`."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bgremoval.cli import main as cli
from bgremoval.serving.config import ServingConfig
from bgremoval.serving.load import load
from bgremoval.serving.options import KINDS, options_from
from bgremoval.serving.pyfunc import PACKAGE, SHIPPED, BackgroundRemover, requirements, signature
from bgremoval.serving.refine import Refine, combine
from bgremoval.serving.render import edge_band, png_bytes, render
from bgremoval.network_io import resize_back, squash
from bgremoval.serving.runtime import KerasSegmenter
from bgremoval.serving.served import Served
from tests.helpers import (PARAMS, ROOT, disc_image, free_port, project_env, running_server, served_folder,
                           tracking_store)

DEFAULTS = dict(PARAMS["serve"]["defaults"])
NAME = "toy-bgremoval"
ONNX_NAME = "toy-bgremoval-onnx"
MAX_REQUEST_MB = 0.2
SERVER_PIDS: dict[int, int] = {}
TF_PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "tf-keras")


def b64_png(array: np.ndarray) -> str:
    return base64.b64encode(png_bytes(Image.fromarray(array))).decode("ascii")


def decode_png(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred >= 128, truth >= 128
    return float((p & t).sum() / max((p | t).sum(), 1))


def frame(*images: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"image": [b64_png(i) for i in images]})


def same_away_from_the_edge(rgb: np.ndarray, image: np.ndarray, alpha8: np.ndarray) -> bool:
    """A cut-out's colours are the photo's except at the soft edge, where the subject's own are estimated."""
    away = ~edge_band(alpha8 / 255, 3)
    return bool((rgb[away] == image[away]).all())


# --- a served folder, in process -------------------------------------------------------------------

def remover(served_dir: Path, **overrides) -> BackgroundRemover:
    """The pyfunc as MLflow loads it: its artifact `model` and its model_config."""
    config = ServingConfig.read(served_dir)
    model = BackgroundRemover()
    model.load_context(SimpleNamespace(artifacts={"model": str(served_dir / config.model_file)},
                                       model_config={**config.to_dict(), **overrides}))
    return model


def test_a_served_folder_opens_as_its_config_says(onnx_served):
    served = load(str(onnx_served))
    assert served.config == ServingConfig.read(onnx_served) and served.config.runtime == "onnxruntime"
    assert served.network.size == 64 and served.max_pixels == PARAMS["serve"]["max_pixels"]
    assert served.max_request_mb == PARAMS["serve"]["max_request_mb"]
    image = disc_image(50, 70, seed=2)[0]
    prob = served(image)
    assert prob.shape == (50, 70) and prob.dtype == np.float32 and 0 <= prob.min() < 0.5 < prob.max() <= 1
    assert np.array_equal(load(str(onnx_served / "model.onnx"))(image), prob)  # the served file itself: its folder


def test_a_served_model_is_refined_as_its_config_says_unless_asked_otherwise(onnx_served, tmp_path):
    refine = Refine(False, True, 3.0)
    served = Served.from_folder(served_folder(tmp_path / "refined", onnx_served / "model.onnx",
                                              runtime="onnxruntime", size=64, refine=refine))
    image = disc_image(40, 40, seed=1)[0]
    plain = served.network(image)
    assert np.array_equal(served(image), combine(plain, None, refine))
    assert not np.array_equal(served(image), plain)
    assert np.array_equal(served.predictor(Refine.none())(image), plain)


def test_the_caps_can_be_overridden_where_the_model_is_served(onnx_served, monkeypatch):
    monkeypatch.setenv("BGREMOVAL_MAX_PIXELS", "1234")
    monkeypatch.setenv("BGREMOVAL_MAX_REQUEST_MB", "0.5")
    served = Served.from_folder(onnx_served)
    assert (served.max_pixels, served.max_request_mb) == (1234, 0.5)
    for bad in ("0", "lots"):
        monkeypatch.setenv("BGREMOVAL_MAX_REQUEST_MB", bad)
        with pytest.raises(ValueError, match=f"BGREMOVAL_MAX_REQUEST_MB='{bad}' is not a positive number"):
            Served.from_folder(onnx_served)


def test_load_refuses_what_is_not_a_served_model(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"a bare model file")
    for where in (tmp_path, tmp_path / "model.keras", tmp_path / "missing"):
        with pytest.raises(FileNotFoundError, match="not a served model"):
            load(str(where))


def test_the_keras_runtime_serves_one_model_at_several_sizes(tmp_path):
    """A Keras model traced at one size still serves at another (each segmenter traces its own size)."""
    import keras

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(1, 3, padding="same", kernel_initializer="ones")(inputs)
    x = keras.layers.UpSampling2D(interpolation="bilinear")(keras.layers.MaxPooling2D()(x))
    model = keras.Model(inputs, keras.layers.Activation("sigmoid")(x - 4.0))
    model.save(tmp_path / "model.keras")
    image = disc_image(30, 44, seed=3)[0]
    small = Served.from_folder(served_folder(tmp_path / "at32", tmp_path / "model.keras", size=32))
    large = KerasSegmenter(small.network.model, 48)
    for segmenter, size in ((small.network, 32), (large, 48), (small.network, 32)):
        expected = resize_back(np.asarray(model(squash(image, size)[None]))[0, ..., 0], 44, 30)
        assert np.allclose(segmenter(image), expected, atol=1e-5)
    assert small(image).shape == (30, 44)


def test_the_pyfunc_cuts_out_with_the_served_defaults(onnx_served):
    model = remover(onnx_served)
    image = disc_image(40, 56, seed=3)[0]
    out = model.predict(None, frame(image, disc_image(20, 20)[0]))
    assert out[["width", "height"]].values.tolist() == [[56, 40], [20, 20]]
    cut = decode_png(out["png"][0])
    assert cut.shape == (40, 56, 4)  # serve.defaults.output: cutout
    prob = model.served(image)
    assert np.array_equal(cut, np.asarray(render(image, prob, options_from(None, DEFAULTS, 10**6))))
    assert np.array_equal(cut[..., 3], np.round(prob * 255).astype(np.uint8))
    assert same_away_from_the_edge(cut[..., :3], image, cut[..., 3])
    assert out["foreground"][0] == pytest.approx(float((prob >= 0.5).mean()))
    mask = decode_png(model.predict(None, frame(image), params={"output": "mask", "threshold": 0.5})["png"][0])
    assert mask.shape == (40, 56) and np.array_equal(mask, np.where(prob >= 0.5, 255, 0))


def test_the_pyfunc_answers_bad_input_with_400_and_too_much_with_413(onnx_served):
    from mlflow.exceptions import MlflowException

    model = remover(onnx_served, max_request_mb=0.001, max_pixels=10_000)
    cases = [(pd.DataFrame({"image": ["%%%"]}), None, "row 0 (image): is not valid base64"),
             (frame(disc_image(8, 8)[0]), {"output": "sticker"}, "output 'sticker' is not one of"),
             (frame(disc_image(8, 8)[0]), {"size": 64}, "unknown parameter(s) size"),
             (frame(np.zeros((120, 100, 3), np.uint8)), None, "100x120 = 12000 pixels is over the limit of 10000")]
    for request, params, needle in cases:
        with pytest.raises(MlflowException) as err:
            model.predict(None, request, params)
        assert err.value.get_http_status_code() == 400 and needle in err.value.message
    noise = np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8)  # ~3 KB of PNG
    with pytest.raises(MlflowException) as err:
        model.predict(None, frame(noise))
    assert err.value.get_http_status_code() == 413 and "over the limit of 0.001 MB" in err.value.message


def test_with_errors_row_a_bad_row_is_named_in_its_error_and_the_others_are_served(onnx_served):
    """What a batch job asks for (spark_udf hands the model many photos at once): one bad photo costs its row."""
    from mlflow.exceptions import MlflowException

    model = remover(onnx_served, max_request_mb=0.01, max_pixels=10_000)
    good = disc_image(40, 56, seed=3)[0]
    noise = np.random.default_rng(0).integers(0, 256, (60, 60, 3), dtype=np.uint8)  # ~14 KB of base64 PNG
    request = pd.concat([frame(good), pd.DataFrame({"image": ["%%%"]}), frame(np.zeros((120, 100, 3), np.uint8)),
                         frame(noise), frame(good)], ignore_index=True)
    out = model.predict(None, request, params={"output": "mask", "errors": "row"})
    assert list(out.columns) == ["png", "width", "height", "foreground", "error"]
    assert (out["error"] == "").tolist() == [True, False, False, False, True]
    assert "row 1 (image): is not valid base64" in out["error"][1]
    assert "12000 pixels is over the limit of 10000" in out["error"][2]
    assert "over the limit of 0.01 MB" in out["error"][3]  # the size cap holds for each image on its own
    assert (out["png"][1:4] == "").all() and out["width"][1:4].tolist() == [0, 0, 0]
    expected = model.predict(None, frame(good), params={"output": "mask"})  # the same picture either way
    assert out["png"][0] == out["png"][4] == expected["png"][0] and "error" not in expected.columns
    for params, needle in (({"errors": "skip"}, "errors: 'skip' is not one of fail, row"),
                           ({"errors": "row", "output": "sticker"}, "output 'sticker' is not one of")):
        with pytest.raises(MlflowException) as err:  # a bad parameter still fails the request: it is no row's fault
            model.predict(None, frame(good), params)
        assert err.value.get_http_status_code() == 400 and needle in err.value.message


def test_the_signature_takes_the_served_defaults_as_its_params():
    defaults = {**DEFAULTS, "output": "mask", "threshold": 0.5, "bg_color": "white", "matting": True, "sharpen": 2.0}
    sig = signature(defaults)
    assert [c.name for c in sig.inputs.inputs] == ["image"]
    assert [(c.name, c.required) for c in sig.outputs.inputs] == [
        ("png", True), ("width", True), ("height", True), ("foreground", True), ("error", False)]
    assert {p.name: p.default for p in sig.params.params} == {**defaults, "errors": "fail"}
    assert {p.name: p.to_dict()["type"] for p in sig.params.params} == {**KINDS, "errors": "string"}
    assert KINDS == {
        "output": "string", "threshold": "double", "background": "string", "bg_color": "string", "bg_image": "string",
        "bg_blur": "double", "estimate_foreground": "boolean", "matting": "boolean", "main_object": "boolean",
        "sharpen": "double"}
    assert {p.name: p.default for p in signature(DEFAULTS).params.params} == {**DEFAULTS, "errors": "fail"}
    with pytest.raises(ValueError, match="missing background"):
        signature({"output": "mask", "threshold": 0.5, "bg_color": "white"})


def test_the_scoring_servers_filled_in_defaults_parse_as_a_request_naming_nothing():
    """`mlflow models serve` fills every param a request leaves out with the signature's default (and checks
    each one's type): what reaches the model must mean what no params at all would."""
    from mlflow.models.utils import _enforce_params_schema

    schema = signature(DEFAULTS).params
    filled = _enforce_params_schema({}, schema)
    assert filled.pop("errors") == "fail"  # a bad row fails the request unless it asks for errors=row
    assert filled == DEFAULTS and options_from(filled, DEFAULTS, 10**6) == options_from(None, DEFAULTS, 10**6)
    asked = _enforce_params_schema({"main_object": False, "sharpen": -1.0, "matting": True}, schema)
    assert asked.pop("errors") == "fail"
    assert options_from(asked, DEFAULTS, 10**6).refine(Refine(True, True, 2.0)) == Refine(True, False, 2.0)


def test_each_runtime_requires_only_what_it_imports():
    names = lambda reqs: {r.split("==")[0] for r in reqs}  # noqa: E731
    onnx = names(requirements("onnxruntime"))
    assert onnx == {"mlflow", "numpy", "pandas", "pillow", "scipy", "pymatting", "onnxruntime"}
    assert {"tensorflow", "keras"} <= names(requirements("keras")) and "onnxruntime" not in names(requirements("keras"))
    assert all("==" in r for r in requirements("onnxruntime"))  # pinned to the versions it was logged with
    assert set(SHIPPED) == {"__init__.py", "images.py", "quiet.py", "network_io.py", "keras_layers.py", "serving"}


# --- logged and registered ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def registered(tmp_path_factory, toy_served, onnx_served):
    """The toy U-Net (Keras) logged as register logs it, registered and aliased champion; stock U²-NetP
    (onnxruntime) logged and registered beside it."""
    import mlflow

    from bgremoval.serving.pyfunc import log_model

    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with tracking_store(uri):
        mlflow.create_experiment("toy", artifact_location=(tmp / "artifacts").as_uri())
        mlflow.set_experiment("toy")
        example = png_bytes(Image.fromarray(disc_image(24, 24)[0]))
        with mlflow.start_run() as run:
            config = ServingConfig.read(toy_served)
            info = log_model(toy_served / config.model_file, config, example, name="model")
        version = mlflow.register_model(info.model_uri, NAME).version
        mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", version)
        with mlflow.start_run():
            onnx_config = ServingConfig.read(onnx_served)
            onnx_info = log_model(onnx_served / onnx_config.model_file, onnx_config, example, name="model")
        mlflow.register_model(onnx_info.model_uri, ONNX_NAME)
        yield {"uri": uri, "run_id": run.info.run_id, "model_uri": info.model_uri, "tmp": tmp}


def download(uri: str, dst: Path | None = None) -> Path:
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(uri, dst_path=None if dst is None else str(dst)))


def shipped_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_the_logged_model_carries_its_code_and_config(registered, toy_served):
    import mlflow

    local = download(f"models:/{NAME}@champion")
    code = local / "code"
    expected = {f"bgremoval/{p.relative_to(PACKAGE).as_posix()}" for item in SHIPPED for p in
                ([PACKAGE / item] if (PACKAGE / item).is_file() else (PACKAGE / item).rglob("*.py"))}
    assert shipped_files(code) == expected  # bgremoval/__init__.py, images.py, quiet.py and serving/, nothing else
    assert (code / "bgremoval" / "serving" / "pyfunc.py").read_text() == (PACKAGE / "serving" / "pyfunc.py").read_text()
    loaded = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    assert loaded.model_config == ServingConfig.read(toy_served).to_dict()
    assert loaded.model_config["size"] == 32 and loaded.model_config["max_request_mb"] == 50
    assert [c.name for c in loaded.metadata.get_input_schema().inputs] == ["image"]
    assert {p.name: p.default for p in loaded.metadata.get_params_schema().params} == {
        **PARAMS["serve"]["defaults"], "errors": "fail"}


@pytest.mark.slow
def test_an_onnxruntime_model_declares_no_tensorflow_and_ships_only_the_serving_code(registered, onnx_served):
    local = download(f"models:/{ONNX_NAME}/1")
    reqs = [line.strip() for line in (local / "requirements.txt").read_text().splitlines() if line.strip()]
    assert {r.split("==")[0] for r in reqs} == {"mlflow", "numpy", "pandas", "pillow", "scipy", "pymatting",
                                                "onnxruntime"}, reqs
    conda = (local / "conda.yaml").read_text()
    assert not any(pkg in conda for pkg in TF_PACKAGES), conda
    code = {p for p in shipped_files(local / "code")}
    top = {"__init__.py", "images.py", "quiet.py", "network_io.py", "keras_layers.py"}
    assert {p.split("/")[1] for p in code} == top | {"serving"}
    assert all(p.startswith("bgremoval/serving/") for p in code - {f"bgremoval/{name}" for name in top})
    assert not [p for p in code if "__pycache__" in p or not p.endswith(".py")]
    assert (local / "artifacts" / "model.onnx").read_bytes() == (onnx_served / "model.onnx").read_bytes()


LOGGED_PROBE = """
import sys
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"image": [sys.argv[2]]}), params={"output": "mask"})
import bgremoval
print("CODE", bgremoval.__file__)
print("SIZE", out["width"][0], out["height"][0])
print("TF", sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""


@pytest.mark.slow
def test_a_logged_onnxruntime_model_serves_from_its_own_code_without_tensorflow(registered, tmp_path):
    local = download(f"models:/{ONNX_NAME}/1", tmp_path / "model")
    run = subprocess.run([sys.executable, "-c", LOGGED_PROBE, str(local), b64_png(disc_image(30, 50)[0])],
                         cwd=tmp_path, env=project_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"CODE {local / 'code' / 'bgremoval' / '__init__.py'}" in run.stdout, run.stdout  # not the checkout's
    assert "SIZE 50 30" in run.stdout and "TF []" in run.stdout, run.stdout


REGISTRY_PROBE = """
import sys
from bgremoval.serving.load import load
served = load(sys.argv[1])
print("RUNTIME", served.config.runtime, served.config.size)
print("IMPORTED", sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "pymatting"}))
"""


@pytest.mark.slow
def test_the_cli_opens_a_registered_onnxruntime_model_without_tensorflow_or_pymatting(registered, tmp_path):
    """What `bgremoval predict models:/...` loads: the served file and its logged config; the cut-out's
    pymatting waits until a cut-out needs it."""
    run = subprocess.run([sys.executable, "-c", REGISTRY_PROBE, f"models:/{ONNX_NAME}/1"], cwd=tmp_path,
                         env=project_env(MLFLOW_TRACKING_URI=registered["uri"]), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "RUNTIME onnxruntime 64" in run.stdout and "IMPORTED []" in run.stdout, run.stdout


def test_load_refuses_an_mlflow_model_that_is_not_ours(tmp_path):
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    mlflow.pyfunc.save_model(tmp_path / "echo", python_model=Echo(), pip_requirements=["mlflow"])
    with pytest.raises(ValueError, match="echo: is an MLflow model but not a bgremoval one"):
        load(str(tmp_path / "echo"))


@pytest.mark.slow
def test_pyfunc_cuts_out_the_toy_foreground_at_the_input_size(registered):
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    image, truth = disc_image(60, 90, seed=3)
    out = model.predict(pd.DataFrame({"image": [b64_png(image)]}), params={"output": "mask"})
    mask = decode_png(out["png"][0])
    assert mask.shape == (60, 90)
    assert iou(mask, truth) > 0.7  # the toy model learned the discs
    rgba = decode_png(model.predict(pd.DataFrame({"image": [b64_png(image)]}))["png"][0])  # the default: cutout
    assert rgba.shape == (60, 90, 4) and (rgba[..., 3] == mask).all()
    assert same_away_from_the_edge(rgba[..., :3], image, mask)


@pytest.mark.slow
def test_pyfunc_turns_bad_input_into_invalid_parameter_errors(registered):
    import mlflow
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    with pytest.raises(MlflowException) as err:
        model.predict(pd.DataFrame({"image": ["%%%"]}))
    assert err.value.get_http_status_code() == 400 and "row 0 (image): is not valid base64" in err.value.message


# --- over HTTP ------------------------------------------------------------------------------------------

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
    env = project_env(MLFLOW_TRACKING_URI=registered["uri"], BGREMOVAL_MAX_PIXELS="200000",
                      BGREMOVAL_MAX_REQUEST_MB=str(MAX_REQUEST_MB))  # its PATH: this venv's uvicorn
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
    comp = decode_png(row["png"])
    assert comp.shape == (70, 50, 3)
    background = truth == 0
    assert (comp[background] == [0, 255, 0]).all(axis=1).mean() > 0.9  # background replaced by green
    status, body = _good(server, image, output="mask")
    mask = decode_png(body["predictions"][0]["png"])
    assert status == 200 and mask.shape == (70, 50) and iou(mask, truth) > 0.7

    records = {"dataframe_records": [{"image": b64_png(image)}, {"image": b64_png(disc_image(40, 40)[0])}]}
    status, body = _post(server, records)  # no params: the served defaults, a soft cut-out
    assert status == 200 and len(body["predictions"]) == 2
    cut = decode_png(body["predictions"][0]["png"])
    assert cut.shape == (70, 50, 4) and (cut[..., 3] == mask).all() and same_away_from_the_edge(cut[..., :3], image, mask)
    assert decode_png(body["predictions"][1]["png"]).shape == (40, 40, 4)


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
        ({"dataframe_split": {"columns": ["image"], "data": [[b64_png(disc_image(8, 8)[0])]]},
          "params": {"threshold": 3}}, "threshold 3.0 is outside [0, 1]"),
        ({"dataframe_split": {"columns": ["image"], "data": [[b64_png(disc_image(8, 8)[0])]]},
          "params": {"bg_color": "plaid"}}, "bg_color 'plaid' is not a colour"),
    ]
    for body, needle in cases:
        status, answer = _post(server, body)
        assert 400 <= status < 500, (needle, status, answer)
        assert needle in answer.get("message", ""), (needle, answer)
    status, body = _good(server, disc_image(30, 30)[0])
    assert status == 200 and body["predictions"][0]["width"] == 30
    # errors=row (what a batch job asks for): the same bad rows are named in their own rows, the good one served
    rows = [["not base64 !!"], [b64_png(disc_image(30, 30)[0])], [bomb]]
    status, body = _post(server, {"dataframe_split": {"columns": ["image"], "data": rows},
                                  "params": {"errors": "row", "output": "mask"}})
    assert status == 200, body
    answered = body["predictions"]
    assert [bool(r["error"]) for r in answered] == [True, False, True] and answered[1]["width"] == 30
    assert "row 0 (image): is not valid base64" in answered[0]["error"] and answered[0]["png"] == ""
    assert "over the limit of 200000" in answered[2]["error"]
    assert decode_png(answered[1]["png"]).shape == (30, 30)


@pytest.mark.slow
def test_server_composites_onto_a_background_image_or_a_blur_and_takes_overrides(server):
    from bgremoval.serving.render import blurred, fit_cover

    image, truth = disc_image(60, 80, seed=6)
    status, body = _good(server, image, output="mask", threshold=0.5)
    assert status == 200, body
    hard = decode_png(body["predictions"][0]["png"]) == 255
    backdrop = np.random.default_rng(2).integers(0, 256, (50, 100, 3), dtype=np.uint8)  # wider: its sides cropped
    status, body = _good(server, image, output="composite", threshold=0.5, background="image",
                         bg_image=b64_png(backdrop))
    assert status == 200, body
    comp = decode_png(body["predictions"][0]["png"])
    assert comp.shape == (60, 80, 3) and (comp[hard] == image[hard]).all()
    assert (comp[~hard] == fit_cover(backdrop, 80, 60)[~hard]).all()
    status, body = _good(server, image, output="composite", threshold=0.5, background="blur", bg_blur=5.0)
    assert status == 200, body
    blur = decode_png(body["predictions"][0]["png"])
    assert (blur[~hard] == blurred(image, hard.astype(np.float32), 5.0)[~hard]).all() and (blur[hard] == image[hard]).all()
    status, body = _good(server, image, output="mask", main_object=False, sharpen=4.0, matting=True,
                         estimate_foreground=False)  # the overrides, every type as JSON carries it
    assert status == 200 and iou(decode_png(body["predictions"][0]["png"]), truth) > 0.7, body


@pytest.mark.slow
def test_server_refuses_bad_background_input_by_name_and_keeps_serving(server):
    photo = [[b64_png(disc_image(16, 16)[0])]]
    bomb = b64_png(np.zeros((500, 500, 3), np.uint8))  # 250,000 px > the 200,000 cap
    noise = b64_png(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8))  # ~360 KB > 0.2 MB
    composite = {"output": "composite", "background": "image"}
    cases = [
        ({**composite, "bg_image": "not base64 !!"}, 400, "bg_image: is not valid base64"),
        ({**composite, "bg_image": base64.b64encode(b"hello, world").decode()}, 400, "bg_image: cannot be decoded"),
        ({**composite, "bg_image": bomb}, 400, "bg_image: 500x500 = 250000 pixels is over the limit of 200000"),
        ({**composite, "bg_image": noise}, 413, "over the limit of 0.2 MB"),
        (composite, 400, "background 'image' needs bg_image"),
        ({"output": "composite", "background": "plaid"}, 400, "background 'plaid' is not one of color, blur, image"),
        ({"output": "composite", "background": "blur", "bg_blur": 0}, 400, "bg_blur 0 is outside (0, 25]"),
        ({"bg_image": b64_png(disc_image(8, 8)[0])}, 400, "bg_image is used only with output 'composite'"),
        ({"main_object": "sometimes"}, 400, "main_object"),  # MLflow checks each param's type first
        ({"sharpen": "lots"}, 400, "sharpen"),
        ({"estimate_foreground": "maybe"}, 400, "estimate_foreground"),
    ]
    for params, expected, needle in cases:
        status, answer = _post(server, {"dataframe_split": {"columns": ["image"], "data": photo}, "params": params})
        assert status == expected and needle in answer.get("message", ""), (needle, status, answer)
        status, body = _good(server, disc_image(30, 30)[0])
        assert status == 200 and body["predictions"][0]["width"] == 30


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


@pytest.mark.slow
def test_the_documented_python_client_works_against_the_server(server, tmp_path):
    readme = (ROOT / "docs" / "serving.md").read_text()
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
@pytest.mark.parametrize("doc,out", [("README.md", "cutout.png"), ("docs/serving.md", "photo_cutout.png")])
def test_the_curl_examples_work_against_the_server(server, tmp_path, doc, out):
    text = (ROOT / doc).read_text()
    command = text.split("curl -s http://127.0.0.1:5001/invocations", 1)[1].split("```", 1)[0]
    command = f"curl -s http://127.0.0.1:{server}/invocations" + command.replace("python -c", f"{sys.executable} -c")
    Image.fromarray(disc_image(44, 66)[0]).save(tmp_path / "photo.jpg", quality=95)
    run = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    cut = Image.open(tmp_path / out)
    assert cut.mode == "RGBA" and cut.size == (66, 44)


# --- bgremoval predict on a registered model ------------------------------------------------------------

@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("which", ["champion", "run", "folder", "served"])
def test_cli_takes_a_registered_a_run_an_mlflow_folder_or_a_served_folder(registered, toy_served, tmp_path, which):
    image, truth = disc_image(33, 47, seed=4)
    Image.fromarray(image).save(tmp_path / "one.png")
    model = {"champion": f"models:/{NAME}@champion", "run": f"runs:/{registered['run_id']}/model",
             "folder": str(download(f"models:/{NAME}@champion", tmp_path / "m")), "served": str(toy_served)}[which]
    code = cli(["predict", "--model", model, "--tracking-uri", registered["uri"], "--output", "composite",
                "--bg-color", "0,0,255", "--threshold", "0.5", str(tmp_path / "one.png"), str(tmp_path / "cut.png")])
    assert code == 0
    comp = np.asarray(Image.open(tmp_path / "cut.png"))
    assert comp.shape == (33, 47, 3) and (comp[0, 0] == [0, 0, 255]).all()  # a corner is background
    assert (comp[truth == 255] == image[truth == 255]).all(axis=1).mean() > 0.8  # the disc is kept


@pytest.mark.slow
def test_cli_without_a_model_serves_the_champion_of_the_params_registry(registered, tmp_path, monkeypatch):
    import yaml

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"mlflow": {"tracking_uri": registered["uri"]}, "register": {"model_name": NAME}}))
    Image.fromarray(disc_image(30, 40)[0]).save(tmp_path / "in.png")
    assert cli(["predict", "--params", str(params), "--quiet", str(tmp_path / "in.png"), str(tmp_path / "out.png")]) == 0
    assert Image.open(tmp_path / "out.png").mode == "RGBA"  # the champion's serve.defaults: a cut-out
