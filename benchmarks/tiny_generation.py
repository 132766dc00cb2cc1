"""Time the shipped tiny model: load, the first image (building and compiling), then one image
and a batch of 4 once warm. 50 DDIM steps at the tiny track's default guidance.

    python benchmarks/tiny_generation.py
"""

import time

from sdlearn.pipeline import StableDiffusion

PROMPT = "a red circle in the top left on a white background"


def timed(label, function, images=1):
    start = time.perf_counter()
    function()
    seconds = time.perf_counter() - start
    print(f"{label}: {seconds:.2f} s" + (f", {seconds / images:.2f} s per image" if images > 1
                                         else ""))


def main():
    sd = None

    def load():
        nonlocal sd
        sd = StableDiffusion("tiny")

    timed("load the shipped weights", load)
    timed("first image (builds and compiles)", lambda: sd.text_to_image(PROMPT, seed=0))
    timed("one image, warm", lambda: sd.text_to_image(PROMPT, seed=1))
    timed("batch of 4, first call (compiles for the new shape)",
          lambda: sd.text_to_image(PROMPT, batch_size=4, seed=2), images=4)
    timed("batch of 4, warm", lambda: sd.text_to_image(PROMPT, batch_size=4, seed=3), images=4)


if __name__ == "__main__":
    main()
