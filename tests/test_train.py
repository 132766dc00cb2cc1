"""Tests for sdlearn.train: the quick run end to end, resume, data parallelism, bad input, and
the shipped weights' manifest."""

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from sdlearn import cli, train
from sdlearn.config import TINY, get_config
from sdlearn.weights import WeightsCorruptError, load_h5


def epoch_losses(log_path):
    with open(log_path) as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


# ---- The quick run ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick")
    summary = train.run(quick=True, output_dir=root / "out", checkpoint_dir=root / "ckpt",
                        verbose=0)
    return root, summary


def test_quick_run_writes_loadable_weights_and_manifest(quick_run):
    root, summary = quick_run
    paths = train.tiny_weights(root / "out")  # verifies every SHA-256
    assert set(paths) == {"text_encoder", "unet", "decoder", "image_encoder"}
    manifest = train.tiny_manifest(root / "out")
    assert manifest["training"]["quick"] is True
    assert manifest["latent_scale"] == summary["stages"]["autoencoder"]["latent_scale"] > 0
    assert manifest["config"]["vae"]["latent_scale"] == manifest["latent_scale"]
    for name in train.STAGES:
        assert manifest["training"]["stages"][name]["seconds"] > 0
    # The files load into the TINY models.
    config = train.tiny_config(manifest["latent_scale"])
    from sdlearn.unet import UNet

    load_h5(UNet(config.unet), paths["unet"])


def test_quick_run_losses_decrease(quick_run):
    root, _ = quick_run
    for name in train.STAGES:
        losses = epoch_losses(root / "ckpt" / name / "log.csv")
        assert len(losses) == 2, name
        assert losses[-1] < losses[0], f"{name}: {losses}"


def test_finished_stages_are_not_retrained(quick_run, tmp_path):
    root, summary = quick_run
    checkpoint_dir = tmp_path / "ckpt"
    shutil.copytree(root / "ckpt", checkpoint_dir)
    again = train.run(quick=True, output_dir=tmp_path / "out", checkpoint_dir=checkpoint_dir,
                      resume=True, verbose=0)
    assert again["stages"] == summary["stages"]
    assert (json.loads((tmp_path / "out" / "manifest.json").read_text())["files"]
            == json.loads((root / "out" / "manifest.json").read_text())["files"])


# ---- Resume after an interruption ------------------------------------------------------
class Interrupt(keras.callbacks.Callback):
    """Stops training like a Ctrl-C at the start of epoch ``epoch``."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def text_encoder_run(checkpoint_dir, output_dir, **kwargs):
    """The cheapest stage, 12 steps (rounded up to 2 epochs of 10); its trained weights."""
    train.run(stage="text_encoder", quick=True, steps=12, checkpoint_dir=checkpoint_dir,
              output_dir=output_dir, verbose=0, **kwargs)
    model = train.TextEncoder(TINY.text_encoder)
    model.load_weights(Path(checkpoint_dir) / "text_encoder" / "text_encoder.h5")
    return [w.numpy() for w in model.weights]


@pytest.fixture(scope="module")
def interrupted_and_resumed(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    with pytest.raises(KeyboardInterrupt):
        text_encoder_run(root / "ckpt", root / "out", callbacks=[Interrupt(epoch=1)])
    logged = len(epoch_losses(root / "ckpt" / "text_encoder" / "log.csv"))
    resumed = text_encoder_run(root / "ckpt", root / "out", resume=True)
    return root, logged, resumed


def test_resume_continues_where_it_stopped(interrupted_and_resumed):
    root, logged_before, _ = interrupted_and_resumed
    assert logged_before == 1  # the interruption came after the first epoch's checkpoint
    # ... and the resumed run trained only the second epoch, not both again.
    assert len(epoch_losses(root / "ckpt" / "text_encoder" / "log.csv")) == 2


def test_resume_matches_an_uninterrupted_run(interrupted_and_resumed, tmp_path):
    _, _, resumed = interrupted_and_resumed
    # Bit for bit: the same batches in the same order from the same restored state.
    uninterrupted = text_encoder_run(tmp_path / "ckpt", tmp_path / "out")
    for a, b in zip(uninterrupted, resumed):
        np.testing.assert_array_equal(a, b)


# ---- Data parallelism -------------------------------------------------------------------
DATA_PARALLEL_SCRIPT = textwrap.dedent("""
    import os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import json, keras, numpy as np
    from sdlearn import train
    from sdlearn.config import UNetConfig
    from sdlearn.unet import UNet

    config = UNetConfig(channels=(16, 32), attention=(True, False), res_blocks=1,
                        num_heads=2, context_dim=8, norm_groups=4)
    settings = train.StageSettings(steps=1, batch_size=8, learning_rate=0.1, steps_per_epoch=1)
    rng = np.random.default_rng(0)
    batches = train.diffusion_batches(
        latents=rng.standard_normal((32, 8, 8, 4), dtype="float32"),
        contexts=rng.standard_normal((5, 77, 8), dtype="float32"),
        caption_ids=rng.integers(1, 5, size=32), settings=settings, caption_dropout=0.25,
        seed=[0])

    def one_step(strategy):
        keras.utils.set_random_seed(1)  # the same initial weights in both runs
        with strategy.scope():
            trainer = train.DiffusionTrainer(UNet(config), settings.batch_size)
            trainer.compile(optimizer=keras.optimizers.SGD(0.1))  # gradient scale matters
            history = train.fit(trainer, batches, settings, None, verbose=0)
        return history.history["loss"][0], [w.numpy() for w in trainer.unet.weights]

    strategy = train.distribution_strategy()
    loss_1, weights_1 = one_step(tf.distribute.get_strategy())
    loss_2, weights_2 = one_step(strategy)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync, "losses": [loss_1, loss_2],
        "max_difference": max(float(np.abs(a - b).max()) for a, b in zip(weights_1, weights_2)),
        "max_change": max(float(np.abs(a - b).max()) for a, b in
                          zip(weights_1, [w.numpy() for w in UNet(config).weights])),
    }))
""")


def test_two_devices_match_one_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", DATA_PARALLEL_SCRIPT], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    np.testing.assert_allclose(result["losses"][0], result["losses"][1], rtol=1e-5)
    assert result["max_difference"] < 1e-5, result


def test_clip_trains_on_truncated_captions_exactly():
    # clip_batches cuts the 77 tokens after the longest caption's end token. That is exact
    # only because attention is causal: the first T rows of the output never see the rest.
    from sdlearn.text_encoder import TextEncoder
    from sdlearn.tokenizer import Tokenizer

    keras.utils.set_random_seed(0)
    encoder = TextEncoder(TINY.text_encoder)
    tokens = np.array(Tokenizer()(["a red circle", "a big blue square in the top left"]))
    length = int(np.argmax(tokens, axis=1).max()) + 1  # the end token has the largest id
    full, short = encoder(tokens), encoder(tokens[:, :length])
    assert short.shape == (2, length, TINY.text_encoder.width)
    np.testing.assert_allclose(short, np.asarray(full)[:, :length], atol=1e-5)
    with pytest.raises(ValueError, match="got 78 tokens per prompt.*at most 77"):
        encoder(np.zeros((1, 78), "int32"))


# ---- Bad input --------------------------------------------------------------------------
def test_bad_arguments_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown stage 'vae'.*autoencoder, text_encoder, unet"):
        train.run(stage="vae", checkpoint_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="steps must be a positive integer, got -5"):
        train.run(steps=-5, checkpoint_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="cannot resume: checkpoint directory .*missing"):
        train.run(resume=True, checkpoint_dir=tmp_path / "missing")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "something").write_text("")
    with pytest.raises(ValueError, match="already holds a training run"):
        train.run(checkpoint_dir=tmp_path / "used")


@pytest.mark.parametrize("argv, message", [
    (["--stage", "vae"], "invalid choice: 'vae'"),
    (["--steps", "-3"], "must be a positive integer, got -3"),
    (["--steps", "many"], "invalid positive_int value"),
])
def test_command_line_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_command_line_resume_without_checkpoints(tmp_path, capsys):
    status = cli.main(["train", "--resume", "--checkpoint-dir", str(tmp_path / "nothing")])
    assert status == 2
    error = capsys.readouterr().err
    assert "sdlearn train: error: cannot resume: checkpoint directory" in error
    assert "Traceback" not in error


# ---- The shipped weights ----------------------------------------------------------------
def test_shipped_weights_verify_and_fit_in_25_mb():
    paths = train.tiny_weights()
    manifest = train.tiny_manifest()
    total = sum(path.stat().st_size for path in paths.values())
    assert total <= 25e6, f"{total / 1e6:.1f} MB"
    assert manifest["training"]["quick"] is False


def test_tiny_config_matches_the_shipped_manifest():
    manifest = train.tiny_manifest()
    assert get_config("tiny") is TINY
    assert TINY.vae.latent_scale == manifest["latent_scale"]
    # JSON has lists where the dataclasses have tuples: compare both as JSON.
    assert manifest["config"] == json.loads(json.dumps(train.dataclasses.asdict(TINY)))


def test_corrupt_or_missing_weight_file_is_an_error_naming_it(tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(train.SHIPPED_DIR, copy)
    with open(copy / "unet.h5", "r+b") as f:  # flip one byte in the middle
        f.seek(f.seek(0, 2) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(WeightsCorruptError, match="unet.h5"):
        train.tiny_weights(copy)
    shutil.copyfile(train.SHIPPED_DIR / "unet.h5", copy / "unet.h5")
    (copy / "decoder.h5").unlink()
    with pytest.raises(FileNotFoundError, match="decoder.h5"):
        train.tiny_weights(copy)
    shutil.copyfile(train.SHIPPED_DIR / "decoder.h5", copy / "decoder.h5")
    for text in ("{}", "not json", '{"files": {"unet": 5}}', '{"files": []}'):
        (copy / "manifest.json").write_text(text)
        with pytest.raises(WeightsCorruptError, match=r"manifest.json is not a manifest written"):
            train.tiny_weights(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        train.tiny_weights(copy)
