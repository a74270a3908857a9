"""The `bgremoval` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from bgremoval import __version__


def _params(path: Path) -> dict:
    """params.yaml is where every default lives; the CLI reads it rather than repeating it."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        sys.exit(f"bgremoval: {path} not found; run from the project root or pass --params")


def _cmd_sample(args: argparse.Namespace) -> int:
    from bgremoval.sample import SampleSpec, generate_sample

    params = _params(args.params)
    spec = SampleSpec(**params["prepare"]["sample"])
    n = generate_sample(Path(args.out), spec, params["base"]["seed"])
    print(f"wrote {n} synthetic image/mask pairs to {args.out}/images and {args.out}/masks")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Sub-commands of the CLI."""
    parser = argparse.ArgumentParser(prog="bgremoval", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bgremoval {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sample = sub.add_parser("sample", help="draw the built-in synthetic sample (as configured in params.yaml) into a folder")
    sample.add_argument("out", help="folder to create images/ and masks/ in")
    sample.add_argument("--params", default="params.yaml", help="params file to read prepare.sample and base.seed from")
    sample.set_defaults(func=_cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bgremoval` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
