"""Cutting out a video: frames decoded with PyAV, each frame's mask predicted and rendered as an image's
would be (mask, cut-out or composite), encoded again at the same size and frame rate, the audio kept.

A network sees each frame on its own, so a mask that is right on average still flickers where the
frame is uncertain: a static edge whose soft alpha wobbles from frame to frame. `TemporalSmoother` holds the
mask still where the picture itself did not change (a moving average of the probability, gated per pixel
by the frame difference) and follows the new frame wherever the picture moved, so moving edges do not lag.

Codecs (what this PyAV build offers is checked, in order, in `av.codecs_available`):

- cut-out (alpha): .webm (the default) and .mkv take VP9 with alpha (libvpx-vp9, yuva420p; VP8 with alpha
  if VP9 is missing): what browsers play with transparency. .mov takes ProRes 4444 (prores_ks,
  yuva444p10le; QuickTime Animation, qtrle argb, if ProRes is missing): what editors import. .mp4 and .avi
  carry no alpha and are refused for cut-outs.
- mask and composite: H.264 (libx264, yuv420p; MPEG-4 Part 2 if libx264 is missing) in .mp4 (the default),
  .mov, .mkv and .avi; VP9 (yuv420p) in .webm.
- audio: the input's audio packets copied as they are where the output container takes the codec, else
  re-encoded (Opus in .webm, AAC elsewhere).

VP9's alpha travels beside the colour planes (WebM's BlockAdditional): FFmpeg's own VP9 decoder shows the
colour only, libvpx's (`decoder_for`) shows the alpha too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from bgremoval.serving.options import Options
from bgremoval.serving.render import render

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
ALPHA_SUFFIXES = (".webm", ".mkv", ".mov")  # containers a cut-out (a video with alpha) can be written to
SUFFIX_FOR = {"cutout": ".webm", "mask": ".mp4", "composite": ".mp4"}  # when only an output folder is named

# Temporal smoothing: a pixel keeps the previous smoothed mask with weight strength * gate, where
# gate = exp(-(change / CHANGE_SCALE)^2) and change is the largest colour change (0-1) between the two frames
# within MOTION_REACH of the pixel (a fraction of the frame's shorter side: the network's mask is blurred
# in proportion to the frame, so its edge moves a little beyond the pixels whose colour changed).
# benchmarks/video.py measured them on DAVIS: a smaller reach or a larger scale smooths more but lags
# behind slow motion (a swan on water changes little from one frame to the next).
CHANGE_SCALE = 0.06
MOTION_REACH = 0.008


class TemporalSmoother:
    """Frame by frame: (H, W, 3) uint8 frame and its (H, W) probability -> the probability smoothed over time.

    strength in [0, 1): the weight of the past where the picture did not change (0: off)."""

    def __init__(self, strength: float):
        if not 0 <= strength < 1:
            raise ValueError(f"smoothing strength {strength!r} is outside [0, 1) (0: off; 0.5: the past weighs as "
                             "much as the new frame where the picture did not change)")
        self.strength = float(strength)
        self.reach = MOTION_REACH  # how far from a pixel a change counts as motion there (see still())
        self.frame: np.ndarray | None = None
        self.prob: np.ndarray | None = None

    def __call__(self, frame: np.ndarray, prob: np.ndarray) -> np.ndarray:
        prob = np.asarray(prob, np.float32)
        if self.strength > 0 and self.frame is not None and self.frame.shape == frame.shape:
            keep = self.strength * still(self.frame, frame, self.reach)
            prob = keep * self.prob + (1 - keep) * prob
        self.frame, self.prob = frame, prob
        return prob


def still(before: np.ndarray, after: np.ndarray, reach: float) -> np.ndarray:
    """(H, W) in [0, 1]: 1 where two frames (H, W, 3) uint8 are the same near the pixel, falling towards 0 as
    their largest colour change within `reach` of it (a fraction of the shorter side) grows past CHANGE_SCALE."""
    from scipy import ndimage  # here: `bgremoval predict` on photos imports this module, and needs no scipy

    change = np.abs(after.astype(np.int16) - before.astype(np.int16)).max(axis=2).astype(np.float32) / 255
    change = ndimage.uniform_filter(change, 3)  # one noisy pixel is not motion
    pixels = round(reach * min(change.shape))
    if pixels:
        change = ndimage.maximum_filter(change, 2 * pixels + 1)
    return np.exp(-np.square(change / CHANGE_SCALE))


def is_video(path: Path) -> bool:
    """A video file: by extension, else a file PyAV opens with a video stream (an image file is never one
    here, whatever FFmpeg's image demuxers make of it)."""
    from bgremoval.images import IMAGE_EXTENSIONS

    path = Path(path)
    if not path.is_file() or path.suffix.lower() in IMAGE_EXTENSIONS:
        return False
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return True
    import av

    try:
        with av.open(str(path)) as container:
            name = container.format.name
            return bool(container.streams.video) and name != "image2" and not name.endswith("_pipe")
    except (av.FFmpegError, OSError, UnicodeDecodeError):
        return False


def output_path(src: Path, out: Path, output: str) -> Path:
    """Where a video's result goes: OUT itself when it has a video extension, else OUT/<stem> with the
    output's own container (.webm for a cut-out, .mp4 otherwise)."""
    out = Path(out)
    if out.suffix.lower() in VIDEO_EXTENSIONS and not out.is_dir():
        target = out
    else:
        target = out / f"{Path(src).stem}{SUFFIX_FOR[output]}"
    if output == "cutout" and target.suffix.lower() not in ALPHA_SUFFIXES:
        raise ValueError(f"{target}: a {target.suffix} file carries no alpha; write a cut-out to .webm (VP9 with alpha) "
                         "or .mov (ProRes 4444), or ask for --output composite or mask")
    if target.resolve() == Path(src).resolve():
        raise ValueError(f"{target}: is the input itself; name another output")
    return target


def _available(*names: str) -> str | None:
    import av

    return next((n for n in names if n in av.codecs_available), None)


def video_encoder(suffix: str, output: str, width: int, height: int) -> tuple[str, str, dict[str, str]]:
    """(codec, pixel format, codec options) for an output container and kind; the choices in the module's doc."""
    suffix = suffix.lower()
    even = width % 2 == 0 and height % 2 == 0
    if output == "cutout":
        if suffix in (".webm", ".mkv") and (codec := _available("libvpx-vp9", "libvpx")):
            return codec, "yuva420p", _VPX
        if suffix == ".mov" and (codec := _available("prores_ks", "qtrle")):
            return (codec, "yuva444p10le", {"profile": "4444"}) if codec == "prores_ks" else (codec, "argb", {})
        raise ValueError(f"no encoder with alpha for {suffix} in this PyAV build (looked for VP9/VP8 with alpha in "
                         ".webm/.mkv, ProRes 4444/qtrle in .mov)")
    if suffix == ".webm":
        if codec := _available("libvpx-vp9", "libvpx"):
            return codec, "yuv420p", _VPX
        raise ValueError("no VP9/VP8 encoder in this PyAV build for .webm; write .mp4 instead")
    if codec := _available("libx264"):  # 4:2:0 needs an even size; 4:4:4 keeps an odd one as it is
        return codec, "yuv420p" if even else "yuv444p", {"crf": "18", "preset": "veryfast"}
    if even and (codec := _available("mpeg4")):
        return codec, "yuv420p", {"flags": "+qscale", "global_quality": str(3 * 118)}  # -q:v 3
    raise ValueError(f"no H.264 (libx264) or MPEG-4 encoder in this PyAV build for {suffix} at {width}x{height}")


# libvpx: constant quality (crf with no bitrate cap), its faster "good" speeds, rows in parallel.
_VPX = {"crf": "30", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}


def decoder_for(stream):
    """A decoder context for a video stream that shows VP9/VP8's alpha (libvpx's), else None (the stream's own)."""
    import av

    name = stream.codec_context.name
    alpha = (stream.metadata or {}).get("alpha_mode") == "1"
    wanted = {"vp9": "libvpx-vp9", "vp8": "libvpx"}.get(name)
    if alpha and wanted and wanted in av.codecs_available:
        return av.CodecContext.create(wanted, "r")
    return None


def _audio_out(out, audio, suffix: str):
    """The output's audio stream: a copy of the input's where the container takes its codec (None: re-encode
    into the returned stream)."""
    if audio.codec_context.name in out.supported_codecs:
        return out.add_stream_from_template(audio), False
    codec = "libopus" if suffix == ".webm" else "aac"
    rate = 48000 if codec == "libopus" else audio.codec_context.sample_rate
    return out.add_stream(codec, rate=rate, layout=audio.codec_context.layout.name), True


def time_base(rate: Fraction, source: Fraction) -> Fraction:
    """The output's time base: one in which both the input's timestamps (in `source` units) and the frame rate's
    grid are exact, so a constant frame rate stays exactly constant (the input's own where none fits an int)."""
    finer = math.lcm(rate.numerator, source.denominator)
    return Fraction(1, finer) if finer < 2**31 else source


def on_grid(seconds: Fraction, rate: Fraction) -> Fraction:
    """A frame's time, moved onto the frame rate's grid when it is within a tenth of a frame of it (a container
    that stores milliseconds rounds 1/12 s): what a constant-rate video meant."""
    frames = seconds * rate
    nearest = round(frames)
    return Fraction(nearest) / rate if abs(frames - nearest) <= Fraction(1, 10) else seconds


def display_rotation(src: Path) -> int:
    """The rotation (degrees counter-clockwise, 0-359) a player applies to the first frame: a phone's portrait
    video is stored sideways with a display matrix that turns it upright."""
    import av

    with av.open(str(src)) as container:
        for frame in container.decode(video=0):
            return int(frame.rotation) % 360
    return 0


def cut_video(src: Path, dst: Path, predict: Callable[[np.ndarray], np.ndarray], opts: Options, smoothing: float,
              progress: bool) -> int:
    """Write `src`'s frames rendered as `opts` ask (see the module's doc) to `dst`; the number of frames.

    predict: (H, W, 3) uint8 -> (H, W) probability (the served model's predictor); smoothing: the
    TemporalSmoother's strength (0: each frame on its own)."""
    import av
    from tqdm import tqdm

    smoother = TemporalSmoother(smoothing)
    # Frames are turned upright as a player shows them (and as FFmpeg writes them by default): the network
    # sees them so, and the output needs no display matrix, which not every container keeps.
    turns = round(display_rotation(src) / 90) % 4
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with av.open(str(src)) as inp:
        if not inp.streams.video:
            raise ValueError(f"{src}: has no video stream")
        video = inp.streams.video[0]
        video.thread_type = "AUTO"
        audio = inp.streams.audio[0] if inp.streams.audio else None
        width, height = video.codec_context.width, video.codec_context.height
        if turns % 2:
            width, height = height, width
        rate = video.average_rate or video.guessed_rate or Fraction(25)
        codec, pix_fmt, options = video_encoder(dst.suffix, opts.output, width, height)
        fmt = {"cutout": "rgba", "mask": "gray", "composite": "rgb24"}[opts.output]
        try:
            with av.open(str(dst), "w") as out:
                vout = out.add_stream(codec, rate=rate, options=options)
                vout.width, vout.height, vout.pix_fmt = width, height, pix_fmt
                vout.codec_context.time_base = tb = time_base(rate, video.time_base)
                aout, reencode = _audio_out(out, audio, dst.suffix.lower()) if audio is not None else (None, False)
                bar = tqdm(total=video.frames or None, desc=f"predict {Path(src).name}", unit="frame",
                           disable=not progress)
                streams = [video] + ([audio] if audio is not None else [])
                last_pts = None
                for packet in inp.demux(*streams):
                    if packet.stream is audio:
                        if not reencode:
                            if packet.dts is not None:
                                packet.stream = aout
                                out.mux(packet)
                        else:
                            for frame in packet.decode():
                                frame.pts = None
                                out.mux(aout.encode(frame))
                        continue
                    for frame in packet.decode():
                        image = frame.to_ndarray(format="rgb24")
                        if turns:
                            image = np.ascontiguousarray(np.rot90(image, turns))
                        prob = smoother(image, predict(image))
                        picture = np.asarray(render(image, prob, opts))
                        encoded = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format=fmt)
                        seconds = frame.pts * video.time_base if frame.pts is not None else written / rate
                        pts = int(on_grid(seconds, rate) / tb)
                        if last_pts is not None and pts <= last_pts:  # a stream without usable timestamps
                            pts = last_pts + (int(1 / (rate * tb)) or 1)
                        encoded.pts, encoded.time_base, last_pts = pts, tb, pts
                        out.mux(vout.encode(encoded))
                        written += 1
                        bar.update()
                out.mux(vout.encode(None))
                if reencode:
                    out.mux(aout.encode(None))
                bar.close()
        except BaseException:
            dst.unlink(missing_ok=True)  # no half-written video left behind
            raise
    if not written:
        dst.unlink(missing_ok=True)
        raise ValueError(f"{src}: no video frames could be decoded")
    return written
