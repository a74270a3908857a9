"""Temporal smoothing of video masks, and video throughput, on DAVIS frames (real video): prints a table.

    python benchmarks/video.py [--data DAVIS_FOLDER] [--sequences blackswan,breakdance,...]
                               [--strengths 0.5,0.8,0.9] [--reaches 0.004,0.008] [--size 320]
                               [--e2e-sequence NAME] [--frames N] [--out FILE]

Stock U²-NetP (rembg's weights, onnxruntime at --size, unrefined) predicts every frame of each sequence once;
smoothing (bgremoval.video.TemporalSmoother) is then applied to those masks, off and at each strength with
each motion reach (TemporalSmoother.reach, a fraction of the frame's shorter side; default MOTION_REACH):

- flicker: mean |alpha_t - alpha_(t-1)| over the pixels whose ground truth did not change between the two
  frames (lower: steadier). Soft alpha, what a cut-out shows.
- IoU: the mask at 0.5 against the ground truth, mean over frames.
- moving IoU: IoU at 0.5 on the pixels whose ground truth changed between the two frames only (summed over
  frames): where the object moved; a mask that lags behind the motion loses it.
- ms of smoothing per frame.

Throughput (frames per second): the network alone (predict on decoded frames), and end to end on a video made
from one sequence's frames (H.264 .mp4 with an audio track, made first and not timed): `bgremoval.video.cut_video`
decoding, predicting, smoothing, rendering and encoding, to a cut-out (.webm, VP9 with alpha; serve.defaults'
edge colours) and to a composite (.mp4, H.264).

The DAVIS frames stay where they are (read only); the made video and the outputs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "davis_train"
SEQUENCES = ("blackswan", "breakdance", "car-roundabout", "cows", "libby")


def frames_of(data: Path, sequence: str, limit: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A sequence's frames (H, W, 3) uint8 and ground-truth masks (H, W) bool, in order (the first `limit`)."""
    paths = sorted((data / "images").glob(f"{sequence}_*.jpg"))[:limit]
    if not paths:
        raise SystemExit(f"no frames {sequence}_*.jpg in {data / 'images'}")
    images = [np.asarray(Image.open(p).convert("RGB"), np.uint8) for p in paths]
    masks = [np.asarray(Image.open(data / "masks" / f"{p.stem}.png").convert("L")) >= 128 for p in paths]
    return images, masks


class Scores:
    """Sums over frames of one sequence (or all): flicker, IoU, IoU where the ground truth changed."""

    def __init__(self):
        self.flicker_sum = self.flicker_n = 0.0
        self.ious: list[float] = []
        self.moving_inter = self.moving_union = 0.0

    def add(self, alphas: list[np.ndarray], masks: list[np.ndarray]) -> None:
        for t, (alpha, gt) in enumerate(zip(alphas, masks)):
            pred = alpha >= 0.5
            union = (pred | gt).sum()
            self.ious.append(float((pred & gt).sum() / union) if union else 1.0)
            if t == 0:
                continue
            same = masks[t - 1] == gt
            self.flicker_sum += float(np.abs(alpha - alphas[t - 1])[same].sum())
            self.flicker_n += float(same.sum())
            moved = ~same
            self.moving_inter += float((pred & gt & moved).sum())
            self.moving_union += float(((pred | gt) & moved).sum())

    def merge(self, other: "Scores") -> None:
        self.flicker_sum += other.flicker_sum
        self.flicker_n += other.flicker_n
        self.ious += other.ious
        self.moving_inter += other.moving_inter
        self.moving_union += other.moving_union

    def row(self) -> dict:
        return {"flicker": self.flicker_sum / max(self.flicker_n, 1), "iou": float(np.mean(self.ious)),
                "moving_iou": self.moving_inter / max(self.moving_union, 1)}


def smoothed(images: list[np.ndarray], probs: list[np.ndarray], strength: float,
             reach: float) -> tuple[list[np.ndarray], float]:
    """The masks through a TemporalSmoother with motion reach `reach`, and its seconds in all."""
    from bgremoval.video import TemporalSmoother

    smoother = TemporalSmoother(strength)
    smoother.reach = reach
    start = time.perf_counter()
    out = [smoother(image, prob) for image, prob in zip(images, probs)]
    return out, time.perf_counter() - start


def make_video(images: list[np.ndarray], path: Path, rate: int = 24) -> Path:
    """The frames as an H.264 .mp4 at `rate` frames/s with an AAC tone as its audio track."""
    import av

    h, w = images[0].shape[:2]
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=rate, options={"crf": "18", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        audio = out.add_stream("aac", rate=44100, layout="stereo")
        for image in images:
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode(None))
        seconds = len(images) / rate
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(int(44100 * seconds)) / 44100)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = 44100, 0
        out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return path


def end_to_end(video: Path, network, output: str, suffix: str, strength: float, tmp: Path) -> tuple[int, float]:
    """cut_video on a file with serve.defaults' options and `output`; (frames, seconds)."""
    from bgremoval.serving.options import options_from
    from bgremoval.video import cut_video

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    opts = options_from({"output": output}, params["serve"]["defaults"], params["serve"]["max_pixels"])
    start = time.perf_counter()
    n = cut_video(video, tmp / f"out_{output}{suffix}", network, opts, strength, progress=False)
    return n, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="a DAVIS folder: images/<seq>_<frame>.jpg, masks/")
    parser.add_argument("--sequences", default=",".join(SEQUENCES))
    parser.add_argument("--strengths", default="0.5,0.8,0.9", help="smoothing strengths to try (besides off)")
    parser.add_argument("--reaches", default="0.004,0.008", help="motion reaches to try with each strength")
    parser.add_argument("--size", type=int, default=320, help="the network's input size (rembg's own: 320)")
    parser.add_argument("--e2e-sequence", default="breakdance", help="the sequence made into a video for end to end")
    parser.add_argument("--e2e-strength", type=float, help="smoothing for the end-to-end runs (default: params.yaml's)")
    parser.add_argument("--frames", type=int, help="only the first N frames of each sequence (a quick check)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    from bgremoval.serving.render import warm_up
    from bgremoval.serving.runtime import OnnxSegmenter
    from bgremoval.weights import find_u2netp_onnx

    network = OnnxSegmenter(find_u2netp_onnx(), args.size)
    network(np.zeros((64, 64, 3), np.uint8))  # onnxruntime's first run allocates
    settings = [(0.0, 0.0)] + [(float(s), float(r)) for s in args.strengths.split(",") for r in args.reaches.split(",")]
    totals = {s: Scores() for s in settings}
    smooth_seconds = {s: 0.0 for s in settings}
    per_sequence, net_seconds, n_frames = {}, 0.0, 0
    for sequence in args.sequences.split(","):
        images, masks = frames_of(args.data, sequence, args.frames)
        start = time.perf_counter()
        probs = [network(image) for image in images]
        net_seconds += time.perf_counter() - start
        n_frames += len(images)
        per_sequence[sequence] = {}
        for s in settings:
            alphas, seconds = smoothed(images, probs, *s)
            smooth_seconds[s] += seconds
            scores = Scores()
            scores.add(alphas, masks)
            per_sequence[sequence][f"{s[0]:g}/{s[1]:g}"] = scores.row()
            totals[s].merge(scores)
        print(f"{sequence}: {len(images)} frames; strength/reach: " + ", ".join(
            f"{k}: flicker {r['flicker']:.4f} moving IoU {r['moving_iou']:.3f}" for k, r in per_sequence[sequence].items()),
            flush=True)

    e2e_strength = args.e2e_strength
    if e2e_strength is None:
        e2e_strength = yaml.safe_load((ROOT / "params.yaml").read_text())["video"]["smoothing"]
    images, _ = frames_of(args.data, args.e2e_sequence, args.frames)
    h, w = images[0].shape[:2]
    warm_up()  # pymatting's compiled code, loaded before the clock starts
    with tempfile.TemporaryDirectory() as tmp:
        made = make_video(images, Path(tmp) / f"{args.e2e_sequence}.mp4")
        e2e = {name: end_to_end(made, network, output, suffix, e2e_strength, Path(tmp))
               for name, output, suffix in (("cutout .webm", "cutout", ".webm"), ("composite .mp4", "composite", ".mp4"))}

    print(f"\n{date.today()}  {platform.node() or 'this machine'}: {os.cpu_count()} CPU cores, "
          f"onnxruntime threads: {os.environ.get('BGREMOVAL_THREADS') or 'default'}")
    print(f"DAVIS {args.sequences} ({n_frames} frames, {w}x{h}), stock U²-NetP at {args.size}, unrefined\n")
    print("| smoothing | motion reach | flicker (static GT) | IoU | moving IoU (GT changed) | smoothing ms/frame |")
    print("|---|---|---|---|---|---|")
    results = {}
    for s in settings:
        row = totals[s].row()
        row["smooth_ms"] = 1000 * smooth_seconds[s] / n_frames
        results[f"{s[0]:g}/{s[1]:g}"] = row
        reach = f"{s[1]:g} ({round(s[1] * min(h, w))} px)" if s[0] else "-"
        print(f"| {s[0]:g}{' (off)' if s[0] == 0 else ''} | {reach} | {row['flicker']:.4f} | {row['iou']:.4f} | "
              f"{row['moving_iou']:.4f} | {row['smooth_ms']:.1f} |")
    net_fps = n_frames / net_seconds
    print(f"\nframes per second ({w}x{h}): network alone {net_fps:.2f}; end to end on {args.e2e_sequence}.mp4 "
          f"({len(images)} frames, smoothing {e2e_strength:g}): "
          + "; ".join(f"{name} {n / sec:.2f}" for name, (n, sec) in e2e.items()))
    if args.out:
        args.out.write_text(json.dumps({"date": str(date.today()), "cores": os.cpu_count(), "size": args.size,
                                        "frames": n_frames, "smoothing": results, "per_sequence": per_sequence,
                                        "network_fps": net_fps,
                                        "end_to_end_fps": {k: n / sec for k, (n, sec) in e2e.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
