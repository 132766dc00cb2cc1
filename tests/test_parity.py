"""Proof that sdlearn is Stable Diffusion: full-size models against KerasCV 0.9.

KerasCV's models are built with random weights (the real ones cannot be downloaded here),
written to legacy Keras .h5 files exactly like the published ones, and loaded into sdlearn's
models through sdlearn's own loader (``model.load_weights``). Then both compute the same
inputs in float32. Building the full-size models takes a few minutes on 2 cores, so everything
here shares module-scoped fixtures.
"""

import gc

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from sdlearn import sampler
from sdlearn.config import SD_V1, TEST
from sdlearn.pipeline import StableDiffusion
from sdlearn.text_encoder import TextEncoder
from sdlearn.tokenizer import VOCAB_PATH, Tokenizer
from sdlearn.unet import UNet, timestep_embedding
from sdlearn.vae import Decoder, ImageEncoder

pytestmark = pytest.mark.slow
ATOL = 1e-4


def assert_close(name, got, expected):
    """Within ATOL, and say the measured difference (run pytest with -s to see it)."""
    difference = float(np.abs(np.asarray(got) - np.asarray(expected)).max())
    print(f"{name}: max abs difference {difference:.2g} (outputs up to "
          f"{float(np.abs(expected).max()):.3g})")
    assert difference <= ATOL
SIZE = 128  # pixels; latent 16x16, the smallest KerasCV accepts (multiples of 128)

kcv = pytest.importorskip("keras_cv.src.models.stable_diffusion.stable_diffusion")


@pytest.fixture(scope="module", autouse=True)
def free_memory_afterwards():
    """The full-size models hold over 10 GB: give it back before the next test module runs."""
    yield
    keras.backend.clear_session()
    gc.collect()


def write_legacy_h5(model, path):
    """Write weights the way KerasCV's published files were written (legacy Keras h5)."""
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


@pytest.fixture(scope="module")
def reference():
    """KerasCV's StableDiffusion with random weights and our shipped vocabulary (offline)."""
    from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer
    from keras_cv.src.models.stable_diffusion.decoder import Decoder as RefDecoder
    from keras_cv.src.models.stable_diffusion.diffusion_model import DiffusionModel
    from keras_cv.src.models.stable_diffusion.image_encoder import ImageEncoder as RefEncoder
    from keras_cv.src.models.stable_diffusion.text_encoder import TextEncoder as RefText

    sd = kcv.StableDiffusion(img_height=SIZE, img_width=SIZE, jit_compile=False)
    sd._tokenizer = SimpleTokenizer(bpe_path=str(VOCAB_PATH))
    sd._text_encoder = RefText(77, download_weights=False)
    sd._diffusion_model = DiffusionModel(SIZE, SIZE, 77, download_weights=False)
    sd._decoder = RefDecoder(SIZE, SIZE, download_weights=False)
    sd._image_encoder = RefEncoder(download_weights=False)
    return sd


@pytest.fixture(scope="module")
def weight_files(reference, tmp_path_factory):
    folder = tmp_path_factory.mktemp("published")
    return {
        "text_encoder": write_legacy_h5(reference.text_encoder, folder / "kcv_encoder.h5"),
        "unet": write_legacy_h5(reference.diffusion_model, folder / "kcv_diffusion_model.h5"),
        "decoder": write_legacy_h5(reference.decoder, folder / "kcv_decoder.h5"),
        "image_encoder": write_legacy_h5(reference.image_encoder, folder / "vae_encoder.h5"),
    }


@pytest.fixture(scope="module")
def ours(weight_files):
    """sdlearn's pipeline at SD v1 sizes, loaded from the reference's .h5 files."""
    return StableDiffusion("sd-v1", weights=weight_files, jit_compile=False)


def test_parameter_counts_are_sd_v1(ours):
    assert ours.text_encoder.count_params() == 123_060_480
    assert ours.unet.count_params() == 859_520_964
    assert ours.decoder.count_params() == 49_490_199
    assert ours.image_encoder.count_params() == 34_163_664


def test_text_encoder_matches(reference, ours):
    prompts = ["a photograph of an astronaut riding a horse", "", "Tacos at dawn!!"]
    tokens = Tokenizer()(prompts)
    positions = np.repeat(np.arange(77, dtype="int32")[None], len(prompts), axis=0)
    expected = reference.text_encoder.predict_on_batch({"tokens": tokens, "positions": positions})
    assert_close("text encoder", ours.text_encoder(tokens), expected)


def test_unet_matches(reference, ours):
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((3, SIZE // 8, SIZE // 8, 4)).astype("float32")
    context = rng.standard_normal((3, 77, 768)).astype("float32")
    timesteps = np.array([1.0, 500.0, 999.0], dtype="float32")
    expected = reference.diffusion_model.predict_on_batch({
        "latent": latent, "context": context,
        # KerasCV takes the sinusoidal embedding as input; ours computes it inside.
        "timestep_embedding": np.concatenate(
            [reference._get_timestep_embedding(int(t), 1) for t in timesteps]),
    })
    assert_close("UNet", ours.unet([latent, timesteps, context]), expected)


def test_timestep_embedding_matches(reference):
    for t in (0, 1, 981):
        np.testing.assert_allclose(timestep_embedding(np.array([t]), 320),
                                   reference._get_timestep_embedding(t, 1), atol=1e-5)


def test_decoder_matches(reference, ours):
    latent = np.random.default_rng(1).standard_normal((2, SIZE // 8, SIZE // 8, 4))
    latent = latent.astype("float32")
    expected = reference.decoder.predict_on_batch(latent)
    assert_close("decoder", ours.decoder(latent), expected)


def test_image_encoder_matches(reference, ours):
    image = np.random.default_rng(2).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype("float32")
    expected = reference.image_encoder.predict_on_batch(image)
    assert_close("image encoder", ours.image_encoder(image), expected)


def test_end_to_end_generation_matches(reference, ours):
    """Same prompt, same initial noise, same 3 DDIM steps with guidance 7.5: same pixels."""
    prompt, steps = "a red circle in the top left", 3
    noise = np.random.default_rng(3).standard_normal((1, SIZE // 8, SIZE // 8, 4))
    noise = noise.astype("float32")
    expected = reference.generate_image(reference.encode_text(prompt), num_steps=steps,
                                        unconditional_guidance_scale=7.5, diffusion_noise=noise)
    got = ours.text_to_image(prompt, num_steps=steps, guidance_scale=7.5, noise=noise,
                             image_size=SIZE)
    assert got.shape == expected.shape == (1, SIZE, SIZE, 3)
    difference = np.abs(got.astype(int) - expected.astype(int))
    print(f"end to end: max pixel difference {difference.max()} levels")
    assert difference.max() <= 1, f"max pixel difference {difference.max()}"


def test_one_batched_guidance_call_per_step(ours):
    calls = []

    def counting_unet(inputs):
        calls.append(len(inputs[0]))
        return ours.unet_call(inputs)

    noise = np.zeros((2, SIZE // 8, SIZE // 8, 4), "float32")
    context = ours.encode_text(["a", "b"])
    sampler.sample(counting_unet, noise, context, context, num_steps=2, guidance_scale=7.5)
    assert calls == [4, 4]  # one call of batch 2B per step, not two calls of B


def test_weights_for_another_model_are_rejected_with_the_layer_named(ours, weight_files,
                                                                     tmp_path):
    # A decoder file is not an image encoder: the error names the file and a layer.
    with pytest.raises(ValueError, match="kcv_decoder.h5") as error:
        ImageEncoder(SD_V1.vae).load_weights(weight_files["decoder"])
    assert "layer" in str(error.value)
    # A UNet of another size (the test configuration) into SD v1's UNet.
    small = write_legacy_h5(UNet(TEST.unet), tmp_path / "small_unet.h5")
    with pytest.raises(ValueError, match="small_unet.h5"):
        ours.unet.load_weights(small)


def test_v2_unet_file_is_rejected_by_the_v1_unet(ours, tmp_path):
    from keras_cv.src.models.stable_diffusion.diffusion_model import DiffusionModelV2

    v2 = write_legacy_h5(DiffusionModelV2(SIZE, SIZE, 77, download_weights=False),
                         tmp_path / "diffusion_model_v2_1.h5")
    before = ours.unet.weights[5].numpy().copy()
    with pytest.raises(ValueError, match="diffusion_model_v2_1.h5") as error:
        ours.unet.load_weights(v2)
    print(error.value)
    np.testing.assert_array_equal(ours.unet.weights[5].numpy(), before)


def test_text_encoder_config_is_sd_v1():
    assert TextEncoder().config == SD_V1.text_encoder
    assert Decoder().config == SD_V1.vae
