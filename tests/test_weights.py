"""Tests for sdlearn.weights: the legacy .h5 format, and safe downloads from a local server."""

import hashlib
import http.server
import os
import socket
import threading

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from sdlearn import weights
from sdlearn.weights import (
    PUBLISHED, WeightFile, WeightsCorruptError, WeightsUnavailableError, cache_dir, download,
    load_h5, save_h5, weights_path,
)


# ---- small models covering the layer kinds the SD models use -------------------------------

class Block(keras.layers.Layer):
    """A custom layer with sublayers and a scalar weight. BatchNorm comes first, so its
    non-trainable statistics sit between trainable weights in ``layer.weights``: only the
    legacy order (trainable, then non-trainable) agrees with Keras's own .h5 writer."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.norm = keras.layers.BatchNormalization()
        self.dense = keras.layers.Dense(width)

    def build(self, input_shape):
        self.norm.build(input_shape)
        self.dense.build(input_shape)
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, x):
        return self.dense(self.norm(x)) * self.scale


def sequential_model():
    return keras.Sequential([
        keras.Input((6, 6, 3)),
        keras.layers.Conv2D(8, 3, padding="same"),
        keras.layers.GroupNormalization(groups=4),
        keras.layers.Flatten(),  # no weights: skipped by the by-order matching
        keras.layers.Dense(8),
        Block(4),
        keras.layers.Dense(2),
    ])


def functional_model():
    tokens, image = keras.Input((5,), dtype="int32"), keras.Input((6, 6, 3))
    x = keras.layers.Embedding(20, 8)(tokens)
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    y = keras.layers.Conv2D(8, 3, padding="same")(image)
    y = keras.layers.GroupNormalization(groups=4)(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    z = Block(4)(keras.layers.Concatenate()([x, y]))
    return keras.Model([tokens, image], z)


def inputs_for(model):
    rng = np.random.default_rng(1)
    if len(model.inputs) == 2:
        return [rng.integers(0, 20, (2, 5)).astype("int32"), rng.normal(size=(2, 6, 6, 3))]
    return rng.normal(size=(2, 6, 6, 3)).astype("float32")


def randomized(model, seed=0):
    """Every weight random (BatchNorm statistics too), so a load that skips one shows up."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.uniform(0.5, 1.5, size=w.shape).astype("float32"))
    return model


def values(model):
    return [w.numpy() for w in model.weights]


def assert_same_weights(a, b):
    assert len(a.weights) == len(b.weights)
    for x, y in zip(values(a), values(b)):
        np.testing.assert_array_equal(x, y)


def assert_same_model(a, b):
    assert_same_weights(a, b)
    np.testing.assert_array_equal(a.predict(inputs_for(a), verbose=0),
                                  b.predict(inputs_for(b), verbose=0))


MODELS = [sequential_model, functional_model]


@pytest.mark.parametrize("build", MODELS)
def test_round_trip(build, tmp_path):
    source, target = randomized(build()), build()
    save_h5(source, tmp_path / "w.h5")
    assert not np.array_equal(values(source)[0], values(target)[0])
    load_h5(target, tmp_path / "w.h5")
    assert_same_model(source, target)
    assert [p.name for p in tmp_path.iterdir()] == ["w.h5"]  # no temporary file left


@pytest.mark.parametrize("build", MODELS)
def test_loads_files_written_by_keras(build, tmp_path):
    source, target = randomized(build()), build()
    with h5py.File(tmp_path / "keras.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    load_h5(target, tmp_path / "keras.h5")
    assert_same_model(source, target)


@pytest.mark.parametrize("build", MODELS)
def test_keras_loads_our_files(build, tmp_path):
    source, target = randomized(build()), build()
    save_h5(source, tmp_path / "ours.h5")
    target.load_weights(str(tmp_path / "ours.h5"))
    assert_same_model(source, target)


def test_loads_whole_model_file(tmp_path):
    """``model.save("x.h5")`` nests the weights under a ``model_weights`` group."""
    def build():
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
                                 keras.layers.LayerNormalization(), keras.layers.Dense(2)])
    source, target = randomized(build()), build()
    source.save(tmp_path / "model.h5")
    with h5py.File(tmp_path / "model.h5") as f:
        assert "model_weights" in f and "layer_names" not in f.attrs
    load_h5(target, tmp_path / "model.h5")
    assert_same_weights(source, target)


def test_loads_a_keras2_style_file(tmp_path):
    """Written by hand as Keras 2 wrote KerasCV's files: fixed-width byte names, weights named
    "layer/kernel:0", and layers without weights listed with an empty weight_names."""
    model = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(10, 4),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    rng = np.random.default_rng(0)
    arrays = {"embedding": {"embedding/embeddings:0": rng.normal(size=(10, 4))},
              "flatten": {},
              "dense": {"dense/kernel:0": rng.normal(size=(12, 2)), "dense/bias:0": [1.0, 2.0]}}
    with h5py.File(tmp_path / "keras2.h5", "w") as f:
        f.attrs["layer_names"] = np.array([b"embedding", b"flatten", b"dense"])
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.10.0"
        for layer, weights in arrays.items():
            group = f.create_group(layer)
            group.attrs["weight_names"] = np.array([n.encode() for n in weights], dtype=bytes)
            for name, value in weights.items():
                group.create_dataset(name, data=np.asarray(value, "float32"))
    load_h5(model, tmp_path / "keras2.h5")
    expected = [a for weights in arrays.values() for a in weights.values()]
    for weight, value in zip(model.weights, expected):
        np.testing.assert_allclose(weight.numpy(), value, rtol=1e-6)


def test_long_layer_name_lists_are_split(tmp_path):
    """Past 64 KB, the names are stored as layer_names0, layer_names1, ... (HDF5's limit)."""
    def build():
        return keras.Sequential([keras.Input((2,))] + [
            keras.layers.Dense(2, name=f"{i:03d}" + "x" * 4000) for i in range(18)])
    source, target, by_keras = randomized(build()), build(), build()
    save_h5(source, tmp_path / "long.h5")
    with h5py.File(tmp_path / "long.h5") as f:
        assert "layer_names" not in f.attrs and "layer_names1" in f.attrs
    load_h5(target, tmp_path / "long.h5")
    by_keras.load_weights(str(tmp_path / "long.h5"))
    assert_same_weights(source, target)
    assert_same_weights(source, by_keras)


# ---- clear errors, and a failed load changes nothing -------------------------------------

def dense_stack(*widths, names=None):
    names = names or [f"d{i}" for i in range(len(widths))]
    return keras.Sequential([keras.Input((8,))] + [
        keras.layers.Dense(w, name=n) for w, n in zip(widths, names)])


def failed_load(model, path):
    """Load, expect a ValueError, check the model kept its weights; return the message."""
    before = values(model)
    with pytest.raises(ValueError) as error:
        load_h5(model, path)
    for old, new in zip(before, values(model)):
        np.testing.assert_array_equal(old, new)
    assert str(path) in str(error.value)
    return str(error.value)


@pytest.fixture
def saved_stack(tmp_path):
    path = tmp_path / "stack.h5"
    save_h5(randomized(dense_stack(8, 8, 2)), path)
    return path


def test_other_width_names_the_layer_and_shapes(saved_stack):
    message = failed_load(dense_stack(8, 16, 2), saved_stack)
    assert "the file has 3 layers with weights, the model 3" in message
    assert "#1" in message and message.count("'d1'") == 2
    assert "(8, 16)" in message and "(8, 8)" in message


def test_extra_layer_names_the_first_that_does_not_fit(saved_stack):
    model = dense_stack(8, 16, 8, 2, names=["d0", "extra", "d1", "d2"])
    message = failed_load(model, saved_stack)
    assert "the file has 3 layers with weights, the model 4" in message
    assert "#1" in message and "'extra'" in message and "'d1'" in message


def test_extra_layer_at_the_end(saved_stack):
    message = failed_load(dense_stack(8, 8, 2, 2), saved_stack)
    assert "the file has 3 layers with weights, the model 4" in message
    assert "#3" in message and "the file has nothing" in message


def test_missing_layer(saved_stack):
    message = failed_load(dense_stack(8, 8), saved_stack)
    assert "the file has 3 layers with weights, the model 2" in message
    assert "#2" in message and "the model has nothing" in message and "'d2'" in message


@pytest.mark.parametrize("keep", [0, 10, 0.5, 0.9, -1])
def test_truncated_file(saved_stack, keep):
    data = saved_stack.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    saved_stack.write_bytes(data[:cut])
    message = failed_load(randomized(dense_stack(8, 8, 2), seed=3), saved_stack)
    assert "truncated or corrupt" in message


def test_garbage_and_missing_files(tmp_path):
    (tmp_path / "garbage.h5").write_bytes(np.random.default_rng(0).bytes(5000))
    assert "not a readable" in failed_load(dense_stack(8, 2), tmp_path / "garbage.h5")
    assert "does not exist" in failed_load(dense_stack(8, 2), tmp_path / "missing.h5")


# ---- downloads, against a local server -------------------------------------------------

PAYLOAD = np.random.default_rng(7).bytes(2_500_000)  # several 1 MiB reads
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path; under /half/ it announces all of it, sends half, hangs up."""

    def do_GET(self):
        self.server.requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        if self.path.startswith("/half/"):
            self.close_connection = True
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
        else:
            self.wfile.write(PAYLOAD)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(weights, "TIMEOUT_S", 5)  # a hung test fails in seconds, not minutes
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def served(server, path="tiny.h5", sha256=SHA):
    host, port = server.server_address[:2]
    return WeightFile(path.rsplit("/", 1)[-1], f"http://{host}:{port}/{path}", sha256, 2_500_000)


def test_download_verifies_and_caches(server, tmp_path):
    weight_file = served(server)
    path = download(weight_file, cache=tmp_path, progress=False)
    assert path == tmp_path / "tiny.h5" and path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.h5", "tiny.h5.sha256"]
    assert download(weight_file, cache=tmp_path, progress=False) == path
    assert len(server.requests) == 1  # the second call trusted the marker


def test_changed_file_is_rehashed_and_replaced(server, tmp_path):
    weight_file = served(server)
    path = download(weight_file, cache=tmp_path, progress=False)
    with open(path, "r+b") as f:  # same size, other bytes: only the mtime tells
        f.write(b"\0" * 16)
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))
    assert download(weight_file, cache=tmp_path, progress=False).read_bytes() == PAYLOAD
    assert len(server.requests) == 2


def test_wrong_hash_leaves_nothing(server, tmp_path):
    weight_file = served(server, sha256="0" * 64)
    with pytest.raises(WeightsCorruptError) as error:
        download(weight_file, cache=tmp_path, progress=False)
    message = str(error.value)
    assert "tiny.h5" in message and weight_file.url in message
    assert "0" * 64 in message and SHA in message
    assert list(tmp_path.iterdir()) == []


def test_connection_cut_halfway_leaves_nothing(server, tmp_path):
    weight_file = served(server, path="half/tiny.h5")
    with pytest.raises(WeightsCorruptError) as error:
        download(weight_file, cache=tmp_path, progress=False)
    message = str(error.value)
    assert weight_file.url in message
    assert f"expected {len(PAYLOAD)} bytes, received {len(PAYLOAD) // 2}" in message
    assert list(tmp_path.iterdir()) == []


def test_unreachable_says_where_to_put_the_file(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    weight_file = WeightFile("kcv_decoder.h5", f"http://127.0.0.1:{port}/x.h5", SHA, 1000)
    monkeypatch.setenv("SDLEARN_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as error:
        weights_path(weight_file, download_missing=True)
    message = str(error.value)
    assert weight_file.url in message and str(tmp_path / "kcv_decoder.h5") in message
    assert "sdlearn download" in message
    assert list(tmp_path.iterdir()) == []
    assert isinstance(error.value, OSError)


def test_cache_dir_and_missing_published_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SDLEARN_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    with pytest.raises(WeightsUnavailableError) as error:
        weights_path("unet")
    message = str(error.value)
    assert PUBLISHED["unet"].url in message and "sdlearn download" in message
    assert str(tmp_path / "cache" / "kcv_diffusion_model.h5") in message
    monkeypatch.delenv("SDLEARN_CACHE")
    assert cache_dir() == cache_dir().home() / ".cache" / "sdlearn"


def test_file_put_in_place_by_hand(tmp_path, monkeypatch):
    monkeypatch.setenv("SDLEARN_CACHE", str(tmp_path))
    weight_file = WeightFile("hand.h5", "http://127.0.0.1:9/hand.h5", SHA, len(PAYLOAD))
    (tmp_path / "hand.h5").write_bytes(PAYLOAD[:-1] + b"!")
    with pytest.raises(WeightsCorruptError, match="hand.h5"):
        weights_path(weight_file)
    (tmp_path / "hand.h5").write_bytes(PAYLOAD)
    assert weights_path(weight_file) == tmp_path / "hand.h5"  # hashed once, marker written
    assert (tmp_path / "hand.h5.sha256").read_text().startswith(SHA)


def test_a_damaged_marker_costs_a_re_hash_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SDLEARN_CACHE", str(tmp_path))
    weight_file = WeightFile("hand.h5", "http://127.0.0.1:9/hand.h5", SHA, len(PAYLOAD))
    (tmp_path / "hand.h5").write_bytes(PAYLOAD)
    (tmp_path / "hand.h5.sha256").write_bytes(b"\xff\xfe not text")
    assert weights_path(weight_file) == tmp_path / "hand.h5"  # re-hashed: the file is good
    assert (tmp_path / "hand.h5.sha256").read_text().startswith(SHA)  # and a new marker


def test_load_h5_says_a_folder_is_not_a_weights_file(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        load_h5(keras.Sequential([keras.layers.Dense(2)]), tmp_path)


def test_registry():
    assert set(PUBLISHED) == {"text_encoder", "unet", "decoder", "image_encoder",
                              "text_encoder_v2", "unet_v2"}
    for weight_file in PUBLISHED.values():
        assert len(weight_file.sha256) == 64 and int(weight_file.sha256, 16) >= 0
        assert weight_file.url.startswith("https://huggingface.co/")
        assert weight_file.url.endswith("/" + weight_file.name)
    assert PUBLISHED["unet"].sha256.startswith("8799ff97")
    with pytest.raises(ValueError, match="known: text_encoder"):
        weights_path("vae")


def test_read_only_cache_still_verifies(tmp_path, monkeypatch):
    """A shared cache we cannot write to: no marker, so the file is hashed at each use."""
    def refuse(path, write):
        raise PermissionError(f"read-only: {path}")
    monkeypatch.setattr(weights, "atomic_write", refuse)
    monkeypatch.setenv("SDLEARN_CACHE", str(tmp_path))
    (tmp_path / "ro.h5").write_bytes(PAYLOAD)
    weight_file = WeightFile("ro.h5", "http://127.0.0.1:9/ro.h5", SHA, len(PAYLOAD))
    assert weights_path(weight_file) == tmp_path / "ro.h5"
    assert list(tmp_path.iterdir()) == [tmp_path / "ro.h5"]
