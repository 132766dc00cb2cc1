"""Pretrained weights: download them safely, and read/write the legacy Keras ``.h5`` format.

KerasCV published Stable Diffusion's weights as legacy Keras 2 ``.h5`` files. Such a file
holds no architecture, only arrays, and it loads **by order**: the i-th layer of the model
that has weights receives the i-th layer of the file that has weights, and inside a layer the
weights come in the legacy order ``trainable_weights + non_trainable_weights``. Layer names
are stored but not used, so our own rebuild loads the published files as long as it creates
its layers in the same order with the same shapes. The layout, from the file's root::

    attrs: layer_names (or layer_names0, layer_names1, ... when long), backend, keras_version
    <layer name>/                 one group per layer, also for layers without weights
        attrs: weight_names       the datasets below, in load order
        <weight name>             one dataset per weight (names may contain "/")

A whole-model file (``model.save("x.h5")``) has the same tree under a ``model_weights`` group.
"""

import hashlib
import http.client
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras
import numpy as np
from tqdm import tqdm  # plain text bars: the auto (widget) bars vanish offline


@dataclass(frozen=True)
class WeightFile:
    """One published file: its name in the cache, where it lives, and its SHA-256."""

    name: str  # file name in the cache: the URL's last part, as a browser would save it
    url: str
    sha256: str
    size_hint: int  # approximate bytes (fp32 parameters x 4), for messages and progress bars


_KCV = "https://huggingface.co/fchollet/stable-diffusion/resolve/main/"
_SD2 = "https://huggingface.co/ianstenbit/keras-sd2.1/resolve/main/"
PUBLISHED = {
    key: WeightFile(url.rsplit("/", 1)[1], url, sha256, size)
    for key, url, sha256, size in [
        ("text_encoder", _KCV + "kcv_encoder.h5",
         "4789e63e07c0e54d6a34a29b45ce81ece27060c499a709d556c7755b42bb0dc4", 492_000_000),
        ("unet", _KCV + "kcv_diffusion_model.h5",
         "8799ff9763de13d7f30a683d653018e114ed24a6a819667da4f5ee10f9e805fe", 3_438_000_000),
        ("decoder", _KCV + "kcv_decoder.h5",
         "ad350a65cc8bc4a80c8103367e039a3329b4231c2469a1093869a345f55b1962", 198_000_000),
        ("image_encoder", _KCV + "vae_encoder.h5",
         "c60fb220a40d090e0f86a6ab4c312d113e115c87c40ff75d11ffcf380aab7ebb", 137_000_000),
        ("text_encoder_v2", _SD2 + "text_encoder_v2_1.h5",
         "985002e68704e1c5c3549de332218e99c5b9b745db7171d5f31fcd9a6089f25b", 1_362_000_000),
        ("unet_v2", _SD2 + "diffusion_model_v2_1.h5",
         "c31730e91111f98fe0e2dbde4475d381b5287ebb9672b1821796146a25c5132d", 3_464_000_000),
    ]
}
TIMEOUT_S = 60  # seconds without a byte from the server before we call it unreachable


class WeightsUnavailableError(OSError):
    """A weights file is not in the cache and cannot be downloaded (offline, server down)."""


class WeightsCorruptError(OSError):
    """A weights file's bytes are not the published ones (bad hash, download cut short)."""


def cache_dir() -> Path:
    """Where weights live: ``$SDLEARN_CACHE`` if set, else ``~/.cache/sdlearn``."""
    folder = os.environ.get("SDLEARN_CACHE") or Path.home() / ".cache" / "sdlearn"
    return Path(folder).expanduser()


def _weight_file(name_or_weightfile):
    if isinstance(name_or_weightfile, str) and name_or_weightfile not in PUBLISHED:
        raise ValueError(f"unknown weights {name_or_weightfile!r}; known: {', '.join(PUBLISHED)}")
    return PUBLISHED.get(name_or_weightfile, name_or_weightfile)  # a name, or a WeightFile


def file_sha256(path):
    """The SHA-256 of a file, in hex, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path, write):
    """Write through ``write(temporary_path)``, then ``os.replace`` it onto ``path``: readers
    see the old file or the whole new one, never a half-written one, and any failure (even
    Ctrl-C) removes the temporary file, so nothing unverified is left looking valid."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0o600 would make the file private to us
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# Verified before use, without re-hashing 3.4 GB at every load: once a file's SHA-256 has been
# checked, we atomically write "<file>.sha256" with that hash and the file's size and mtime.
# At use the marker must hold the expected hash and the file's current size and mtime. Anything
# else (no marker, a file copied in by hand, a partial copy, another checkpoint of the same
# size, a changed hash in PUBLISHED) costs one full re-hash, and a match writes a new marker.
def _stamp(path, sha256):
    stat = path.stat()
    return f"{sha256} {stat.st_size} {stat.st_mtime_ns}\n"


def _marker(path):
    return path.with_name(path.name + ".sha256")


def _mark_verified(path, sha256):
    stamp = _stamp(path, sha256)
    atomic_write(_marker(path), lambda tmp: Path(tmp).write_text(stamp))


def _is_verified(path, sha256):
    marker = _marker(path)
    # Compared as bytes: a marker holding junk (not even text) is a mismatch, not an error.
    if marker.is_file() and marker.read_bytes() == _stamp(path, sha256).encode():
        return True
    if file_sha256(path) != sha256:
        return False
    try:
        _mark_verified(path, sha256)
    except OSError:  # a read-only shared cache still works; it just re-hashes at each use
        pass
    return True


def _unavailable(weight_file, path, reason):
    return WeightsUnavailableError(
        f"Weights file {weight_file.name} (~{weight_file.size_hint / 1e6:,.0f} MB) is not "
        f"available: {reason}.\n  Download it from {weight_file.url}\n  and put it at "
        f"{path}\n  (on a machine with internet, `sdlearn download` fetches them all).")


def _fetch(weight_file, path, tmp, progress):
    """Stream the URL into ``tmp``, hashing as the bytes arrive; raise unless they are right."""
    try:  # offline, unknown host, refused, HTTP 404, too slow to answer:
        response = urllib.request.urlopen(weight_file.url, timeout=TIMEOUT_S)
    except (urllib.error.URLError, TimeoutError) as error:
        raise _unavailable(weight_file, path, getattr(error, "reason", error)) from None
    length = int(response.headers.get("Content-Length") or 0)
    digest = hashlib.sha256()
    failed = f"Download of {weight_file.name} from {weight_file.url} failed (nothing was saved)"
    with response, open(tmp, "wb") as f, tqdm(
        total=length or weight_file.size_hint, unit="B", unit_scale=True, unit_divisor=1024,
        desc=weight_file.name, disable=not progress) as bar:
        try:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as error:  # reset, timeout, bad chunking
            raise WeightsCorruptError(f"{failed}: connection lost after {f.tell()} of "
                                      f"{length or '?'} bytes ({error!r})") from None
        # urllib returns b"" when the server hangs up early, so count the bytes ourselves.
        if length and f.tell() != length:
            raise WeightsCorruptError(f"{failed}: expected {length} bytes, received {f.tell()}")
    if digest.hexdigest() != weight_file.sha256:
        raise WeightsCorruptError(f"{failed}: SHA-256 expected {weight_file.sha256}, "
                                  f"got {digest.hexdigest()}")


def download(name_or_weightfile, cache=None, progress=True) -> Path:
    """The verified local copy of a weights file ("unet", ... or a WeightFile), fetched if
    it is missing or wrong. Raises WeightsUnavailableError offline, WeightsCorruptError when
    the bytes received are not the published ones."""
    weight_file = _weight_file(name_or_weightfile)
    path = Path(cache or cache_dir()) / weight_file.name
    if not (path.is_file() and _is_verified(path, weight_file.sha256)):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: _fetch(weight_file, path, tmp, progress))
        _mark_verified(path, weight_file.sha256)  # _fetch checked the hash while streaming
    return path


def weights_path(name, download_missing=False) -> Path:
    """The verified cached path of a published weights file; downloads it if asked to."""
    weight_file = _weight_file(name)
    if download_missing:
        return download(weight_file)
    path = cache_dir() / weight_file.name
    if not path.is_file():
        raise _unavailable(weight_file, path, "it is not in the cache")
    if not _is_verified(path, weight_file.sha256):
        raise WeightsCorruptError(
            f"{path} is not {weight_file.url}: its SHA-256 is not {weight_file.sha256}. "
            "Delete it, or run `sdlearn download` to replace it.")
    return path


# ---- The legacy Keras .h5 layout ----------------------------------------------------------

_HEADER_LIMIT = 64512  # bytes: HDF5 refuses larger attributes, so long name lists are split


def _legacy_weights(layer):
    # Keras 2's order, which the published files use (Keras 3's layer.weights may differ).
    return layer.trainable_weights + layer.non_trainable_weights


def _write_names(group, key, names):
    data = np.array([name.encode() for name in names], dtype=bytes)
    parts = 1
    while max(part.nbytes for part in np.array_split(data, parts)) > _HEADER_LIMIT:
        parts += 1
    if parts == 1:
        group.attrs[key] = data
    else:
        for i, part in enumerate(np.array_split(data, parts)):
            group.attrs[f"{key}{i}"] = part


def _read_names(group, key):
    parts = [group.attrs[key]] if key in group.attrs else []
    while f"{key}{len(parts)}" in group.attrs:  # split as key0, key1, ... when long
        parts.append(group.attrs[f"{key}{len(parts)}"])
    return [n.decode() if isinstance(n, bytes) else str(n) for part in parts for n in part]


def save_h5(model, path):
    """Save ``model``'s weights in the legacy layout above (what KerasCV published)."""
    def write(tmp):
        with h5py.File(tmp, "w") as f:
            _write_names(f, "layer_names", [layer.name for layer in model.layers])
            f.attrs["backend"] = keras.backend.backend().encode()
            f.attrs["keras_version"] = keras.__version__.encode()
            for layer in model.layers:
                group, weights = f.create_group(layer.name), _legacy_weights(layer)
                _write_names(group, "weight_names", [w.path for w in weights])
                for w in weights:
                    group.create_dataset(w.path, data=w.numpy())
    atomic_write(Path(path), write)


def _check_fits(path, model_layers, file_layers):
    """Raise a ValueError naming the first layer (with weights) where file and model differ."""
    def shapes(layers, k):
        return [tuple(w.shape) for w in layers[k][1]] if k < len(layers) else None

    def describe(layers, k):
        return (f"{getattr(layers[k][0], 'name', layers[k][0])!r} with weight shapes "
                f"{shapes(layers, k)}" if k < len(layers) else "nothing")

    k = 0  # layers match by position: find the first position where they differ
    while k < len(model_layers) and shapes(model_layers, k) == shapes(file_layers, k):
        k += 1
    if k == len(model_layers) == len(file_layers):
        return
    raise ValueError(
        f"{path} does not fit this model: the file has {len(file_layers)} layers with weights, "
        f"the model {len(model_layers)}. The first that does not fit is #{k} (counting layers "
        f"with weights): the model has {describe(model_layers, k)}, the file has "
        f"{describe(file_layers, k)}.")


def load_h5(model, path):
    """Load a legacy ``.h5`` weights file into ``model``, by order (see the module docstring).

    Every layer's count and shapes are compared before any weight is assigned, so a file for
    another architecture leaves the model unchanged. The values are then read one layer at a
    time (not all first: that would double the memory for the 3.4 GB UNet). A truncated file
    is refused when opened, as HDF5 compares the file's size with the size it records; flipped
    bytes inside the data are what the SHA-256 check at download is for.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {path} " + ("is a directory" if path.is_dir() else
                                                    "does not exist"))
    model_layers = [(layer, w) for layer in model.layers if (w := _legacy_weights(layer))]
    try:
        with h5py.File(path, "r") as f:
            whole_model = "layer_names" not in f.attrs and "model_weights" in f
            root = f["model_weights"] if whole_model else f
            file_layers = [(name, [root[name][w] for w in weight_names])
                           for name in _read_names(root, "layer_names")
                           if (weight_names := _read_names(root[name], "weight_names"))]
            _check_fits(path, model_layers, file_layers)
            for (_, weights), (_, datasets) in zip(model_layers, file_layers):
                for weight, dataset in zip(weights, datasets):
                    weight.assign(dataset[()])
    except (OSError, KeyError, RuntimeError) as error:  # h5py's ways of saying "corrupt"
        raise ValueError(f"{path} is not a readable Keras .h5 weights file "
                         f"(truncated or corrupt?): {error}") from None
