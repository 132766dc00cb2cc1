"""Train the tiny Stable Diffusion from scratch, in the order Stable Diffusion itself was made.

1. **autoencoder**: image (64, 64, 3) -> encoder -> z ~ N(mean, var) (8, 8, 4) -> decoder ->
   image. Loss: L1 reconstruction + a small KL term towards N(0, I) (Rombach et al. 2022,
   who add a perceptual and an adversarial term that flat shapes do not need). Afterwards we
   measure ``latent_scale`` = 1 / std of the latents, as SD's 0.18215 was measured.
2. **text_encoder**: a tiny CLIP (Radford et al. 2021). SD v1 did not train its text encoder;
   it borrowed OpenAI's CLIP, trained contrastively on image-caption pairs. We do the same on
   our world: the TextEncoder plus a small image tower learn to give matching (image, caption)
   pairs similar vectors; the image tower is thrown away afterwards. Why CLIP and not, say,
   training the text encoder together with the UNet: it is what SD used, the text encoder is
   frozen and shared by everything downstream, and the loss teaches it exactly what a caption
   says about a picture.
3. **unet**: on frozen latents and frozen text embeddings, the DDPM loss
   ||eps - eps_theta(x_t, t, c)||^2 (Ho et al. 2020), with the caption replaced by the empty
   prompt 10% of the time, so the same UNet also predicts unconditional noise and classifier-
   free guidance works (Ho & Salimans 2022). The weights are an exponential moving average.

Each stage is a small "trainer" ``keras.Model`` whose ``call`` runs the models and whose
``compute_loss`` says what to minimise (``keras.ops`` only: any backend); ``model.fit`` does the
rest: progress bar, a CSV log per stage, a checkpoint every epoch (``BackupAndRestore``: rerun
with ``--resume`` after an interruption and training continues from the last finished epoch),
and data parallelism with ``tf.distribute.MirroredStrategy`` when there are several devices.

All the randomness (which images, which noise, which timesteps, which captions are dropped)
is drawn in the data pipeline, from a seed per (stage, epoch, batch). A training step is then a
pure function of the weights and its batch: the same on one device or on several, and the
same after a resume as without the interruption.

    sdlearn train                                   # the full run (see FULL below)
    sdlearn train --output sdlearn/data/tiny        # ... rebuilding the shipped weights
    sdlearn train --quick                           # a short run for tests (~100 s)
    sdlearn train --resume                          # continue an interrupted run
    sdlearn train --stage unet --steps 500          # retrain only the UNet, on the shipped
                                                    # autoencoder and text encoder
"""

import contextlib
import ctypes
import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import ops

from sdlearn import shapes
from sdlearn.config import TINY
from sdlearn.sampler import ALPHAS_CUMPROD
from sdlearn.text_encoder import TextEncoder
from sdlearn.tokenizer import Tokenizer
from sdlearn.unet import UNet
from sdlearn.vae import Decoder, ImageEncoder
from sdlearn.checks import non_negative_int, positive_int
from sdlearn.weights import WeightsCorruptError, atomic_write, file_sha256

STAGES = ("autoencoder", "text_encoder", "unet")
# The four shipped models and their files, as the pipeline loads them.
MODEL_FILES = {"text_encoder": "text_encoder.h5", "unet": "unet.h5", "decoder": "decoder.h5",
               "image_encoder": "image_encoder.h5"}
STAGE_MODELS = {"autoencoder": ("image_encoder", "decoder"), "text_encoder": ("text_encoder",),
                "unet": ("unet",)}
SHIPPED_DIR = Path(__file__).parent / "data" / "tiny"
MANIFEST = "manifest.json"


# ---- What to train, and for how long ----------------------------------------------------
@dataclass(frozen=True)
class StageSettings:
    steps: int  # optimizer steps
    batch_size: int  # the global batch, split across devices when there are several
    learning_rate: float  # peak; linear warm-up over the first 5% of steps, then cosine to 0
    steps_per_epoch: int  # a checkpoint and a CSV row after each "epoch" of this many steps
    ema_momentum: float | None = None  # keep an exponential moving average of the weights


@dataclass(frozen=True)
class TrainingPlan:
    num_images: int  # training images (train split: no HELD_OUT triple), drawn once
    autoencoder: StageSettings
    text_encoder: StageSettings
    unet: StageSettings
    kl_weight: float = 1e-4  # of the KL term, per latent number, against L1 per pixel value
    shape_weight: float = 20.0  # extra reconstruction weight on and around the shape
    min_snr_gamma: float | None = 5.0  # UNet loss weighting (see DiffusionTrainer)
    clip_dim: int = 32  # CLIP's joint image-text embedding size
    caption_dropout: float = 0.1  # share of UNet examples trained with the empty prompt
    caption_drop_probability: float = 0.3  # captions leave out size/position/background
    # How each training step runs. "xla": traced into a TensorFlow graph and compiled by XLA
    # once per stage (5-30 s on 2 Zen 5 cores, 30-80 s on the slower machine; tracing Adam's
    # update of each of the UNet's 286 variables is a third of it), then each step runs ~2x
    # faster than the plain graph. "graph": traced, not compiled, and without TensorFlow's
    # graph optimiser (Grappler): for QUICK's 20 steps a stage, compiling and optimising cost
    # more than they save (UNet stage, slower machine: 50 s with them, 34 s without). Eager
    # execution, with no tracing at all, was slower still: 2-4 s a step.
    execution: str = "xla"

    def stage(self, name):
        return getattr(self, name)


# 8.3 min on this course's 2-core CPU (Zen 5, idle): 3 s data, 2.2 min AE, 1.1 min CLIP, 4.8 min
# UNet. The shipped weights' run took 30 min on a slower machine shared with other jobs.
FULL = TrainingPlan(
    num_images=12_000,
    # 0.1 s a step and ~12 s of XLA compiling (0.25-0.45 s a step on the slower machine): the
    # 64x64 convolutions dominate. Small batches, more steps: the autoencoder learns edges
    # from the number of updates more than from the batch size.
    autoencoder=StageSettings(steps=1_200, batch_size=16, learning_rate=3e-3,
                              steps_per_epoch=100),
    # 0.09 s a step (0.3-0.4 s on the slower machine); the contrastive loss wants large
    # batches (more wrong captions to beat). 250 steps left 'circle' and 'square' hard to
    # tell apart (a linear probe of the end token's vector found the shape in 70% of
    # captions; 97% at 500, 100% at 750).
    text_encoder=StageSettings(steps=750, batch_size=128, learning_rate=2e-3,
                               steps_per_epoch=50),
    # 0.077 s a step of 32 latents and ~30 s compiling (0.27 s and ~75 s on the slower
    # machine). On a fixed budget of examples, more and smaller steps: 1,200 steps of 64
    # left seen captions' colours and positions at 58% and 84% (guidance 7.5).
    unet=StageSettings(steps=3_000, batch_size=32, learning_rate=3e-3, steps_per_epoch=200,
                       ema_momentum=0.998),
)
# Every code path in ~40 s here (~100 s on the slower machine); its pictures are noise.
QUICK = TrainingPlan(
    num_images=512,
    autoencoder=StageSettings(steps=20, batch_size=16, learning_rate=2e-3, steps_per_epoch=10),
    text_encoder=StageSettings(steps=20, batch_size=32, learning_rate=2e-3, steps_per_epoch=10),
    unet=StageSettings(steps=20, batch_size=32, learning_rate=2e-3, steps_per_epoch=10,
                       ema_momentum=0.9),
    execution="graph",
)


# ---- The data: drawn once, then batched with a seed per (stage, epoch, batch) ---------------
@dataclass
class ShapesData:
    images: np.ndarray  # (N, 64, 64, 3) uint8
    caption_ids: np.ndarray  # (N,) int: the caption of image i is captions[caption_ids[i]]
    captions: list  # the distinct captions; captions[0] is "", the empty prompt
    tokens: np.ndarray  # (len(captions), 77) int32: the captions, tokenized


def shapes_data(num_images, seed, drop_probability=0.3):
    """``num_images`` captioned training images of the shapes world (no HELD_OUT triple)."""
    images, captions, _ = shapes.make_dataset(num_images, seed,
                                              drop_probability=drop_probability, split="train")
    distinct = [""] + sorted(set(captions))  # ~1,300 at most: tokenize each once
    index = {text: i for i, text in enumerate(distinct)}
    caption_ids = np.array([index[text] for text in captions])
    return ShapesData(images, caption_ids, distinct, Tokenizer()(distinct))


def to_float(images):
    """uint8 [0, 255] -> float32 [-1, 1], the range SD's autoencoder works in."""
    return images.astype("float32") / 127.5 - 1.0


class Batches(keras.utils.PyDataset):
    """``steps`` batches per epoch; batch i of epoch e is ``make_batch(rng, batch_size)`` with
    ``rng`` seeded by (seed, e, i), so any batch can be remade exactly (after a resume too).
    The ``EpochSeed`` callback tells it which epoch it is in."""

    def __init__(self, make_batch, batch_size, steps, seed):
        super().__init__()
        self.make_batch, self.batch_size, self.steps, self.seed = (make_batch, batch_size,
                                                                    steps, seed)
        self.epoch = 0

    def __len__(self):
        return self.steps

    def __getitem__(self, index):
        return self.make_batch(np.random.default_rng([self.seed, self.epoch, index]),
                               self.batch_size)


class EpochSeed(keras.callbacks.Callback):
    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.epoch = epoch


def infer(model, inputs, batch_size=256):
    """``model`` on ``inputs`` in batches, as numpy. Called directly rather than through
    ``model.predict``, which traces a graph first: seconds that these few calls never win back."""
    return np.concatenate([ops.convert_to_numpy(model(inputs[i:i + batch_size]))
                           for i in range(0, len(inputs), batch_size)])


def batch_mean(per_example, global_batch_size):
    """The mean of per-example losses (B_local,) over the whole, global batch.

    On one device this is ``ops.mean``. With data parallelism each of n devices holds B / n
    examples and tf.distribute adds up the devices' gradients; dividing each device's sum by
    the global B makes that total the gradient of the global mean, as on one device.
    """
    return ops.sum(per_example) / global_batch_size


# ---- Stage 1: the autoencoder ---------------------------------------------------------
class AutoencoderTrainer(keras.Model):
    """{images (B, 64, 64, 3) in [-1, 1], noise (B, 8, 8, 4)} -> reconstruction, mean, log var.

    The encoder predicts a Gaussian per latent number; training decodes a sample of it,
    z = mean + std * noise (the "reparameterization trick", Kingma & Welling 2014), so the
    decoder learns to tolerate the encoder's uncertainty. Generation only uses the mean.
    """

    def __init__(self, encoder, decoder, kl_weight, global_batch_size, **kwargs):
        super().__init__(**kwargs)
        # The ImageEncoder ends in LatentMean; one layer earlier are the moments [mean, logvar].
        self.moments = keras.Model(encoder.inputs, encoder.layers[-2].output)
        self.decoder = decoder
        self.kl_weight, self.global_batch_size = kl_weight, global_batch_size
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")

    def call(self, batch):
        mean, log_variance = ops.split(self.moments(batch["images"]), 2, axis=-1)
        log_variance = ops.clip(log_variance, -30.0, 20.0)  # as SD, for stability
        z = mean + ops.exp(0.5 * log_variance) * batch["noise"]  # (B, 8, 8, 4)
        return self.decoder(z), mean, log_variance

    def compute_loss(self, x, y, y_pred, sample_weight=None, training=True):
        reconstruction, mean, log_variance = y_pred
        # L1 per pixel, a weighted mean: weights (B, 64, 64, 1) from shape_weights.
        weights = x["weights"][..., None]
        l1 = (ops.sum(weights * ops.abs(reconstruction - x["images"]), axis=(1, 2, 3))
              / (3.0 * ops.sum(weights, axis=(1, 2, 3))))  # (B,)
        # KL(N(mean, var) || N(0, 1)) per latent number, averaged over the latent.
        kl = 0.5 * ops.mean(mean**2 + ops.exp(log_variance) - 1.0 - log_variance,
                            axis=(1, 2, 3))
        self.reconstruction_tracker.update_state(l1)
        self.kl_tracker.update_state(kl)
        return batch_mean(l1 + self.kl_weight * kl, self.global_batch_size)


def shape_weights(images, shape_weight, margin=2):
    """Per-pixel loss weights (B, H, W): 1 on the background, 1 + shape_weight on the shape
    and within ``margin`` pixels of it.

    A shape covers 2-18% of the image. Weighted alike, every pixel pulls the autoencoder towards
    painting the background well and the shape as a blurred blob of about the right colour,
    and it learns colours and edges last. Weighting the shape and its outline first teaches
    what the captions talk about. The background colour is the median of the 2-pixel border,
    as in shapes.analyse; "the shape" is everything more than 0.3 (in [-1, 1] units) from it.
    """
    border = np.concatenate([images[:, :2], images[:, -2:],
                             images[:, :, :2].transpose(0, 2, 1, 3),
                             images[:, :, -2:].transpose(0, 2, 1, 3)], axis=1)
    background = np.median(border.reshape(len(images), -1, 3), axis=1)  # (B, 3)
    mask = np.linalg.norm(images - background[:, None, None], axis=-1) > 0.3  # (B, H, W)
    height, width = mask.shape[1:]
    padded = np.pad(mask, ((0, 0), (margin, margin), (margin, margin)))
    grown = np.any([padded[:, i:i + height, j:j + width] for i in range(2 * margin + 1)
                    for j in range(2 * margin + 1)], axis=0)  # dilated by `margin` pixels
    return 1.0 + shape_weight * grown.astype("float32")


def autoencoder_batches(data, settings, seed, shape_weight):
    side = data.images.shape[1] // TINY.vae.downsampling_factor
    latent_shape = (side, side, TINY.vae.latent_channels)  # (8, 8, 4)

    def make_batch(rng, batch_size):
        images = to_float(data.images[rng.integers(len(data.images), size=batch_size)])
        return {"images": images, "weights": shape_weights(images, shape_weight),
                "noise": rng.standard_normal((batch_size, *latent_shape), dtype="float32")}

    return Batches(make_batch, settings.batch_size, settings.steps_per_epoch, seed)


def measure_latent_scale(encoder, images):
    """1 / std of the encoder's latents over ``images``, to 4 significant digits: multiplied
    by it the latents have unit variance, like the noise the diffusion adds to them."""
    latents = infer(encoder, to_float(images))  # scale 1 here
    return float(f"{1.0 / latents.std():.4g}")


# ---- Stage 2: the text encoder, as half of a tiny CLIP --------------------------------------
def image_tower(embedding_dim):
    """CLIP's image half, tiny: (B, 64, 64, 3) -> (B, embedding_dim). Strided convolutions
    down to 4x4, then flatten: no global pooling, because *where* the shape is matters."""
    def down(width):
        return keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")

    return keras.Sequential([down(32), down(64), down(64), down(64),  # 32, 16, 8, 4 px
                             keras.layers.Flatten(), keras.layers.Dense(embedding_dim)])


class CLIPTrainer(keras.Model):
    """{tokens (B, T <= 77), images (B, 64, 64, 3)} -> similarity logits (B images, B captions).

    The caption's vector is the text encoder's output at its end token (CLIP's pooling: with
    causal attention it is the first position that has read the whole caption), projected to
    the joint space. Both vectors are normalised; logits = exp(t) * cosine similarity, with
    the temperature t learned (CLIP starts it at log(1 / 0.07)).
    """

    def __init__(self, text_encoder, embedding_dim, global_batch_size, **kwargs):
        super().__init__(**kwargs)
        self.text_encoder = text_encoder
        self.text_projection = keras.layers.Dense(embedding_dim, use_bias=False)
        self.image_tower = image_tower(embedding_dim)
        self.log_temperature = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(math.log(1 / 0.07)),
            name="log_temperature")
        self.global_batch_size = global_batch_size
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")

    def call(self, batch):
        context = self.text_encoder(batch["tokens"])  # (B, T, D)
        end = ops.argmax(batch["tokens"], axis=-1)  # the end token has the largest id (49407)
        pooled = ops.take_along_axis(context, end[:, None, None], axis=1)[:, 0]  # (B, D)
        text = ops.normalize(self.text_projection(pooled), axis=-1)  # (B, E)
        image = ops.normalize(self.image_tower(batch["images"]), axis=-1)  # (B, E)
        scale = ops.exp(ops.minimum(self.log_temperature, math.log(100.0)))  # capped, as CLIP
        return scale * ops.matmul(image, ops.transpose(text))  # (B, B): image i vs caption j

    def compute_loss(self, x, y, y_pred, sample_weight=None, training=True):
        # Image i belongs with caption i: cross-entropy over the row (which caption?) and over
        # the column (which image?). With several devices each one contrasts within its own
        # share of the batch, so this stage, unlike the others, depends on the device count.
        labels = ops.arange(ops.shape(y_pred)[0])
        per_example = 0.5 * (
            keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=True)
            + keras.losses.sparse_categorical_crossentropy(labels, ops.transpose(y_pred),
                                                           from_logits=True))
        self.accuracy_tracker.update_state(
            ops.cast(ops.argmax(y_pred, axis=-1) == labels, "float32"))
        return batch_mean(per_example, self.global_batch_size)


def clip_batches(data, settings, seed):
    # Only the tokens up to the longest caption's end token (14 of 77): the loss reads the
    # end token's vector, which causal attention computes from the tokens before it alone, so
    # the padding after it changes nothing but the cost (5x more tokens).
    length = int(np.argmax(data.tokens, axis=1).max()) + 1
    tokens = data.tokens[:, :length]

    def make_batch(rng, batch_size):
        picks = rng.choice(len(data.images), size=batch_size, replace=False)
        return {"tokens": tokens[data.caption_ids[picks]], "images": to_float(data.images[picks])}

    return Batches(make_batch, settings.batch_size, settings.steps_per_epoch, seed)


# ---- Stage 3: the UNet ----------------------------------------------------------------
class DiffusionTrainer(keras.Model):
    """{latents x_0, context c, noise eps, timesteps t} -> eps_theta(x_t, t, c).

    x_t = sqrt(alpha_t) x_0 + sqrt(1 - alpha_t) eps (the forward process at a random t), and
    the loss is the squared error of the predicted noise, DDPM's "simple" loss as in SD,
    times a weight per timestep when ``min_snr_gamma`` is set: Min-SNR weighting (Hang et al.
    2023), w_t = min(SNR_t, gamma) / SNR_t with SNR_t = alpha_t / (1 - alpha_t). It is 1 at
    high noise, where the picture's layout (what, where, which colour) is decided, and small
    at the lowest noise levels, whose noise is hard to see and matters little; training on a
    small budget then spends its steps on what the prompt controls. The sampler is unchanged.
    """

    def __init__(self, unet, global_batch_size, min_snr_gamma=None, **kwargs):
        super().__init__(**kwargs)
        self.unet, self.global_batch_size = unet, global_batch_size
        self.min_snr_gamma = min_snr_gamma
        self.alphas_cumprod = ALPHAS_CUMPROD.astype("float32")  # (1000,) alpha_t

    def alpha(self, timesteps):
        return ops.take(self.alphas_cumprod, timesteps)  # (B,)

    def call(self, batch):
        alpha = self.alpha(batch["timesteps"])[:, None, None, None]
        x_t = ops.sqrt(alpha) * batch["latents"] + ops.sqrt(1.0 - alpha) * batch["noise"]
        timesteps = ops.cast(batch["timesteps"], "float32")
        return self.unet([x_t, timesteps, batch["context"]])  # (B, 8, 8, 4)

    def compute_loss(self, x, y, y_pred, sample_weight=None, training=True):
        squared_error = ops.mean((y_pred - x["noise"]) ** 2, axis=(1, 2, 3))  # (B,)
        if self.min_snr_gamma is not None:
            alpha = self.alpha(x["timesteps"])
            snr = alpha / (1.0 - alpha)
            squared_error = squared_error * ops.minimum(snr, self.min_snr_gamma) / snr
        return batch_mean(squared_error, self.global_batch_size)


def diffusion_batches(latents, contexts, caption_ids, settings, caption_dropout, seed):
    """Batches of frozen inputs: ``latents`` (N, 8, 8, 4), ``contexts`` (captions, 77, D) with
    row 0 the empty prompt's, ``caption_ids`` (N,)."""
    def make_batch(rng, batch_size):
        picks = rng.integers(len(latents), size=batch_size)
        ids = np.where(rng.random(batch_size) < caption_dropout, 0, caption_ids[picks])
        return {"latents": latents[picks], "context": contexts[ids],
                "noise": rng.standard_normal((batch_size, *latents.shape[1:]), dtype="float32"),
                "timesteps": rng.integers(len(ALPHAS_CUMPROD), size=batch_size)}

    return Batches(make_batch, settings.batch_size, settings.steps_per_epoch, seed)


# ---- One stage, with model.fit ----------------------------------------------------------
def distribution_strategy():
    """Data parallelism over every device when there are several, else the default strategy.

    Keras 3's own ``keras.distribution`` API only drives JAX, so on the TensorFlow backend we
    use ``tf.distribute``: MirroredStrategy keeps a copy of the weights on each device, splits
    every batch between them and adds up their gradients. Several GPUs are used if present;
    else several logical CPUs if someone configured them (the tests do, with
    ``tf.config.set_logical_device_configuration``).
    """
    import tensorflow as tf

    gpus, cpus = tf.config.list_logical_devices("GPU"), tf.config.list_logical_devices("CPU")
    devices = gpus if len(gpus) > 1 else cpus if len(cpus) > 1 else []
    if len(devices) < 2:
        return tf.distribute.get_strategy()  # one device: a no-op strategy
    return tf.distribute.MirroredStrategy(
        [d.name for d in devices], cross_device_ops=tf.distribute.ReductionToOneDevice())


@contextlib.contextmanager
def graph_optimizer(enabled):
    """TensorFlow's graph optimiser (Grappler) on or off for the graphs run inside the block,
    then back as it was. It rewrites each new graph before its first run: worth it for
    thousands of steps, not for twenty. (XLA-compiled steps are optimised by XLA itself.)"""
    import tensorflow as tf

    before = tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": not enabled})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": before})


def keep_freed_memory():
    """Stop glibc's malloc from handing freed memory back to the system (Linux only).

    A block over 32 MB gets its own mmap by default and is unmapped when freed. XLA's CPU
    runtime allocates a training step's temporaries like that, so every step maps fresh
    memory and the kernel zeroes it page by page: measured over 80 UNet steps on 2 cores,
    8.8 M page faults, a quarter of the CPU time in the kernel, 589 ms a step. With mmap and
    trimming off: 0.5 M faults, 277 ms a step. The process keeps its peak memory instead
    (about 3 GB for the full run). Other C libraries (macOS) are left as they are.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameter numbers, from malloc.h
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def compile_trainer(trainer, settings, execution="xla"):
    """Adam with a linear warm-up (5% of the steps) and cosine decay to zero; ``execution``
    is "xla" or "graph" (see TrainingPlan)."""
    warmup = max(1, settings.steps // 20)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=settings.steps - warmup, warmup_target=settings.learning_rate,
        warmup_steps=warmup)
    use_ema = settings.ema_momentum is not None
    optimizer = keras.optimizers.Adam(schedule, use_ema=use_ema,
                                      ema_momentum=settings.ema_momentum or 0.99)
    trainer.compile(optimizer=optimizer, jit_compile=execution == "xla")


class StageClock(keras.callbacks.Callback):
    """Adds the seconds since the stage (re)started to each epoch's logs (and CSV row)."""

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["seconds"] = round(time.perf_counter() - self.start, 1)


def fit(trainer, batches, settings, stage_dir=None, verbose="auto", callbacks=()):
    """``model.fit`` for ``settings.steps`` steps, checkpointed every epoch in ``stage_dir``.

    ``BackupAndRestore`` saves the trainer's weights, optimizer state and epoch after every
    epoch; if ``stage_dir/backup`` holds such a state when ``fit`` starts, training resumes
    from it. ``CSVLogger`` appends one row of mean losses per epoch to ``stage_dir/log.csv``.
    ``stage_dir=None``: neither (one-off experiments). ``callbacks``: more Keras callbacks.
    """
    trainer(batches[0])  # build the weights: BackupAndRestore restores into a built model
    # Create Adam's moments now: tf.function traces a step that creates variables twice.
    trainer.optimizer.build(trainer.trainable_variables)
    epochs = math.ceil(settings.steps / settings.steps_per_epoch)
    callbacks = [EpochSeed(batches), StageClock(), *callbacks]
    if stage_dir is not None:
        callbacks += [keras.callbacks.BackupAndRestore(str(Path(stage_dir) / "backup")),
                      keras.callbacks.CSVLogger(str(Path(stage_dir) / "log.csv"), append=True)]
    # shuffle=False: the batches are already random. Keras would otherwise shuffle their order
    # with Python's global `random`, whose state a resumed run does not restore, so a resume
    # would see the same batches in another order (and end up with other weights).
    return trainer.fit(batches, epochs=epochs, callbacks=callbacks, verbose=verbose,
                       shuffle=False)


# ---- The whole run -----------------------------------------------------------------------
def tiny_config(latent_scale=TINY.vae.latent_scale):
    """TINY with another latent scale (the scale has no weights: the files do not change)."""
    return dataclasses.replace(TINY, vae=dataclasses.replace(TINY.vae, latent_scale=latent_scale))


def run(stage="all", quick=False, output_dir="sdlearn-tiny",
        checkpoint_dir="sdlearn-tiny-checkpoints", resume=False, steps=None, seed=0,
        verbose="auto", callbacks=()):
    """Train the selected stage(s); returns a summary dict (also in the manifest).

    ``stage``: "all" or one of STAGES. A single later stage takes the earlier stages' models
    from ``checkpoint_dir`` when they were trained there, else the shipped ones.
    ``quick``: the QUICK plan (tests). ``steps``: override the selected stages' step counts
    (rounded up to whole epochs). ``callbacks``: Keras callbacks for every stage's ``fit``.
    ``resume``: continue the run in ``checkpoint_dir`` (stages already finished there are
    loaded, an interrupted one continues from its last epoch); without it ``checkpoint_dir``
    must not hold a run yet. When the UNet has been trained, ``output_dir`` receives the four
    weight files and ``manifest.json`` (the layout of ``sdlearn/data/tiny``).
    """
    if stage != "all" and stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(('all',) + STAGES)}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                              or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    if resume and not checkpoint_dir.is_dir():
        raise ValueError(f"cannot resume: checkpoint directory {checkpoint_dir} does not exist")
    if not resume and checkpoint_dir.exists() and any(checkpoint_dir.iterdir()):
        raise ValueError(f"checkpoint directory {checkpoint_dir} already holds a training run; "
                         "pass resume=True (--resume) to continue it, or choose another one")
    plan = QUICK if quick else FULL
    if steps is not None:
        selected = STAGES if stage == "all" else (stage,)
        def override(settings):
            per_epoch = min(steps, settings.steps_per_epoch)
            return dataclasses.replace(settings, steps=math.ceil(steps / per_epoch) * per_epoch,
                                       steps_per_epoch=per_epoch)

        plan = dataclasses.replace(plan, **{n: override(plan.stage(n)) for n in selected})
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    keep_freed_memory()

    start = time.perf_counter()
    print(f"Drawing {plan.num_images} training images of the shapes world (seed {seed}) ...")
    data = shapes_data(plan.num_images, seed, plan.caption_drop_probability)
    summary = {"seed": seed, "quick": quick, "num_images": plan.num_images,
               "num_captions": len(data.captions) - 1,
               "data_seconds": round(time.perf_counter() - start, 1), "stages": {}}
    strategy = distribution_strategy()
    with graph_optimizer(enabled=plan.execution == "xla"):
        for name in STAGES:
            if stage in ("all", name):
                summary["stages"][name] = run_stage(name, data, plan, checkpoint_dir, seed,
                                                    strategy, dict(verbose=verbose,
                                                                   callbacks=callbacks))
    if stage in ("all", "unet"):
        write_output(checkpoint_dir, output_dir, summary)
    return summary


def run_stage(name, data, plan, checkpoint_dir, seed, strategy, fit_options):
    """Train one stage (or read back its summary if it finished in an earlier session)."""
    stage_dir = checkpoint_dir / name
    finished = finished_summary(stage_dir)
    if finished is not None:
        print(f"Stage {name}: already trained in {stage_dir}")
        return finished
    stage_dir.mkdir(exist_ok=True)
    print(f"Stage {name}: {plan.stage(name)}")
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)  # the same initial weights, also for a stage rerun
    with strategy.scope():
        result = STAGE_FUNCTIONS[name](data, plan, checkpoint_dir, seed, fit_options)
    result.update(seconds=round(time.perf_counter() - started, 1),
                  settings=dataclasses.asdict(plan.stage(name)))
    # Written last and atomically: its presence is what marks the stage as finished.
    text = json.dumps(result, indent=2)
    atomic_write(stage_dir / "summary.json", lambda tmp: Path(tmp).write_text(text))
    return result


def finished_summary(stage_dir):
    """The summary of the stage finished in ``stage_dir``, or None if it has not finished."""
    path = Path(stage_dir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def _trained(checkpoint_dir, name):
    """Stage ``name``'s weight files, summary and loss log: this run's, else the shipped."""
    stage_dir = Path(checkpoint_dir) / name
    summary = finished_summary(stage_dir)
    if summary is not None:
        return ({m: stage_dir / MODEL_FILES[m] for m in STAGE_MODELS[name]}, summary,
                stage_dir / "log.csv")
    print(f"  using the shipped {name} ({SHIPPED_DIR})")
    paths = tiny_weights()
    return ({m: paths[m] for m in STAGE_MODELS[name]},
            tiny_manifest()["training"]["stages"][name], SHIPPED_DIR / f"{name}_log.csv")


def train_autoencoder(data, plan, checkpoint_dir, seed, fit_options):
    settings, stage_dir = plan.autoencoder, Path(checkpoint_dir) / "autoencoder"
    config = tiny_config(latent_scale=1.0)  # train unscaled; measure the scale afterwards
    encoder, decoder = ImageEncoder(config.vae), Decoder(config.vae)
    trainer = AutoencoderTrainer(encoder, decoder, plan.kl_weight, settings.batch_size)
    compile_trainer(trainer, settings, plan.execution)
    batches = autoencoder_batches(data, settings, [seed, 1], plan.shape_weight)
    history = fit(trainer, batches, settings, stage_dir, **fit_options)
    encoder.save_weights(stage_dir / MODEL_FILES["image_encoder"])
    decoder.save_weights(stage_dir / MODEL_FILES["decoder"])
    scale = measure_latent_scale(encoder, data.images[:2000])
    print(f"  latent scale: {scale} (1 / std of the latents)")
    return {"latent_scale": scale, **_last(history)}


def train_text_encoder(data, plan, checkpoint_dir, seed, fit_options):
    settings, stage_dir = plan.text_encoder, Path(checkpoint_dir) / "text_encoder"
    text_encoder = TextEncoder(TINY.text_encoder)
    trainer = CLIPTrainer(text_encoder, plan.clip_dim, settings.batch_size)
    compile_trainer(trainer, settings, plan.execution)
    history = fit(trainer, clip_batches(data, settings, seed=[seed, 2]), settings, stage_dir,
                  **fit_options)
    text_encoder.save_weights(stage_dir / MODEL_FILES["text_encoder"])
    return _last(history)


def train_unet(data, plan, checkpoint_dir, seed, fit_options):
    settings, stage_dir = plan.unet, Path(checkpoint_dir) / "unet"
    autoencoder_paths, autoencoder, _ = _trained(checkpoint_dir, "autoencoder")
    text_paths, _, _ = _trained(checkpoint_dir, "text_encoder")
    config = tiny_config(autoencoder["latent_scale"])
    # The frozen inputs, computed once: SD's latents x_0 = scale * mean of the encoder ...
    encoder = ImageEncoder(config.vae)
    encoder.load_weights(autoencoder_paths["image_encoder"])
    print(f"  encoding {len(data.images)} images to latents ...")
    latents = infer(encoder, to_float(data.images))
    # ... and the text encoder's output for each distinct caption (row 0: the empty prompt).
    text_encoder = TextEncoder(config.text_encoder)
    text_encoder.load_weights(text_paths["text_encoder"])
    contexts = infer(text_encoder, data.tokens)
    unet = UNet(config.unet)
    trainer = DiffusionTrainer(unet, settings.batch_size, plan.min_snr_gamma)
    compile_trainer(trainer, settings, plan.execution)
    batches = diffusion_batches(latents, contexts, data.caption_ids, settings,
                                plan.caption_dropout, seed=[seed, 3])
    history = fit(trainer, batches, settings, stage_dir, **fit_options)  # ends with the EMA weights
    unet.save_weights(stage_dir / MODEL_FILES["unet"])
    return {"latent_std": round(float(latents.std()), 4), **_last(history)}


STAGE_FUNCTIONS = {"autoencoder": train_autoencoder, "text_encoder": train_text_encoder,
                   "unet": train_unet}


def _last(history):
    """The final epoch's logged numbers (mean losses), rounded for the summary."""
    return {key: round(float(values[-1]), 5) for key, values in history.history.items()}


# ---- The shipped weights ------------------------------------------------------------------
def write_output(checkpoint_dir, output_dir, summary):
    """Copy the four trained models and each stage's loss log into ``output_dir``, with a
    manifest of the models' hashes. Every file is replaced atomically; the manifest comes
    last, so an interrupted copy leaves files that ``tiny_weights`` refuses, never loads."""
    output_dir.mkdir(parents=True, exist_ok=True)
    files, stages = {}, {}
    def copy(source, target):
        if source.resolve() != target.resolve():
            atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))

    for name in STAGES:
        paths, stages[name], log = _trained(checkpoint_dir, name)
        for model, path in paths.items():
            target = output_dir / MODEL_FILES[model]
            copy(path, target)
            files[model] = {"file": target.name, "sha256": file_sha256(target),
                            "bytes": target.stat().st_size}
        copy(log, output_dir / f"{name}_log.csv")
    latent_scale = stages["autoencoder"]["latent_scale"]
    manifest = {
        "model": "tiny",
        "config": dataclasses.asdict(tiny_config(latent_scale)),
        "latent_scale": latent_scale,
        "files": files,
        "training": {**summary, "stages": stages},
        "held_out": sorted(" ".join(triple) for triple in shapes.HELD_OUT),
    }
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write(output_dir / MANIFEST, lambda tmp: Path(tmp).write_text(text))
    total = sum(f["bytes"] for f in files.values()) / 1e6
    print(f"Wrote {len(files)} weight files ({total:.1f} MB), the loss logs and {MANIFEST} "
          f"to {output_dir}")


def tiny_weights(directory=None):
    """{model name: path} of the tiny model's weight files, each checked against the
    manifest's SHA-256. Raises FileNotFoundError or WeightsCorruptError naming the file.

    ``directory``: the shipped ``sdlearn/data/tiny`` by default, or the output of a training.
    """
    directory = Path(directory) if directory is not None else SHIPPED_DIR
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"the tiny model's manifest {manifest_path} is missing; "
                                "reinstall sdlearn or rebuild it with `sdlearn train`")
    files = tiny_manifest(directory)["files"]
    paths = {}
    for name in MODEL_FILES:
        path = directory / files[name]["file"]
        if not path.is_file():
            raise FileNotFoundError(f"the tiny model's weight file {path} is missing; "
                                    "reinstall sdlearn or rebuild it with `sdlearn train`")
        if file_sha256(path) != files[name]["sha256"]:
            raise WeightsCorruptError(f"the tiny model's weight file {path} is corrupt: its "
                                      f"SHA-256 differs from {manifest_path}'s")
        paths[name] = path
    return paths


def tiny_manifest(directory=None):
    """The manifest of the shipped (or given) tiny weights, as a dict; raises
    WeightsCorruptError naming the file if it is not one that ``sdlearn train`` wrote."""
    path = (Path(directory) if directory is not None else SHIPPED_DIR) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        # Touch every field that tiny_weights and TinyModel read: a missing one raises here.
        for name in MODEL_FILES:
            manifest["files"][name]["file"], manifest["files"][name]["sha256"]
        float(manifest["latent_scale"])
    except (ValueError, KeyError, TypeError) as error:
        raise WeightsCorruptError(f"{path} is not a manifest written by `sdlearn train` "
                                  f"({type(error).__name__}: {error}); rebuild the weights with "
                                  "`sdlearn train`") from None
    return manifest


# ---- Command line ----------------------------------------------------------------------
def build_parser(parser):
    """Add ``sdlearn train``'s options to ``parser`` (its subcommand parser in sdlearn.cli)."""
    parser.add_argument("--stage", default="all", choices=("all",) + STAGES,
                        help="which stage to train (default: all three, in order)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run that exercises every code path (minutes)")
    parser.add_argument("--output", default="sdlearn-tiny",
                        help="where the four weight files and manifest.json go")
    parser.add_argument("--checkpoint-dir", default="sdlearn-tiny-checkpoints",
                        help="checkpoints, CSV loss logs and finished stages")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --checkpoint-dir")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="training steps for each selected stage (default: the plan's)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    return parser


def command(args):
    """``sdlearn train``: run the parsed ``args`` of ``build_parser``."""
    run(stage=args.stage, quick=args.quick, output_dir=args.output,
        checkpoint_dir=args.checkpoint_dir, resume=args.resume, steps=args.steps,
        seed=args.seed)
