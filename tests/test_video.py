"""Videos: `bgremoval predict` on a video file (frames in, a video with alpha or a composite out, the audio
kept, the size and frame rate kept), and temporal smoothing that steadies a still scene without lagging
behind a moving edge."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from bgremoval.cli import main as cli
from bgremoval.video import (MOTION_REACH, TemporalSmoother, decoder_for, is_video, on_grid, output_path, still,
                             time_base, video_encoder)
from tests.helpers import PARAMS

W, H, RATE, FRAMES, SAMPLE_RATE = 96, 64, 12, 8, 16000
SMOOTHING = PARAMS["video"]["smoothing"]  # the CLI's default


def disc_frames(n: int = FRAMES, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A bright disc moving right across dark noise (what the test models find): frames and masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    frames, masks = [], []
    for t in range(n):
        mask = (yy - H / 2) ** 2 + (xx - (30 + 4 * t)) ** 2 <= 15 ** 2
        frames.append((rng.uniform(0, 60, (H, W, 3)) + mask[..., None] * 150).astype(np.uint8))
        masks.append(mask)
    return frames, masks


def write_video(path: Path, frames: list[np.ndarray], audio: bool = True, rotation: int = 0) -> Path:
    """The frames as H.264 at RATE frames/s, with a second of AAC tone beside them; shown turned by
    `rotation` degrees counter-clockwise (as a phone stores a portrait video)."""
    import av

    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=RATE, options={"crf": "10", "preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        if rotation:
            video.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if audio else None
        for frame in frames:
            out.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(video.encode(None))
        if sound is not None:
            tone = (0.3 * np.sin(np.arange(SAMPLE_RATE * len(frames) // RATE) / 4)).astype(np.float32)[None]
            chunk = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = SAMPLE_RATE, 0
            out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return path


def read_video(path: Path) -> dict:
    """What a player sees: the frames as RGBA (alpha included where the codec carries it), the stream facts."""
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        decoder = decoder_for(video)
        frames, audio_packets = [], 0
        for packet in container.demux(*container.streams.video[:1], *container.streams.audio[:1]):
            if packet.stream is audio:
                audio_packets += bool(packet.size)
            elif decoder is None:
                frames += packet.decode()
            elif packet.size:
                frames += decoder.decode(packet)
        if decoder is not None:
            frames += decoder.decode(None)
        return {"frames": [f.to_ndarray(format="rgba") for f in frames], "pix_fmt": frames[0].format.name,
                "codec": video.codec_context.name, "rate": video.average_rate, "size": (video.width, video.height),
                "audio": audio and audio.codec_context.name, "audio_packets": audio_packets,
                "rotation": frames[0].rotation,
                "pts_seconds": [float(f.pts * f.time_base) for f in frames]}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    frames, masks = disc_frames()
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames), masks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def expected_masks(served_folder: Path, frames: list[np.ndarray], smoothing: float) -> list[np.ndarray]:
    """The served model's masks at 0.5 of the decoded input frames, smoothed as the CLI smooths them."""
    from bgremoval.serving.served import Served

    served, smoother = Served.from_folder(served_folder), TemporalSmoother(smoothing)
    return [smoother(f[..., :3], served(np.ascontiguousarray(f[..., :3]))) >= 0.5 for f in frames]


# --- smoothing, on arrays ------------------------------------------------------------------------------

def flicker(probs: list[np.ndarray], where: np.ndarray) -> float:
    return float(np.mean([np.abs(b - a)[where].mean() for a, b in zip(probs, probs[1:])]))


def test_smoothing_steadies_a_still_scene_with_noise():
    rng = np.random.default_rng(1)
    scene, truth = disc_frames(1)
    scene, truth = scene[0].astype(int), truth[0]
    frames = [np.clip(scene + rng.integers(-3, 4, scene.shape), 0, 255).astype(np.uint8) for _ in range(30)]
    steady = 0.2 + 0.6 * truth  # an unsure network: its mask wobbles around this from frame to frame
    probs = [(steady + rng.normal(0, 0.1, truth.shape)).astype(np.float32) for _ in frames]
    smoother = TemporalSmoother(0.5)
    smoothed = [smoother(f, p) for f, p in zip(frames, probs)]
    everywhere = np.ones_like(truth)
    assert flicker(smoothed, everywhere) < 0.7 * flicker(probs, everywhere)  # the sensor noise left the gate open
    assert np.abs(smoothed[-1] - steady).mean() < 0.7 * np.abs(probs[-1] - steady).mean()


def test_smoothing_does_not_lag_on_a_moving_edge():
    frames, masks = disc_frames(12)
    probs = [m.astype(np.float32) for m in masks]
    smoother = TemporalSmoother(0.9)  # strong: a moving average that ignored motion would trail far behind
    for t, (frame, prob) in enumerate(zip(frames, probs)):
        out = smoother(frame, prob)
        if t:
            moved = masks[t] != masks[t - 1]
            assert moved.any() and np.abs(out - prob)[moved].max() < 0.02  # the moved edge is the new frame's
            assert np.abs(out - prob).mean() < 0.01
    naive = 0.9 * probs[-2] + 0.1 * probs[-1]  # what the gate prevents
    assert np.abs(naive - probs[-1])[masks[-1] != masks[-2]].min() > 0.8


def test_the_gate_is_open_where_frames_agree_and_shut_where_they_differ():
    a = np.full((20, 20, 3), 100, np.uint8)
    b = a.copy()
    b[:, 10:] = 200
    gate = still(a, b, MOTION_REACH)
    assert gate[:, :8].min() > 0.99 and gate[:, 12:].max() < 0.01
    assert (TemporalSmoother(0)(a, np.ones((20, 20))) == 1).all()
    for bad in (-0.1, 1.0, 2):
        with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
            TemporalSmoother(bad)


# --- containers and codecs -----------------------------------------------------------------------------

def test_outputs_and_codecs_follow_the_kind_and_the_container(tmp_path, clip):
    src = clip[0]
    assert output_path(src, tmp_path / "out", "cutout") == tmp_path / "out" / "clip.webm"
    assert output_path(src, tmp_path / "out", "composite") == tmp_path / "out" / "clip.mp4"
    assert output_path(src, tmp_path / "cut.mov", "cutout") == tmp_path / "cut.mov"
    with pytest.raises(ValueError, match="carries no alpha"):
        output_path(src, tmp_path / "cut.mp4", "cutout")
    with pytest.raises(ValueError, match="the input itself"):
        output_path(src, src, "composite")
    assert video_encoder(".webm", "cutout", W, H)[:2] == ("libvpx-vp9", "yuva420p")
    assert video_encoder(".mov", "cutout", W, H)[:2] == ("prores_ks", "yuva444p10le")
    assert video_encoder(".mp4", "composite", W, H)[:2] == ("libx264", "yuv420p")
    assert video_encoder(".mp4", "mask", W + 1, H)[:2] == ("libx264", "yuv444p")  # 4:2:0 needs an even size
    assert is_video(src) and not is_video(tmp_path / "missing.mp4")
    (tmp_path / "notes.dat").write_text("not a video")
    assert not is_video(tmp_path / "notes.dat")
    renamed = tmp_path / "clip.bin"  # no video extension: found by probing
    renamed.write_bytes(src.read_bytes())
    assert is_video(renamed)


def test_a_constant_frame_rate_stays_exact_in_any_container():
    assert time_base(Fraction(12), Fraction(1, 1000)) == Fraction(1, 3000)  # 1/12 s and 1 ms both whole ticks
    assert time_base(Fraction(30000, 1001), Fraction(1, 90000)) == Fraction(1, 90000)
    assert on_grid(Fraction(83, 1000), Fraction(12)) == Fraction(1, 12)  # WebM's millisecond for frame 1
    assert on_grid(Fraction(50, 1000), Fraction(12)) == Fraction(50, 1000)  # a variable-rate frame stays put


# --- bgremoval predict on a video --------------------------------------------------------------------------

def test_a_video_is_cut_out_to_a_video_with_alpha_and_its_audio(onnx_served, clip, tmp_path, capsys):
    src, masks = clip
    out = tmp_path / "out"
    assert cli(["predict", "--model", str(onnx_served), "--quiet", "--threshold", "0.5", "--no-estimate-foreground",
                str(src), str(out)]) == 0
    assert f"wrote {FRAMES} cutout frames to {out / 'clip.webm'} (smoothing {SMOOTHING:g})" in capsys.readouterr().out
    got = read_video(out / "clip.webm")
    assert got["codec"] == "vp9" and got["pix_fmt"] == "yuva420p"
    assert got["size"] == (W, H) and got["rate"] == RATE and len(got["frames"]) == FRAMES
    assert got["pts_seconds"] == pytest.approx([t / RATE for t in range(FRAMES)], abs=0.002)
    source = read_video(src)
    for frame, expected, mask in zip(got["frames"], expected_masks(onnx_served, source["frames"], SMOOTHING), masks):
        alpha = frame[..., 3] >= 128
        assert (alpha == expected).mean() > 0.99  # each frame's own mask, through VP9's alpha
        assert iou(alpha, mask) > 0.65  # and so the disc, wherever it moved (as well as the stock model finds it)
    assert np.mean([iou(f[..., 3] >= 128, m) for f, m in zip(got["frames"], masks)]) > 0.9
    assert got["audio"] == "opus"  # WebM takes no AAC: re-encoded
    assert source["audio"] == "aac" and source["audio_packets"] > 0


def test_a_cut_out_to_mov_keeps_the_audio_packets_as_they_are(onnx_served, clip, tmp_path):
    src, masks = clip
    assert cli(["predict", "--model", str(onnx_served), "--quiet", "--threshold", "0.5", "--smooth", "0",
                str(src), str(tmp_path / "cut.mov")]) == 0
    got, source = read_video(tmp_path / "cut.mov"), read_video(src)
    assert got["codec"] == "prores" and got["pix_fmt"].startswith("yuva444p")
    assert got["audio"] == "aac" and got["audio_packets"] == source["audio_packets"]  # copied, not re-encoded
    expected = expected_masks(onnx_served, source["frames"], 0)
    assert all((f[..., 3] >= 128).__eq__(e).mean() > 0.99 for f, e in zip(got["frames"], expected))


def test_a_video_is_composited_on_a_colour(onnx_served, clip, tmp_path):
    src, masks = clip
    out = tmp_path / "comp.mp4"
    assert cli(["predict", "--model", str(onnx_served), "--quiet", "--output", "composite", "--threshold", "0.5",
                "--bg-color", "0,0,255", str(src), str(out)]) == 0
    got, source = read_video(out), read_video(src)
    assert got["codec"] == "h264" and got["size"] == (W, H) and got["rate"] == RATE and got["audio"] == "aac"
    assert len(got["frames"]) == FRAMES
    corner = (slice(0, 10), slice(0, 10))  # never near the disc
    for frame, original, mask in zip(got["frames"], source["frames"], masks):
        rgb = frame[..., :3].astype(int)
        core = ndimage.binary_erosion(mask, iterations=4)  # away from the soft edge
        assert np.abs(rgb[core] - original[..., :3][core]).mean() < 12  # the photo inside the disc
        assert not mask[corner].any() and np.abs(rgb[corner] - [0, 0, 255]).mean() < 12  # the colour outside


def test_video_requests_that_cannot_be_met_are_refused_by_name(onnx_served, clip, tmp_path):
    src, model = str(clip[0]), ["predict", "--model", str(onnx_served), "--quiet"]
    with pytest.raises(SystemExit, match=r"--smooth: smoothing strength 1.0 is outside \[0, 1\)"):
        cli([*model, "--smooth", "1", src, str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="a .mp4 file carries no alpha; write a cut-out to .webm"):
        cli([*model, "--output", "cutout", src, str(tmp_path / "cut.mp4")])
    with pytest.raises(SystemExit, match="a video cannot be written to stdout"):
        cli([*model, src, "-"])
    assert not any(tmp_path.iterdir())


def test_the_smoothing_default_is_params_and_without_params_the_flag_is_asked_for(onnx_served, clip, tmp_path,
                                                                                 capsys):
    src = clip[0]
    params = tmp_path / "params.yaml"
    params.write_text("video:\n  smoothing: 0.25\n")
    assert cli(["predict", "--model", str(onnx_served), "--quiet", "--params", str(params), "--output", "mask",
                str(src), str(tmp_path / "m.webm")]) == 0
    assert "(smoothing 0.25)" in capsys.readouterr().out
    assert read_video(tmp_path / "m.webm")["codec"] == "vp9"
    with pytest.raises(SystemExit, match=r"pass --smooth S \(0: off\)"):
        cli(["predict", "--model", str(onnx_served), "--params", str(tmp_path / "none.yaml"), str(src),
             str(tmp_path / "x")])


def test_a_broken_video_is_reported_not_a_traceback(onnx_served, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 50)
    assert cli(["predict", "--model", str(onnx_served), "--quiet", "--smooth", "0", str(broken),
                str(tmp_path / "out")]) == 1
    assert f"bgremoval predict: {broken}: cannot be cut out as a video" in capsys.readouterr().err
    assert not (tmp_path / "out" / "broken.webm").exists()


def test_frame_rate_and_timestamps_survive_a_video_without_audio(onnx_served, tmp_path):
    frames, _ = disc_frames(5)
    src = write_video(tmp_path / "silent.mkv", frames, audio=False)
    assert cli(["predict", "--model", str(onnx_served), "--quiet", "--output", "mask", str(src),
                str(tmp_path / "mask.mp4")]) == 0
    got = read_video(tmp_path / "mask.mp4")
    assert got["audio"] is None and len(got["frames"]) == 5 and got["rate"] == Fraction(RATE)


def test_a_portrait_phone_video_is_seen_and_written_upright(tmp_path):
    from bgremoval.serving.options import options_from
    from bgremoval.video import cut_video

    frames, masks = disc_frames(3)
    src = write_video(tmp_path / "portrait.mp4", frames, audio=False, rotation=90)  # stored sideways
    assert read_video(src)["rotation"] == 90
    seen = []

    def predict(image):  # the disc by its brightness, as the network sees the frame
        seen.append(image.shape)
        return (image.mean(axis=2) > 128).astype(np.float32)

    opts = options_from({"output": "cutout", "estimate_foreground": False}, PARAMS["serve"]["defaults"], 10**6)
    assert cut_video(src, tmp_path / "cut.webm", predict, opts, 0, progress=False) == 3
    assert seen == [(W, H, 3)] * 3  # upright: as tall as the stored frames are wide
    got = read_video(tmp_path / "cut.webm")
    assert got["size"] == (H, W) and got["rotation"] == 0
    for frame, mask in zip(got["frames"], masks):
        assert iou(frame[..., 3] >= 128, np.rot90(mask)) > 0.9  # what a player showed, cut out

