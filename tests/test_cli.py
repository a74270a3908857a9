"""`bgremoval predict`: the served model's defaults unless a flag says otherwise, flag values checked and
named, the champion of params.yaml's registry by default, and no TensorFlow or MLflow for a served folder."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bgremoval.cli import _default_model, _outputs_for, build_parser
from bgremoval.cli import main as cli
from bgremoval.serving.options import KINDS, options_from
from bgremoval.serving.refine import Refine
from bgremoval.serving.render import edge_band, render
from bgremoval.serving.served import Served
from tests.helpers import PARAMS, ROOT, disc_image, project_env, served_folder, tracking_store

DEFAULTS = dict(PARAMS["serve"]["defaults"])


@pytest.fixture
def photo(tmp_path) -> tuple[Path, np.ndarray]:
    image, _ = disc_image(60, 84, seed=7)
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)
    return path, image


def predict(model: Path, src: Path, dst: Path, *flags: str) -> np.ndarray:
    """Run `bgremoval predict` on one image; what it wrote."""
    assert cli(["predict", "--model", str(model), "--quiet", *flags, str(src), str(dst)]) == 0
    return np.asarray(Image.open(dst if dst.suffix == ".png" else dst / f"{src.stem}.png"))


def test_predict_writes_the_served_defaults_cutout(onnx_served, photo, tmp_path, capsys):
    path, image = photo
    out = tmp_path / "out"
    cut = predict(onnx_served, path, out)
    assert "wrote 1 cutout PNG to" in capsys.readouterr().out
    written = Image.open(out / "photo.png")
    assert written.mode == "RGBA" and written.size == (84, 60)  # serve.defaults.output: cutout, at the input's size
    served = Served.from_folder(onnx_served)
    expected = np.asarray(render(image, served(image), options_from(None, served.config.defaults, 10**6)))
    assert (cut == expected).all()  # soft edges (threshold null), the served model's own mask
    assert len(np.unique(cut[..., 3])) > 2
    away = ~edge_band(cut[..., 3] / 255, 3)  # the subject's own colours at the soft edge, the photo's elsewhere
    assert (cut[..., :3][away] == image[away]).all() and away.mean() > 0.5


def test_flags_override_the_served_defaults(onnx_served, photo, tmp_path):
    path, image = photo
    soft = predict(onnx_served, path, tmp_path / "cut.png")[..., 3]
    mask = predict(onnx_served, path, tmp_path / "mask.png", "--output", "mask")
    assert mask.shape == (60, 84) and (mask == soft).all()
    hard = predict(onnx_served, path, tmp_path / "hard.png", "--output", "mask", "--threshold", "0.5")
    assert set(np.unique(hard)) == {0, 255}  # the disc is found, and the rest is not
    assert (hard == np.where(soft >= 128, 255, 0)).all()
    comp = predict(onnx_served, path, tmp_path / "comp.png", "--output", "composite", "--bg-color", "0,0,255",
                   "--threshold", "0.5")
    assert comp.shape == (60, 84, 3)
    assert (comp == np.where(hard[..., None] == 255, image, [0, 0, 255])).all()


def test_a_served_folders_own_defaults_are_the_cli_defaults(onnx_served, photo, tmp_path):
    path, image = photo
    model = served_folder(tmp_path / "served", onnx_served / "model.onnx", runtime="onnxruntime", size=64,
                          defaults={**DEFAULTS, "output": "composite", "threshold": 0.5, "bg_color": "#00ff00"})
    comp = predict(model, path, tmp_path / "comp.png")
    hard = predict(model, path, tmp_path / "hard.png", "--output", "mask")
    assert set(np.unique(hard)) == {0, 255}  # the model's threshold 0.5
    assert (comp == np.where(hard[..., None] == 255, image, [0, 255, 0])).all()
    soft = predict(model, path, tmp_path / "soft.png", "--output", "mask", "--threshold", "-1")
    assert len(np.unique(soft)) > 2  # a negative threshold asks for soft edges again


def test_the_predict_flags_are_the_request_options_by_name():
    predict = build_parser()._subparsers._group_actions[0].choices["predict"]  # noqa: SLF001
    flags = {a.dest: a.option_strings for a in predict._actions}  # noqa: SLF001
    for name in KINDS:
        assert f"--{name.replace('_', '-')}" in flags[name], name


def test_new_backgrounds_from_flags(onnx_served, photo, tmp_path):
    path, image = photo
    hard = predict(onnx_served, path, tmp_path / "hard.png", "--output", "mask", "--threshold", "0.5") == 255
    backdrop = np.zeros((30, 30, 3), np.uint8)
    backdrop[..., 2] = 255
    Image.fromarray(backdrop).save(tmp_path / "backdrop.png")
    comp = predict(onnx_served, path, tmp_path / "comp.png", "--output", "composite", "--threshold", "0.5",
                   "--background", "image", "--bg-image", str(tmp_path / "backdrop.png"))
    assert (comp[~hard] == [0, 0, 255]).all() and (comp[hard] == image[hard]).all()
    blur = predict(onnx_served, path, tmp_path / "blur.png", "--output", "composite", "--background", "blur",
                   "--bg-blur", "10", "--threshold", "0.5")
    assert blur.shape == image.shape and (blur[hard] == image[hard]).all()
    roughness = lambda x: np.abs(np.diff(x.astype(int), axis=0))[~hard[1:]].mean()  # noqa: E731
    assert roughness(blur) < roughness(image)


def test_flags_override_the_models_refinement_and_edges(onnx_served, photo, tmp_path):
    path, image = photo
    served = Served.from_folder(served_folder(tmp_path / "served", onnx_served / "model.onnx", runtime="onnxruntime",
                                              size=64, refine=Refine(False, True, 2.0)))
    folder = tmp_path / "served"
    own = predict(folder, path, tmp_path / "own.png", "--output", "mask")
    assert (own == np.asarray(render(image, served(image), options_from({"output": "mask"}, DEFAULTS, 10**6)))).all()
    plain = predict(folder, path, tmp_path / "plain.png", "--output", "mask", "--no-main-object", "--sharpen", "1")
    expected = served.predictor(Refine.none())(image)
    assert (plain == np.asarray(render(image, expected, options_from({"output": "mask"}, DEFAULTS, 10**6)))).all()
    assert (predict(folder, path, tmp_path / "again.png", "--output", "mask", "--sharpen", "-1") == own).all()
    cut = predict(folder, path, tmp_path / "cut.png", "--no-estimate-foreground")
    assert (cut[..., :3] == image).all()
    matted = predict(folder, path, tmp_path / "matted.png", "--output", "mask", "--matting")
    assert matted.shape == own.shape and not (matted == own).all()


@pytest.mark.parametrize("flags,needle", [
    (["--bg-blur", "0", "--background", "blur"], "bgremoval predict: bg_blur 0 is outside (0, 25]"),
    (["--bg-image", "missing.png", "--background", "image", "--output", "composite"],
     "bgremoval predict: --bg-image missing.png: cannot be read"),
    (["--bg-image", "PHOTO"], "bg_image is used only with output 'composite' and background 'image'"),
    (["--background", "image", "--output", "composite"], "background 'image' needs bg_image"),
    (["--threshold", "2"], "bgremoval predict: threshold 2.0 is outside [0, 1]"),
    (["--threshold", "1.5", "--output", "mask"], "threshold 1.5 is outside [0, 1]"),
    (["--bg-color", "nope"], "bgremoval predict: bg_color 'nope' is not a colour"),
    (["--bg-color", "0,0,256", "--output", "composite"], "bg_color '0,0,256' is not a colour"),
])
def test_bad_flag_values_are_refused_by_name_and_nothing_is_written(onnx_served, photo, tmp_path, flags, needle):
    path, _ = photo
    flags = [str(path) if f == "PHOTO" else f for f in flags]
    with pytest.raises(SystemExit) as err:
        cli(["predict", "--model", str(onnx_served), "--quiet", *flags, str(path), str(tmp_path / "out")])
    assert needle in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags,needle", [(["--threshold", "high"], "argument --threshold: invalid float value: 'high'"),
                                          (["--output", "sticker"], "argument --output: invalid choice: 'sticker'"),
                                          (["--background", "plaid"], "argument --background: invalid choice: 'plaid'"),
                                          (["--sharpen", "much"], "argument --sharpen: invalid float value: 'much'")])
def test_flags_the_parser_refuses_are_named(photo, tmp_path, capsys, flags, needle):
    path, _ = photo
    with pytest.raises(SystemExit) as err:
        cli(["predict", *flags, str(path), str(tmp_path / "out")])
    assert err.value.code == 2 and needle in capsys.readouterr().err


def _params(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'registry.db'}"},
                                    "register": {"model_name": name}}))
    return path


def test_the_default_model_is_the_champion_of_params_registry(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = _params(tmp_path, "shop-cutter")
    assert _default_model(params) == ("models:/shop-cutter@champion", f"sqlite:///{tmp_path / 'registry.db'}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert _default_model(params) == ("models:/shop-cutter@champion", "http://127.0.0.1:5000")  # the environment wins
    project_name = yaml.safe_load((ROOT / "params.yaml").read_text())["register"]["model_name"]
    assert _default_model(ROOT / "params.yaml")[0] == f"models:/{project_name}@champion"


def test_predict_without_a_model_loads_that_champion_from_that_registry(photo, tmp_path, monkeypatch):
    import bgremoval.serving.load

    asked = []

    def load(uri, tracking_uri=None):
        asked.append((uri, tracking_uri))
        raise FileNotFoundError("no such model here")

    monkeypatch.setattr(bgremoval.serving.load, "load", load)
    with tracking_store(None), pytest.raises(SystemExit) as err:  # predict points MLflow at params' store
        cli(["predict", "--params", str(_params(tmp_path, "shop-cutter")), str(photo[0]), str(tmp_path / "out")])
    assert asked == [("models:/shop-cutter@champion", f"sqlite:///{tmp_path / 'registry.db'}")]
    assert "cannot load model 'models:/shop-cutter@champion': no such model here" in str(err.value)


def test_without_model_or_params_predict_says_what_is_missing(photo, tmp_path):
    path, _ = photo
    with pytest.raises(SystemExit) as err:
        cli(["predict", "--params", str(tmp_path / "missing.yaml"), str(path), str(tmp_path / "out")])
    assert "missing.yaml not found; run from the project root or pass --params" in str(err.value)


@pytest.mark.parametrize("kind", ["missing", "bare-keras", "not-a-model"])
def test_predict_says_what_to_do_when_the_model_is_not_a_served_one(photo, tmp_path, kind):
    path, _ = photo
    model = {"missing": tmp_path / "nope", "bare-keras": tmp_path / "model.keras", "not-a-model": tmp_path}[kind]
    if kind == "bare-keras":
        model.write_bytes(b"a keras file without its serving.json")
    with pytest.raises(SystemExit) as err:
        cli(["predict", "--model", str(model), str(path), str(tmp_path / "out")])
    message = str(err.value)
    assert f"cannot load model {str(model)!r}" in message and "not a served model" in message
    assert "models/served" in message and "models:/bgremoval@champion" in message


def test_outputs_are_named_after_the_inputs_and_never_collide(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for name in ("b.jpg", "a.png", "a.jpg", "notes.txt"):
        (src / name).write_bytes(b"x")
    assert [(i.name, o.relative_to(tmp_path).as_posix()) for i, o in _outputs_for(src, tmp_path / "out")] == [
        ("a.jpg", "out/a.png"), ("a.png", "out/a.png.png"), ("b.jpg", "out/b.png")]
    assert _outputs_for(src / "a.jpg", tmp_path / "one.png") == [(src / "a.jpg", tmp_path / "one.png")]
    assert _outputs_for(src / "a.jpg", tmp_path / "dir") == [(src / "a.jpg", tmp_path / "dir" / "a.png")]
    with pytest.raises(SystemExit, match="does not exist"):
        _outputs_for(tmp_path / "nothing", tmp_path / "out")


def test_a_folder_without_images_is_refused(onnx_served, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(SystemExit, match="no images"):
        cli(["predict", "--model", str(onnx_served), str(tmp_path / "empty"), str(tmp_path / "out")])


IMPORT_PROBE = """
import sys
from bgremoval.cli import main
code = main(sys.argv[1:])
print("IMPORTED", sorted(m for m in ("tensorflow", "keras", "mlflow", "onnxruntime", "pandas", "scipy") if m in sys.modules))
sys.exit(code)
"""


@pytest.mark.slow
def test_predict_from_a_served_onnx_folder_imports_only_what_its_output_needs(onnx_served, photo, tmp_path):
    path, image = photo
    run = subprocess.run([sys.executable, "-c", IMPORT_PROBE, "predict", "--model", str(onnx_served), "--quiet",
                          str(path), str(tmp_path / "out")], cwd=tmp_path, env=project_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "IMPORTED ['onnxruntime', 'scipy']" in run.stdout, run.stdout  # the cut-out's edges need scipy, no more
    cut = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    away = ~edge_band(cut[..., 3] / 255, 3)
    assert cut.shape == (60, 84, 4) and (cut[..., :3][away] == image[away]).all()
    # A mask needs onnxruntime alone: no scipy, and no pandas (the scoring server's tables).
    mask = subprocess.run([sys.executable, "-c", IMPORT_PROBE, "predict", "--model", str(onnx_served), "--quiet",
                           "--output", "mask", str(path), str(tmp_path / "mask")], cwd=tmp_path, env=project_env(),
                          capture_output=True, text=True, timeout=300)
    assert mask.returncode == 0, mask.stderr
    assert "IMPORTED ['onnxruntime']" in mask.stdout, mask.stdout
    assert np.asarray(Image.open(tmp_path / "mask" / "photo.png")).shape == (60, 84)


def png_of(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_predict_reads_stdin_and_writes_stdout(onnx_served, photo, tmp_path, monkeypatch, capsysbinary):
    path, image = photo
    expected = predict(onnx_served, path, tmp_path / "file.png")
    capsysbinary.readouterr()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(png_of(image))))
    assert cli(["predict", "--model", str(onnx_served), "-", "-"]) == 0
    out, err = capsysbinary.readouterr()
    assert (np.asarray(Image.open(io.BytesIO(out))) == expected).all()  # the PNG alone on stdout
    assert err.decode().strip() == "wrote 1 cutout PNG to stdout"  # the rest on stderr, and no progress bar
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(png_of(image))))
    assert cli(["predict", "--model", str(onnx_served), "-", str(tmp_path / "from_stdin.png")]) == 0
    assert (np.asarray(Image.open(tmp_path / "from_stdin.png")) == expected).all()
    capsysbinary.readouterr()
    assert cli(["predict", "--model", str(onnx_served), str(path), "-"]) == 0
    assert (np.asarray(Image.open(io.BytesIO(capsysbinary.readouterr().out))) == expected).all()


def test_stdin_that_is_not_an_image_is_reported_on_stderr(onnx_served, tmp_path, monkeypatch, capsysbinary):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"not an image")))
    assert cli(["predict", "--model", str(onnx_served), "-", "-"]) == 1
    out, err = capsysbinary.readouterr()
    assert out == b"" and "skipped stdin: cannot be decoded as an image" in err.decode()
    assert _outputs_for(Path("-"), tmp_path / "out") == [(Path("-"), tmp_path / "out" / "stdin.png")]
    with pytest.raises(SystemExit, match="cannot all go to stdout"):
        _outputs_for(tmp_path, Path("-"))


@pytest.mark.slow
def test_predict_in_a_pipe(onnx_served, photo, tmp_path):
    path, _ = photo
    expected = predict(onnx_served, path, tmp_path / "file.png")
    run = subprocess.run([sys.executable, "-m", "bgremoval.cli", "predict", "--model", str(onnx_served), "-", "-"],
                         input=path.read_bytes(), cwd=tmp_path, env=project_env(), capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode()
    assert (np.asarray(Image.open(io.BytesIO(run.stdout))) == expected).all()
    assert run.stderr.decode().strip().endswith("wrote 1 cutout PNG to stdout")


def test_a_folder_is_walked_and_its_tree_kept(tmp_path):
    src = tmp_path / "photos"
    for name in ("top.jpg", "shoes/red/a.png", "shoes/red/a.jpg", "shoes/b.webp", "shoes/notes.txt", "bags/c.JPG"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(b"x")
    assert [(i.relative_to(src).as_posix(), o.relative_to(tmp_path).as_posix())
            for i, o in _outputs_for(src, tmp_path / "out")] == [
        ("bags/c.JPG", "out/bags/c.png"), ("shoes/b.webp", "out/shoes/b.png"), ("shoes/red/a.jpg", "out/shoes/red/a.png"),
        ("shoes/red/a.png", "out/shoes/red/a.png.png"), ("top.jpg", "out/top.png")]
    (src / "cut" / "old").mkdir(parents=True)
    (src / "cut" / "old" / "top.png").write_bytes(b"x")  # an earlier run's output, inside the input: not an input
    assert "cut/old/top.png" not in {i.relative_to(src).as_posix() for i, _ in _outputs_for(src, src / "cut")}


def test_predict_on_a_tree_writes_the_same_tree_and_skips_the_unreadable(onnx_served, tmp_path, capsys):
    src = tmp_path / "photos"
    for i, name in enumerate(("one.png", "day1/two.jpg", "day1/evening/three.png")):
        image, _ = disc_image(40, 56, seed=i)
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(src / name)
    (src / "day1" / "broken.png").write_bytes(b"not a png")
    assert cli(["predict", "--model", str(onnx_served), "--quiet", "--output", "mask", str(src),
                str(tmp_path / "out")]) == 1
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert written == ["day1/evening/three.png", "day1/two.png", "one.png"]
    out, err = capsys.readouterr()
    assert "wrote 3 mask PNGs" in out and "1 unreadable file(s) skipped" in out
    assert f"skipped {src / 'day1' / 'broken.png'}: cannot be decoded as an image" in err

