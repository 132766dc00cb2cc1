"""The ``sdlearn`` command: generate an image, download the SD v1.4 weights, train the tiny
model, measure how well it follows prompts.

    sdlearn generate "a red circle in the top left on a white background" -o out.png
    sdlearn generate "an astronaut riding a horse" --model sd-v1 --size 512 -o horse.png
    sdlearn download
    sdlearn train --quick                 # sdlearn train --help: stages, resume, steps
    sdlearn evaluate --seen 40 --held-out 40
"""

import argparse
import sys
from pathlib import Path

from sdlearn.checks import non_negative_float, non_negative_int, positive_int
from sdlearn.config import SD_V1, TINY, get_config


def _parser():
    parser = argparse.ArgumentParser(prog="sdlearn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="text to image")
    generate.add_argument("prompt")
    generate.add_argument("-o", "--output", default="out.png", type=png_path,
                          help="PNG path (with --batch-size N: name-0.png ... name-(N-1).png)")
    generate.add_argument("--model", choices=("tiny", "sd-v1"), default="tiny",
                          help="tiny: shipped, offline (default); sd-v1: SD v1.4 weights")
    generate.add_argument("--weights", choices=("default", "random"), default="default",
                          help="random: untrained weights, to try the code without a download")
    generate.add_argument("--download", action="store_true",
                          help="with --model sd-v1: download missing weights first")
    generate.add_argument("--negative-prompt", default=None)
    generate.add_argument("--steps", type=positive_int, default=50)
    generate.add_argument("--guidance", type=non_negative_float, default=None,
                          help="classifier-free guidance scale (default: "
                          f"{SD_V1.guidance_scale:g} sd-v1, {TINY.guidance_scale:g} tiny)")
    generate.add_argument("--seed", type=non_negative_int, default=None)
    generate.add_argument("--batch-size", type=positive_int, default=1)
    generate.add_argument("--size", type=positive_int, nargs="+", metavar="PIXELS",
                          help="one side for a square image, or HEIGHT WIDTH")
    generate.add_argument("--no-xla", action="store_true", help="do not jit-compile with XLA")

    download = commands.add_parser("download", help="fetch SD v1.4 (text encoder, UNet, VAE; "
                                   "4.3 GB) into $SDLEARN_CACHE (default ~/.cache/sdlearn)")

    from sdlearn import evaluate, train  # their options live beside their code

    for name, module, text in (
            ("train", train, "train the tiny model from scratch (autoencoder, CLIP, UNet)"),
            ("evaluate", evaluate, "measure how well the tiny model follows prompts")):
        command = commands.add_parser(name, help=text, description=text)
        module.build_parser(command)
        command.set_defaults(run=module.command)
    generate.set_defaults(run=generate_command)
    download.set_defaults(run=download_command)
    return parser


def png_path(text):
    """An argparse type: the output path, which must name a .png file (PNG is what we write)."""
    path = Path(text)
    if path.suffix.lower() != ".png" or path.is_dir():
        raise argparse.ArgumentTypeError(f"must be a path ending in .png, got {text!r}")
    return path


def _save_png(image, path, metadata):
    """Write atomically: a PNG appears complete or not at all."""
    from PIL import Image, PngImagePlugin

    from sdlearn.weights import atomic_write

    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_text(key, str(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG", pnginfo=info))


def generate_command(args):
    from sdlearn.pipeline import StableDiffusion, check_request

    if args.size and len(args.size) > 2:
        raise ValueError(f"--size takes one side (a square) or HEIGHT WIDTH, got {args.size}")
    size = None if not args.size else args.size[0] if len(args.size) == 1 else tuple(args.size)
    # Every option is checked before a model is built (or 4.3 GB downloaded).
    check_request(get_config(args.model), args.batch_size, args.steps, args.guidance, args.seed,
                  size)
    weights = None if args.weights == "random" else "default"
    sd = StableDiffusion(args.model, weights=weights, download=args.download,
                         jit_compile=not args.no_xla)
    images = sd.text_to_image(args.prompt, negative_prompt=args.negative_prompt,
                              batch_size=args.batch_size, num_steps=args.steps,
                              guidance_scale=args.guidance, seed=args.seed, image_size=size)
    guidance = sd.config.guidance_scale if args.guidance is None else args.guidance
    metadata = {"prompt": args.prompt, "negative_prompt": args.negative_prompt or "",
                "steps": args.steps, "guidance": guidance, "seed": args.seed,
                "model": sd.weights_source}
    for i, image in enumerate(images):
        path = args.output if len(images) == 1 else args.output.with_stem(f"{args.output.stem}-{i}")
        _save_png(image, path, metadata)
        print(f"wrote {path} ({image.shape[1]}x{image.shape[0]}, {sd.weights_source})")
    if weights is None:
        print("warning: random weights: these pictures are noise, not results", file=sys.stderr)


def download_command(args):
    from sdlearn.pipeline import MODEL_NAMES
    from sdlearn.weights import download as fetch

    for name in MODEL_NAMES:
        print(f"{name}: {fetch(name)}")


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError, OSError) as error:  # our checks: say what is wrong, no trace
        print(f"sdlearn {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
