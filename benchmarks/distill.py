"""Can U²-NetP learn U²-Net's masks? Distillation on a real folder, scored on unseen groups; prints a table.

    python benchmarks/distill.py FOLDER --test-groups a,b --val-groups c,d [--steps 500] [--eval-every 250]

U²-Net's soft masks (rembg's protocol, before rembg makes them 8-bit) are the only targets: U²-NetP starts
from its pretrained weights and trains whole (encoder too) on the train groups (every group not in test or
val; `--train-groups` names them instead, e.g. the test groups themselves as an oracle that checks whether the
network can hold U²-Net's masks at all). Each step is `--batch` crops at `--size`² (a share of whole frames,
the rest random crops; flips and colour jitter on the image), BCE on the fused and all six side outputs. Every
`--eval-every` steps the weights are blended with the pretrained ones (share b of the distilled weights) and
scored on every `--every`-th val and test image (the network at `--size`², no refinement), each at its own
resolution.

U²-Net's masks are computed once per image and cached in --workdir. The teacher is stock U²-Net's u2net.onnx:
`make u2net` puts it in the venv (or give --u2net PATH, or set $BGREMOVAL_U2NET_ONNX; its sha256 is checked).
Prints a table of every evaluation and writes them as JSON (--out).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


def pairs_by_group(data: Path) -> dict[str, tuple[Path, Path, str]]:
    """name -> (image, mask, group) for every complete pair (groups by prepare.group_pattern, as the pipeline
    makes them)."""
    from bgremoval.data.manifest import pair_files
    from bgremoval.data.split import group_of

    pattern = re.compile(yaml.safe_load((ROOT / "params.yaml").read_text())["prepare"]["group_pattern"])
    return {name: (image, mask, group_of(name, pattern))
            for name, image, mask in pair_files(data) if image is not None and mask is not None}


def teacher_masks(images: dict[str, Path], u2net: Path, workdir: Path) -> dict[str, np.ndarray]:
    """U²-Net's min-max normalised 320x320 mask per image (name -> file), cached by model and images."""
    from bgremoval.images import load_rgb
    from bgremoval.scoring.stock import RembgModel

    listing = ",".join(str(p.resolve()) for p in images.values())
    key = hashlib.sha256(f"{u2net.resolve()}:{u2net.stat().st_size}:{listing}".encode()).hexdigest()[:12]
    cache = workdir / f"teacher-{key}.npz"
    if cache.exists():
        with np.load(cache) as z:
            return {n: z[n] for n in images}
    teacher, out = RembgModel(u2net), {}
    for i, (name, path) in enumerate(images.items()):
        out[name] = teacher.normalised(load_rgb(path, 10**9)).astype(np.float16)
        if i % 100 == 0:
            print(f"teacher: {i}/{len(images)}", flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, **out)
    return out


def crop_sampler(images: list[np.ndarray], targets: list[np.ndarray], size: int, whole_share: float, seed: int):
    """batch(n) -> (n, size, size, 3) images in [0, 1] and (n, size, size, 1) targets: a whole frame squashed to
    the square (as served) or a random crop of it; the same box cut from the image and its (lower-resolution)
    target, the same flip; brightness, contrast and saturation jitter on the image only."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    def one() -> tuple[np.ndarray, np.ndarray]:
        i = int(rng.integers(len(images)))
        if rng.random() < whole_share:
            box = [0.0, 0.0, 1.0, 1.0]
        else:
            area = rng.uniform(0.35, 1.0)
            h = float(np.clip(np.sqrt(area) * np.exp(rng.uniform(-0.25, 0.25)), 0.3, 1.0))
            w = float(np.clip(area / h, 0.3, 1.0))
            y0, x0 = rng.uniform(0, 1 - h), rng.uniform(0, 1 - w)
            box = [y0, x0, y0 + h, x0 + w]
        # Normalised boxes: one box cuts the same region from the full-resolution photo and the 320² target.
        boxes = tf.constant([box], tf.float32)
        x = tf.image.crop_and_resize(images[i][None].astype(np.float32) / 255, boxes, [0], (size, size))[0].numpy()
        y = tf.image.crop_and_resize(targets[i][None, ..., None].astype(np.float32), boxes, [0], (size, size))[0].numpy()
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        x = x * rng.uniform(0.8, 1.2) + rng.uniform(-0.08, 0.08)
        grey = x.mean(axis=2, keepdims=True)
        x = grey + (x - grey) * rng.uniform(0.7, 1.3)
        return np.clip(x, 0, 1).astype(np.float32), np.clip(y, 0, 1).astype(np.float32)

    def batch(n: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = [one() for _ in range(n)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a folder with images/ and masks/")
    parser.add_argument("--u2net", type=Path, default=None,
                        help="rembg's u2net.onnx, the teacher (default: the one `make u2net` puts in the venv)")
    parser.add_argument("--test-groups", required=True, help="comma-separated groups scored as test")
    parser.add_argument("--val-groups", required=True, help="comma-separated groups scored as val")
    parser.add_argument("--train-groups", default="", help="train on these groups instead of all the others")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--size", type=int, default=288, help="training and scoring size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--whole-share", type=float, default=0.3, help="share of samples that are whole frames")
    parser.add_argument("--every", type=int, default=2, help="score every n-th val and test image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bgremoval-distill"))
    parser.add_argument("--out", type=Path, default=None, help="JSON of every score (default: WORKDIR/distill.json)")
    args = parser.parse_args()

    from bgremoval.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras
    import tensorflow as tf

    from bgremoval.data.masks import load_mask
    from bgremoval.images import load_rgb
    from bgremoval.model.network import ModelConfig, build_network, inference_model
    from bgremoval.scoring.metrics import score_image, summarise
    from bgremoval.scoring.stock import RembgModel
    from bgremoval.serving.runtime import KerasSegmenter
    from bgremoval.training.blend import blend_weights
    from bgremoval.weights import find_u2net_onnx

    u2net = find_u2net_onnx(args.u2net)
    model_params = yaml.safe_load((ROOT / "params.yaml").read_text())["model"]

    keras.utils.set_random_seed(args.seed)
    pairs = pairs_by_group(args.data)
    group = {name: g for name, (_, _, g) in pairs.items()}
    test_g, val_g = set(args.test_groups.split(",")), set(args.val_groups.split(","))
    train_g = set(args.train_groups.split(",")) if args.train_groups else set(group.values()) - test_g - val_g
    unknown = (test_g | val_g | train_g) - set(group.values())
    if unknown:
        raise SystemExit(f"unknown groups {sorted(unknown)}; groups here: {sorted(set(group.values()))}")
    train_n = [n for n, g in group.items() if g in train_g]
    val_n = [n for n, g in group.items() if g in val_g][:: args.every]
    test_n = [n for n, g in group.items() if g in test_g][:: args.every]
    print(f"train {len(train_n)} images of {sorted(train_g)}; scored: val {len(val_n)}, test {len(test_n)}", flush=True)

    photo = lambda n: load_rgb(pairs[n][0], 10**9)  # noqa: E731
    truth = lambda n: load_mask(pairs[n][1], 10**9).astype(np.float64) / 255  # noqa: E731
    teacher = teacher_masks({n: pairs[n][0] for n in train_n}, u2net, args.workdir)
    batch = crop_sampler([photo(n) for n in train_n], [teacher[n] for n in train_n], args.size, args.whole_share, args.seed)

    def score(names: list[str], predict) -> dict[str, float]:
        return summarise([score_image(predict(photo(n)), truth(n)) for n in names])

    stock_u2net = RembgModel(u2net)
    log: dict = {"args": {k: str(v) for k, v in vars(args).items()},
                 "u2net": {"val": score(val_n, stock_u2net), "test": score(test_n, stock_u2net)}, "evals": {}}

    net = build_network(ModelConfig(family="u2netp", unet_filters=model_params["unet_filters"],
                                     unet_separable=model_params["unet_separable"], onnx_path=model_params["onnx_path"]))
    pretrained = [w.copy() for w in net.get_weights()]
    variables = net.trainable_variables
    opt, bce = keras.optimizers.Adam(args.lr), keras.losses.BinaryCrossentropy()
    spec = (tf.TensorSpec((None, args.size, args.size, 3), tf.float32), tf.TensorSpec((None, args.size, args.size, 1), tf.float32))

    @tf.function(input_signature=spec)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.add_n([bce(y, out) for out in net(x, training=True)])  # fused + six side outputs, alike
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def evaluate() -> dict:
        distilled, scores = [w.copy() for w in net.get_weights()], {}
        for share in SHARES:
            net.set_weights(blend_weights(distilled, pretrained, share))
            seg = KerasSegmenter(inference_model(net), args.size)
            scores[share] = {"val": score(val_n, seg), "test": score(test_n, seg)}
        net.set_weights(distilled)
        return scores

    t0, losses = time.perf_counter(), []
    for s in range(1, args.steps + 1):
        x, y = batch(args.batch)
        losses.append(float(step(tf.constant(x), tf.constant(y))))
        if s % 25 == 0:
            print(f"step {s}: loss {np.mean(losses[-25:]):.4f}, {(time.perf_counter() - t0) / s:.2f} s/step", flush=True)
        if s % args.eval_every == 0 or s == args.steps:
            log["evals"][s] = evaluate()
    log["seconds"] = time.perf_counter() - t0

    fmt = lambda m: f"{m['mae']:.4f} | {m['max_f']:.3f} | {m['iou']:.3f}"  # noqa: E731
    trained_on = "+".join(sorted(train_g))
    print("\n| trained on | steps | b | val IoU | test MAE | test max F | test IoU |\n|---|---|---|---|---|---|---|")
    first = log["evals"][min(log["evals"])][0.0]
    print(f"| stock U²-NetP's weights | – | 0 | {first['val']['iou']:.3f} | {fmt(first['test'])} |")
    for s, scores in log["evals"].items():
        for share in SHARES[1:]:
            print(f"| {trained_on} | {s} | {share:g} | {scores[share]['val']['iou']:.3f} | {fmt(scores[share]['test'])} |")
    print(f"| U²-Net itself (rembg's protocol) | – | – | {log['u2net']['val']['iou']:.3f} | {fmt(log['u2net']['test'])} |")
    out = args.out or args.workdir / "distill.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(log, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
