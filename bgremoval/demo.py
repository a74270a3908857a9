"""`bgremoval demo`: a local web page (Gradio) to try a served model on your own photos.

Its controls are the request options (serving.options.KINDS), named as the server and `bgremoval predict`
name them, explained by the CLI's help and set to the model's serve.defaults; options_from parses them, so a
bad value is the same message on the page as anywhere else. Nothing is fetched from the network: no
analytics, no share link, the page's assets come from the installed gradio.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any


from bgremoval.images import ImageReadError, load_rgb
from bgremoval.serving.options import BACKGROUNDS, KINDS, MAX_PIXELS_NAME, OPTION_HELP, OUTPUTS, options_from
from bgremoval.serving.render import render, warm_up
from bgremoval.serving.served import Served

if TYPE_CHECKING:
    import gradio as gr

CHOICES = {"output": OUTPUTS, "background": BACKGROUNDS}  # the string options with a fixed set of values
UNSET = "default"  # a null switch (main_object): the model's own refinement, as options_from reads it
# Gradio's copies of the pictures it served: every half hour, those older than an hour are deleted.
CACHE_CLEANUP = (1800, 3600)
MIN_WIDTH = 280  # px of each option's control: a wide window shows four in a row


def option_help() -> dict[str, str]:
    """What `bgremoval predict --help` says of each option, with its flags written as the option names."""
    flag = re.compile(r"--(no-)?([a-z][a-z-]*)")
    return {name: flag.sub(lambda m: m[2].replace("-", "_") + (" false" if m[1] else ""), text)
            for name, text in OPTION_HELP.items()}


def predict_fn(served: Served, results: Path) -> Callable[..., tuple[str, str]]:
    """The page's function: (photo file, then each option's value in KINDS' order, bg_image a file or None)
    -> (the result PNG, the same file to download), written under `results` at the photo's own size. Bad
    input ends in a gr.Error with options_from's message, which names the option."""

    def predict(photo: str | None, *values: Any) -> tuple[str, str]:
        import gradio as gr

        if not photo:
            raise gr.Error("Drop a photo first.")
        request = dict(zip(KINDS, values, strict=True))
        wants_image = request["output"] == "composite" and request["background"] == "image"
        background = request.pop("bg_image")
        try:
            image = load_rgb(Path(photo), served.max_pixels, label=Path(photo).name, limit_name=MAX_PIXELS_NAME)
            if background and wants_image:  # otherwise the upload waits, unused, for background 'image'
                request["bg_image"] = load_rgb(Path(background), served.max_pixels, label="bg_image",
                                               limit_name=MAX_PIXELS_NAME)
            opts = options_from(request, served.config.defaults, served.max_pixels)
        except (ImageReadError, ValueError) as exc:
            raise gr.Error(str(exc)) from None
        out = Path(tempfile.mkdtemp(dir=results)) / f"{Path(photo).stem}-{opts.output}.png"
        render(image, served.predictor_for(opts)(image), opts).save(out)
        return str(out), str(out)

    return predict


def _control(name: str, kind: str, default: Any, info: str | None) -> gr.components.Component:
    """The input for one option (#option-NAME on the page): a choice, a switch, a number, a colour (text)
    or, for bg_image, an upload."""
    import gradio as gr

    common = {"label": name, "min_width": MIN_WIDTH, "elem_id": f"option-{name}"}
    if name == "bg_image":
        return gr.Image(type="filepath", image_mode=None, sources=["upload"], height=160,
                        **{**common, "label": f"{name} (background 'image')"})
    if name in CHOICES:
        return gr.Radio(list(CHOICES[name]), value=default, info=info, **common)
    if kind == "boolean":
        if default is None:
            return gr.Radio([UNSET, "true", "false"], value=UNSET, info=info, **common)
        return gr.Checkbox(value=bool(default), info=info, **common)
    if kind == "double" and default is not None:
        return gr.Number(value=default, info=info, **common)
    # Text, and numbers that may be left unset (a gr.Number cannot be empty): options_from reads '' as unset.
    return gr.Textbox(value="" if default is None else default, info=info, **common,
                      placeholder="empty: the model's own" if default is None else None)


def build(served: Served, model: str, results: Path | None = None) -> gr.Blocks:
    """The page for a served model: the photo and the result side by side, the options below. Results are
    written to `results` (default: a temporary folder removed with the page)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr

    help_ = option_help()
    with gr.Blocks(title="bgremoval demo", analytics_enabled=False, delete_cache=CACHE_CLEANUP) as page:
        gr.Markdown(f"## bgremoval: remove a photo's background\nModel: `{model}`. Drop a photo; the result is "
                    "written at the photo's own size.")
        with gr.Row(equal_height=True):
            photo = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], label="photo",
                             elem_id="photo")
            result = gr.Image(type="filepath", format="png", label="result", interactive=False, elem_id="result")
        with gr.Row():
            run = gr.Button("Remove background", variant="primary", elem_id="run")
            download = gr.DownloadButton("Download PNG", elem_id="download")
        with gr.Accordion("Options (the server's and `bgremoval predict`'s)", open=True), gr.Row():
            defaults = served.config.defaults
            controls = [_control(name, kind, defaults[name], help_.get(name)) for name, kind in KINDS.items()]
        if results is None:
            results = Path(tempfile.mkdtemp(prefix="bgremoval-demo-"))
            weakref.finalize(page, shutil.rmtree, results, ignore_errors=True)
        gr.on([photo.upload, run.click], predict_fn(served, results), [photo, *controls], [result, download])
    return page


def launch(served: Served, model: str, host: str | None, port: int | None) -> None:
    """Serve the page until interrupted: on `host` (None: 127.0.0.1, or $GRADIO_SERVER_NAME) and `port`
    (None: $GRADIO_SERVER_PORT, else the first free one from 7860); print its URL. Uploads are capped
    as the server caps a request's image data (serve.max_request_mb), photos at serve.max_pixels."""
    page = build(served, model)
    warm_up()  # pymatting's compiled code: now, not in the first request
    _, url, _ = page.launch(server_name=host, server_port=port, share=False, inbrowser=False, quiet=True,
                            prevent_thread_lock=True, ssr_mode=False, max_file_size=int(served.max_request_mb * 1e6))
    print(f"bgremoval demo: {url} (model {model}; Ctrl+C stops it)", flush=True)
    page.block_thread()
