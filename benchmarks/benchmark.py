"""sdlearn, KerasCV and diffusers side by side: the same Stable Diffusion v1, random weights.

    python benchmarks/benchmark.py                          # CPU defaults (13-33 min here)
    python benchmarks/benchmark.py --config test            # a smoke test of the script (minutes)
    python benchmarks/benchmark.py --implementations sdlearn,sdlearn-loop --tasks step

Every implementation runs in a fresh Python process of its own, one after the other, so peak
memory (the process's maximum resident set) is its own, and each can use its own framework and
Keras backend. Each process first measures its framework's float32 matrix-multiply rate
(a (2048, 3072) x (3072, 3072) product, best of 5), which is the ceiling its model can reach on
this hardware in that minute. On a shared machine the rate moves, so it is measured again
right before every timed call and after the last, and each ratio is the best time's FLOP/s over
the best matmul rate of that window (``timed``). Two tasks:

- ``step``: one guided DDIM step (UNet on the prompt and on the empty prompt, guidance, DDIM
  update), timed ``--repeats`` times after a warm-up (which compiles), at ``--step-size`` px.
  Reported: the best step, in seconds and as FLOP/s (the FLOP counts below).
- ``generate``: text to image end to end (encode both prompts, ``--steps`` steps, decode) at
  ``--size`` px after a warm-up generation of 1 step (which compiles; of ``--steps`` steps for
  a compiled loop, one program per number of steps), then the decoder alone, best of
  ``--decode-repeats``. Reported: time per image (and per batch where ``--batch`` > 1), decode
  time and FLOP/s, peak RSS.

Implementations (``--implementations``, comma-separated; one missing is skipped with a note):
    sdlearn           the defaults: XLA per model, one UNet call of 2B per step, Python loop,
                      blocked attention (sdlearn.layers.ATTENTION = "blocked")
    sdlearn-einsum    the same with the einsum attention the course reads (all heads at once)
    sdlearn-2calls    the same with KerasCV's two UNet calls of B per step
    sdlearn-loop      the whole DDIM loop compiled as one XLA program (sdlearn.fast.CompiledDDIM)
    sdlearn-eager     no XLA (Keras's default graph or eager execution)
    sdlearn-bf16      mixed_bfloat16; sdlearn-fp16: mixed_float16
    sdlearn-fused     attention through keras.ops.dot_product_attention (ATTENTION = "fused")
    sdlearn-winograd  3x3 convolutions by Winograd's F(2x2, 3x3) (CONVOLUTION = "winograd")
    sdlearn-folded    upsamplings with the 2x copy folded into the convolution (UPSAMPLING =
                      "folded"); sdlearn-folded-winograd: both
    sdlearn-fast      loop + fused attention + mixed_bfloat16 (the GPU configuration)
    kerascv           KerasCV 0.9 as it runs itself: XLA, two UNet calls per step (TF backend)
    diffusers         diffusers' UNet2DConditionModel + AutoencoderKL + transformers' CLIP text
                      model, float32, PyTorch's default SDPA attention, DDIM, the pipeline's loop
    diffusers-fp16    the same in float16 (GPU only); diffusers-compile: + torch.compile
sdlearn's Keras backend is ``--backend`` (tensorflow here; jax on the GPU machine, which has no
TensorFlow). All models have random weights: the numbers are speed, not pictures.
"""

import argparse
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# FLOPs per call, counted with PyTorch's FLOP counter on the same architecture (the project's
# design notes, REFERENCE.md; chapter 8 and unet_layers.py recount the UNet's from its layers):
# UNet per image at a latent side (pixels / 8), decoder per image at a pixel side, text encoder.
UNET_FLOP = {32: 0.180e12, 64: 0.803e12}
DECODER_FLOP = {256: 0.62e12, 512: 2.51e12}
TEXT_FLOP = 13e9
PROMPT = "a photograph of an astronaut riding a horse"


def unet_flop(latent_side):
    if latent_side in UNET_FLOP:
        return UNET_FLOP[latent_side]
    return None  # not counted at this size


def decoder_flop(side):
    return DECODER_FLOP.get(side)


# --- Measuring ----------------------------------------------------------------------------------

def peak_rss_gb():
    """The process's peak resident memory so far, in GB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def best_time(fn, repeats):
    """(best, all) wall-clock seconds of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), times


def matmul_rate(matmul, repeats=5):
    """FLOP/s of a (2048, 3072) x (3072, 3072) float32 product: 2 * 2048 * 3072 * 3072 FLOP."""
    matmul()  # warm-up
    best, _ = best_time(matmul, repeats)
    return 2 * 2048 * 3072 * 3072 / best


def matmul_operands():
    """The (2048, 3072) and (3072, 3072) float32 operands ``matmul_rate`` counts, in Keras."""
    import keras

    return keras.random.normal((2048, 3072), seed=0), keras.random.normal((3072, 3072), seed=1)


def keras_matmul():
    """The product ``matmul_rate`` times, in Keras (on whichever backend it runs)."""
    from keras import ops

    a, b = matmul_operands()
    return lambda: ops.convert_to_numpy(ops.matmul(a, b)[0, 0])


def timed(result, key, fn, repeats, matmul):
    """result[key] = the best time of ``fn`` over ``repeats`` calls, each call right after a
    matmul measurement; result[key + "_matmul"] = the best matmul rate in that window. On a
    shared machine both move from minute to minute; the best of each, interleaved, estimates
    what the code and the hardware do when the machine is least disturbed."""
    rates, times = [], []
    for _ in range(repeats):
        rates.append(matmul_rate(matmul, repeats=3))
        times.append(best_time(fn, 1)[0])
    rates.append(matmul_rate(matmul, repeats=3))
    result[key], result[key + "_all"] = min(times), times
    result[key + "_matmul"], result[key + "_matmul_range"] = max(rates), [min(rates), max(rates)]


# --- sdlearn ------------------------------------------------------------------------------------

SDLEARN_VARIANTS = {
    "sdlearn": {},
    "sdlearn-2calls": {"batched_guidance": False},
    "sdlearn-loop": {"compiled_loop": True},
    "sdlearn-eager": {"jit_compile": False},
    "sdlearn-bf16": {"dtype_policy": "mixed_bfloat16"},
    "sdlearn-fp16": {"dtype_policy": "mixed_float16"},
    "sdlearn-einsum": {"attention": "einsum"},
    "sdlearn-fused": {"attention": "fused"},
    "sdlearn-winograd": {"convolution": "winograd"},
    "sdlearn-folded": {"upsampling": "folded"},
    "sdlearn-folded-winograd": {"upsampling": "folded", "convolution": "winograd"},
    "sdlearn-fast": {"compiled_loop": True, "attention": "fused",
                     "dtype_policy": "mixed_bfloat16"},
}


def run_sdlearn(args, variant):
    import keras
    import numpy as np
    from keras import ops

    from sdlearn import fast, layers, sampler
    from sdlearn.pipeline import StableDiffusion

    options = dict(SDLEARN_VARIANTS[variant])
    layers.ATTENTION = options.pop("attention", layers.ATTENTION)
    layers.CONVOLUTION = options.pop("convolution", layers.CONVOLUTION)
    layers.UPSAMPLING = options.pop("upsampling", layers.UPSAMPLING)
    matmul = keras_matmul()
    result = {"framework": f"Keras {keras.__version__}, {keras.backend.backend()} backend"}
    start = time.perf_counter()
    sd = StableDiffusion(args.config, weights=None, **options)
    result["build_s"] = time.perf_counter() - start
    batch, rng = args.batch, np.random.default_rng(0)

    if args.task == "step":
        side = args.step_size // 8
        x = rng.standard_normal((batch, side, side, 4)).astype("float32")
        context = rng.standard_normal((batch, 77, sd.config.unet.context_dim)).astype("float32")
        unconditional = rng.standard_normal(context.shape).astype("float32")
        if options.get("compiled_loop"):
            # One program for all repeats: time per step = time of the loop / repeats.
            def loop():
                fast.sample(sd.unet, x, context, unconditional, args.repeats, 7.5,
                            loops=sd._loops)
            loop()  # compiles
            timed(result, "step_s", loop, 1, matmul)
            result["step_s"] /= args.repeats
        else:
            unet = sd.unet_call if sd.batched_guidance else fast.guidance_in_two_calls(
                sd.unet_call)

            def step():  # the body of sampler.sample's loop, at t = 500
                eps = sampler.guided_noise(unet, x, 500, context, unconditional, 7.5)
                return ops.convert_to_numpy(sampler.ddim_step(x, eps, 0.3, 0.35)[0])
            step()  # compiles
            timed(result, "step_s", step, args.repeats, matmul)
        return result

    def generate(num_steps):
        sd.text_to_image(PROMPT, batch_size=batch, num_steps=num_steps, seed=0,
                         image_size=args.size)
    # A compiled loop is one program per number of steps (sdlearn.fast.CompiledDDIM): its
    # warm-up runs all of them, or the timed generation would include compiling it.
    warmup_steps = args.steps if sd.compiled_loop else 1
    result = _generate(result, generate, lambda latent: sd.decode(latent), args,
                       (batch, args.size // 8, args.size // 8, 4), matmul, warmup_steps)
    peak = jax_peak_device_gb() if keras.backend.backend() == "jax" else None
    if peak is not None:
        result["peak_device_gb"] = peak  # a GPU's, as diffusers' row has PyTorch's
    return result


def jax_peak_device_gb():
    """The most memory in use at once on JAX's first device so far, in GB; None where the
    device keeps no such statistics (a CPU)."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 1e9 if "peak_bytes_in_use" in stats else None


def _generate(result, generate, decode, args, latent_shape, matmul, warmup_steps=1):
    """Shared by all implementations: warm-up, timed generation, peak memory, decoder alone."""
    import numpy as np

    generate(warmup_steps)  # warm-up: compiles every model at this size
    result["warmup_steps"] = warmup_steps
    timed(result, "image_s", lambda: generate(args.steps), 1, matmul)
    result["image_s"] /= args.batch
    result["peak_rss_gb"] = peak_rss_gb()
    latent = np.random.default_rng(1).standard_normal(latent_shape).astype("float32")
    timed(result, "decode_s", lambda: decode(latent), args.decode_repeats, matmul)
    return result


# --- KerasCV ------------------------------------------------------------------------------------

def run_kerascv(args):
    if args.config != "sd-v1":
        raise RuntimeError("KerasCV only builds the full-size model (--config sd-v1)")
    import keras
    import numpy as np
    from keras import ops

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("KerasCV's Stable Diffusion imports TensorFlow: run it with "
                           "KERAS_BACKEND=tensorflow")
    from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer
    from keras_cv.src.models.stable_diffusion.decoder import Decoder
    from keras_cv.src.models.stable_diffusion.diffusion_model import DiffusionModel
    from keras_cv.src.models.stable_diffusion.stable_diffusion import StableDiffusion
    from keras_cv.src.models.stable_diffusion.text_encoder import TextEncoder

    from sdlearn.tokenizer import VOCAB_PATH

    matmul = keras_matmul()
    result = {"framework": f"KerasCV 0.9 on Keras {keras.__version__}, tensorflow backend"}
    size = args.step_size if args.task == "step" else args.size
    start = time.perf_counter()
    # KerasCV's own class, jit_compile=True as it defaults to; its models with random weights
    # (download_weights=False) and sdlearn's copy of the CLIP vocabulary (no download).
    sd = StableDiffusion(img_height=size, img_width=size, jit_compile=True)
    sd._tokenizer = SimpleTokenizer(bpe_path=str(VOCAB_PATH))
    sd._diffusion_model = DiffusionModel(size, size, 77, download_weights=False)
    sd._diffusion_model.compile(jit_compile=True)
    if args.task == "generate":
        sd._text_encoder = TextEncoder(77, download_weights=False)
        sd._text_encoder.compile(jit_compile=True)
        sd._decoder = Decoder(size, size, download_weights=False)
        sd._decoder.compile(jit_compile=True)
    result["build_s"] = time.perf_counter() - start
    batch, rng = args.batch, np.random.default_rng(0)

    if args.task == "step":
        side = size // 8
        latent = rng.standard_normal((batch, side, side, 4)).astype("float32")
        context = rng.standard_normal((batch, 77, 768)).astype("float32")
        unconditional = rng.standard_normal(context.shape).astype("float32")
        t_emb = sd._get_timestep_embedding(500, batch)
        a_t, a_prev = 0.3, 0.35

        def step():  # the body of KerasCV's generate_image loop, as it is written there
            unconditional_latent = sd.diffusion_model.predict_on_batch(
                {"latent": latent, "timestep_embedding": t_emb, "context": unconditional})
            new = sd.diffusion_model.predict_on_batch(
                {"latent": latent, "timestep_embedding": t_emb, "context": context})
            new = ops.array(unconditional_latent + 7.5 * (new - unconditional_latent))
            pred_x0 = (latent - (1 - a_t) ** 0.5 * new) / a_t ** 0.5
            return ops.convert_to_numpy(ops.array(new) * (1.0 - a_prev) ** 0.5
                                        + a_prev ** 0.5 * pred_x0)
        step()  # compiles
        timed(result, "step_s", step, args.repeats, matmul)
        return result

    def generate(num_steps):
        encoded = sd.encode_text(PROMPT)
        sd.generate_image(encoded, batch_size=batch, num_steps=num_steps, seed=0)
    return _generate(result, generate, lambda latent: sd.decoder.predict_on_batch(latent),
                     args, (batch, size // 8, size // 8, 4), matmul)


# --- diffusers (PyTorch) ------------------------------------------------------------------------

def run_diffusers(args, variant):
    if args.config != "sd-v1":
        raise RuntimeError("the diffusers models are built at full size only (--config sd-v1)")
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if variant == "diffusers-fp16" else torch.float32
    if dtype == torch.float16 and device == "cpu":
        raise RuntimeError("float16 on a CPU is not a configuration diffusers supports")
    torch.manual_seed(0)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    a = torch.randn(2048, 3072, device=device)
    b = torch.randn(3072, 3072, device=device)

    def matmul():
        (a @ b)[0, 0].item()
    result = {"framework": f"diffusers {__import__('diffusers').__version__}, "
                           f"PyTorch {torch.__version__}, {device}, {dtype}".replace("torch.", "")}
    start = time.perf_counter()
    # Stable Diffusion v1's configuration (CompVis/stable-diffusion-v1-4's config files).
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
        max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu",
        projection_dim=768))
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512)
    models = [m.to(device, dtype).eval() for m in (unet, text_encoder, vae)]
    if variant == "diffusers-compile":
        unet = torch.compile(unet)
        vae.decoder = torch.compile(vae.decoder)
    del models
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    result["build_s"] = time.perf_counter() - start
    batch = args.batch
    size = args.step_size if args.task == "step" else args.size

    def guided_step(latents, t, embeddings):  # the body of StableDiffusionPipeline's loop
        noise = unet(torch.cat([latents] * 2), t, encoder_hidden_states=embeddings).sample
        noise_uncond, noise_text = noise.chunk(2)
        noise = noise_uncond + 7.5 * (noise_text - noise_uncond)
        return scheduler.step(noise, t, latents).prev_sample

    with torch.inference_mode():
        if args.task == "step":
            latents = torch.randn(batch, 4, size // 8, size // 8, device=device, dtype=dtype)
            embeddings = torch.randn(2 * batch, 77, 768, device=device, dtype=dtype)
            scheduler.set_timesteps(50)
            t = scheduler.timesteps[20]

            def step():
                guided_step(latents, t, embeddings)[0, 0, 0, 0].item()
            step()
            timed(result, "step_s", step, args.repeats, matmul)
            return result

        # [unconditional; prompt] token ids: start, 8 random ids, end tokens as padding (the
        # ids do not change the cost; diffusers' tokenizer would need a download).
        tokens = torch.full((2 * batch, 77), 49407, device=device)
        tokens[:, 0] = 49406
        tokens[batch:, 1:9] = torch.randint(0, 49406, (batch, 8), device=device)

        def generate(num_steps):  # what StableDiffusionPipeline.__call__ does, minus checks
            embeddings = text_encoder(tokens)[0]  # [unconditional; prompt]
            scheduler.set_timesteps(num_steps)
            generator = torch.Generator(device).manual_seed(0)
            latents = torch.randn(batch, 4, size // 8, size // 8, generator=generator,
                                  device=device, dtype=dtype)
            for t in scheduler.timesteps:
                latents = guided_step(latents, t, embeddings)
            image = vae.decode(latents / vae.config.scaling_factor).sample
            (image / 2 + 0.5).clamp(0, 1).cpu().float().numpy()

        def decode(latent):
            vae.decode(torch.from_numpy(latent).permute(0, 3, 1, 2).to(device, dtype)).sample
            sync()
        result = _generate(result, generate, decode, args, (batch, size // 8, size // 8, 4),
                           matmul)
        if device == "cuda":
            result["peak_device_gb"] = torch.cuda.max_memory_allocated() / 1e9
        return result


# --- The table ----------------------------------------------------------------------------------

def worker(args):
    """Run one implementation in this process; write its measurements as JSON."""
    name = args.worker
    try:
        if name.startswith("sdlearn"):
            result = run_sdlearn(args, name)
        elif name == "kerascv":
            result = run_kerascv(args)
        elif name.startswith("diffusers"):
            result = run_diffusers(args, name)
        else:
            raise ValueError(f"unknown implementation {name!r}")
        result["peak_rss_gb"] = result.get("peak_rss_gb", peak_rss_gb())
        if args.task == "generate" and "jax" in result["framework"]:
            import jax
            stats = jax.devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                result["peak_device_gb"] = stats["peak_bytes_in_use"] / 1e9
    except ImportError as error:
        result = {"skipped": f"not installed ({error.name or error})"}
    except RuntimeError as error:
        result = {"skipped": str(error)}
    Path(args.result).write_text(json.dumps(result))


def run_worker(name, task, args):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = f.name
    command = [sys.executable, __file__, "--worker", name, "--task", task, "--result",
               result_path] + [f"--{k.replace('_', '-')}={v}" for k, v in (
                   ("config", args.config), ("size", args.size), ("step_size", args.step_size),
                   ("steps", args.steps), ("repeats", args.repeats), ("batch", args.batch),
                   ("decode_repeats", args.decode_repeats))]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=path)
    env["KERAS_BACKEND"] = "tensorflow" if name == "kerascv" else args.backend
    start = time.perf_counter()
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    try:
        result = json.loads(Path(result_path).read_text())
    except (OSError, ValueError):
        result = {"skipped": "failed: " + (out.stderr.strip().splitlines() or ["?"])[-1]}
        if args.verbose:
            print(out.stderr[-3000:], file=sys.stderr)
    Path(result_path).unlink(missing_ok=True)
    result["process_s"] = time.perf_counter() - start
    print(f"# {name} {task}: " + json.dumps(result), file=sys.stderr, flush=True)
    return result


def task_flop(args):
    """FLOPs of one guided step, one decode and one image at the run's sizes (nan: not counted,
    as for the toy ``--config test``: the counts are SD v1's)."""
    nan = float("nan")
    if args.config != "sd-v1":
        return nan, nan, nan
    step = 2 * args.batch * (unet_flop(args.step_size // 8) or nan)
    decode = args.batch * (decoder_flop(args.size) or nan)
    image = (2 * args.steps * (unet_flop(args.size // 8) or nan) + (decoder_flop(args.size) or nan)
             + 2 * TEXT_FLOP)
    return step, decode, image


def achieved(flop, r, key):
    """(FLOP/s, its share of the matmul rate around the call) of the time r[key], or None."""
    if key not in r or flop != flop:
        return None
    rate = flop / r[key]
    return rate, rate / r[key + "_matmul"]


def matmul_span(measured):
    """"low-high" GFLOP/s of the matmul rates measured around the calls of ``measured`` (result
    dicts), or "" if none were."""
    rates = [m for r in measured for k, v in r.items() if k.endswith("_matmul_range") for m in v]
    return f"{min(rates) / 1e9:.0f}-{max(rates) / 1e9:.0f}" if rates else ""


def seconds(s, decimals=1):
    """A time with ``decimals`` decimals, or three significant digits below a second: 181.0,
    0.293 (on a GPU a whole batch takes under a second: one decimal would hide the difference)."""
    return f"{s:.{2 - math.floor(math.log10(s))}f}" if 0 < s < 1 else f"{s:.{decimals}f}"


def rows(results, args):
    """Markdown table rows from {(name, task): result}."""
    step_flop, decode_flop, image_flop = task_flop(args)
    table = ["| implementation | framework | matmul GFLOP/s | guided step s | step GFLOP/s "
             "(% of matmul) | s per image | decode s | decode GFLOP/s (% of matmul) | "
             "peak RSS GB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    if args.batch > 1:  # the GPU target is a time per batch
        table[0] += f" s per batch of {args.batch} |"
        table[1] += "---:|"
    if args.peak_tflops:
        table[0] += f" image TFLOP/s (% of {args.peak_tflops:g}) | peak device GB |"
        table[1] += "---:|---:|"
    notes = []
    for name in args.implementations:
        step, gen = results.get((name, "step"), {}), results.get((name, "generate"), {})
        for r in (step, gen):
            if "skipped" in r:
                notes.append(f"- {name}: skipped, {r['skipped']}")
        if all("skipped" in r or not r for r in (step, gen)):
            continue
        framework = step.get("framework") or gen.get("framework")

        def rate(flop, r, key):
            rate_share = achieved(flop, r, key)
            return f"{rate_share[0] / 1e9:.1f} ({100 * rate_share[1]:.0f}%)" if rate_share else ""

        cells = [name, framework,
                 matmul_span((step, gen)),
                 seconds(step["step_s"], 2) if "step_s" in step else "",
                 rate(step_flop, step, "step_s"),
                 seconds(gen["image_s"]) if "image_s" in gen else "",
                 seconds(gen["decode_s"]) if "decode_s" in gen else "",
                 rate(decode_flop, gen, "decode_s"),
                 f"{gen['peak_rss_gb']:.2f}" if "peak_rss_gb" in gen else ""]
        if args.batch > 1:
            cells.append(seconds(gen["image_s"] * args.batch) if "image_s" in gen else "")
        if args.peak_tflops:
            image_rate = achieved(image_flop, gen, "image_s")  # None: not timed, or not counted
            tflops = image_rate[0] / 1e12 if image_rate else None
            cells += [f"{tflops:.1f} ({100 * tflops / args.peak_tflops:.1f}%)" if tflops else "",
                      f"{gen['peak_device_gb']:.1f}" if "peak_device_gb" in gen else ""]
        table.append("| " + " | ".join(cells) + " |")
    return table, notes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--implementations", default="sdlearn,kerascv,diffusers")
    parser.add_argument("--tasks", default="step,generate")
    parser.add_argument("--step-extra", default="", help="implementations timed in the step "
                        "task only (e.g. sdlearn-loop,sdlearn-2calls)")
    parser.add_argument("--config", default="sd-v1", choices=["sd-v1", "test"])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"),
                        help="sdlearn's Keras backend (KerasCV always runs on tensorflow)")
    parser.add_argument("--size", type=int, default=512, help="image side for 'generate'")
    parser.add_argument("--step-size", type=int, default=256, help="image side for 'step'")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps per image")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed guided steps")
    parser.add_argument("--decode-repeats", type=int, default=1)
    parser.add_argument("--peak-tflops", type=float, help="the accelerator's peak (989 for "
                        "an H100/H200's dense bf16): adds a column of whole-image FLOP/s")
    parser.add_argument("--json", help="also write all measurements to this file")
    parser.add_argument("--verbose", action="store_true", help="print failing workers' stderr")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    args.implementations = args.implementations.split(",")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()
    results = {}
    extra = [n for n in args.step_extra.split(",") if n]
    for task in args.tasks.split(","):
        for name in args.implementations + (extra if task == "step" else []):
            results[(name, task)] = run_worker(name, task, args)
            if args.json:  # after every worker: a run cut short keeps what it measured
                Path(args.json).write_text(json.dumps(
                    {"results": {f"{n} {t}": r for (n, t), r in results.items()}}, indent=1))
    args.implementations += extra
    table, notes = rows(results, args)
    cpu = cpu_name()
    # XLA_FLAGS changes what every Keras worker compiles: part of the command that reproduces it.
    xla_flags = os.environ.get("XLA_FLAGS", "")
    print(f"\nStable Diffusion v1 ({args.config}), random weights, batch {args.batch}: guided "
          f"step at {args.step_size} px (best of {args.repeats}), generation at {args.size} px "
          f"with {args.steps} DDIM steps, guidance 7.5. {started}, {cpu}, "
          f"{os.cpu_count()} cores; load average before {load_before[0]:.2f}, after "
          f"{os.getloadavg()[0]:.2f}.\nCommand: "
          + (f"XLA_FLAGS={shlex.quote(xla_flags)} " if xla_flags else "")
          + "python benchmarks/benchmark.py "
          + " ".join(sys.argv[1:]) + "\n")
    print("\n".join(table + [""] + notes))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "started": started, "cpu": cpu, "xla_flags": xla_flags,
             "load": [load_before, os.getloadavg()],
             "results": {f"{n} {t}": r for (n, t), r in results.items()}}, indent=1))


def cpu_name():
    try:
        info = dict(line.split(":", 1) for line in
                    Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        return f"{info['model name']} (family {info['cpu family']}, model {info['model']})"
    except (OSError, KeyError, ValueError):
        return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
