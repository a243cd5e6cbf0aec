"""Datasets for scae-np: MNIST, Fashion-MNIST (gzip IDX files) and CIFAR-10 (python-pickle batches).

Public API::

    ds = load_dataset("mnist", data_dir="../shared/data/mnist")   # -> Dataset
    ds.train_x      # (60000, 1, 28, 28) float32 in [0, 1], C-contiguous, read-only
    ds.train_y      # (60000,) int64
    tr, va = split_indices(ds.train_y, n_train=1000, n_val=1000, seed=0)

Where the files are looked for (first folder that holds a complete set wins):

1. the ``data_dir`` argument (the ``--data-dir`` option): ``<data_dir>/<name>/`` or ``<data_dir>`` itself;
2. the environment variable ``SCAE_NP_DATA_DIR`` (same two forms);
3. the user cache ``$XDG_CACHE_HOME/scae-np/<name>`` (default ``~/.cache/scae-np/<name>``);
4. Fashion-MNIST only: ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).

A folder that holds the files directly but whose labels file is another known dataset's (MNIST files
found while asking for Fashion-MNIST) is skipped. When no folder is complete and ``download=True``,
the missing files are downloaded from the usual mirrors into the first folder that holds some of the
files, else into the user cache, each to a temporary file that is md5-checked and then renamed into
place (a killed download never leaves a half file under the real name).

Every file is md5-checked on every load (about 30 ms for MNIST) and parsed strictly (gzip stream,
IDX magic number, dimensions, counts, label range; CIFAR pickles through an unpickler that only
builds numpy arrays). Any problem raises :class:`DataError` naming the file, what is wrong, and
where to put a good copy. Parsing is numpy only (``gzip`` + ``np.frombuffer``): the 60k MNIST
training set loads in well under a second.

Tests never download: the network is reached only through the module attribute ``_urlopen``
(``urllib.request.urlopen``), which tests replace with a fake.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pathlib
import pickle
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass

import numpy as np

from ._atomic import atomic_open

__all__ = ["DATASETS", "DataError", "Dataset", "load_dataset", "resolve_data_dir", "split_indices",
           "ENV_VAR"]

DATASETS = ("mnist", "fashion-mnist", "cifar10")
ENV_VAR = "SCAE_NP_DATA_DIR"
DEBIAN_FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")

# The network is reached only through this name (tests replace it; they never download).
_urlopen = urllib.request.urlopen
_DOWNLOAD_TIMEOUT_S = 60


class DataError(RuntimeError):
    """A dataset file is missing, unreadable, truncated, corrupt or not the official one."""


@dataclass(frozen=True)
class Dataset:
    """One dataset in memory. Images are (N, C, H, W) float32 in [0, 1]; labels (N,) int64.
    The arrays are read-only (index or copy them before changing them)."""
    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple

    def __repr__(self):
        return (f"Dataset({self.name!r}, train_x={self.train_x.shape}, test_x={self.test_x.shape}, "
                f"classes={len(self.classes)})")


@dataclass(frozen=True)
class _Spec:
    """What a dataset's files are. ``files`` maps file name -> accepted md5s of the file as stored."""
    name: str
    kind: str                    # "idx" or "cifar"
    files: tuple                 # ((file name, (md5, ...)), ...)
    mirrors: tuple               # base URLs (idx: + file name) or full archive URLs (cifar)
    n_train: int
    n_test: int
    shape: tuple                 # (C, H, W)
    classes: tuple
    archive: tuple = ()          # cifar: (archive file name, md5)

    def md5s(self, fname):
        return dict(self.files)[fname]

    @property
    def file_names(self):
        return tuple(f for f, _ in self.files)


_IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))

SPECS = {
    "mnist": _Spec(
        name="mnist", kind="idx",
        files=(("train-images-idx3-ubyte.gz", ("f68b3c2dcbeaaa9fbdd348bbdeb94873",)),
               ("train-labels-idx1-ubyte.gz", ("d53e105ee54ea40749a09fcbcd1e9432",)),
               ("t10k-images-idx3-ubyte.gz", ("9fb629c4189551a2d022fa330f9573f3",)),
               ("t10k-labels-idx1-ubyte.gz", ("ec29112dd5afa0611ce80d1b7f02629c",))),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        n_train=60000, n_test=10000, shape=(1, 28, 28),
        classes=tuple(str(i) for i in range(10))),
    # Fashion-MNIST: the official md5s (Zalando's S3 files), then the md5s of Debian's
    # dataset-fashion-mnist 0.0~git20200523.55506a9-1 copy (the same images, re-gzipped).
    "fashion-mnist": _Spec(
        name="fashion-mnist", kind="idx",
        files=(("train-images-idx3-ubyte.gz", ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                                "cf8536b0aa1a6ac5fa3f23001093305c")),
               ("train-labels-idx1-ubyte.gz", ("25c81989df183df01b3e8a0aad5dffbe",
                                                "10bea18fdb374794d4bb42e356e600c9")),
               ("t10k-images-idx3-ubyte.gz", ("bef4ecab320f06d8554ea6380940ec79",
                                               "f78720b4224f21cce2f2ccf2d7a94c9a")),
               ("t10k-labels-idx1-ubyte.gz", ("bb300cfdad3c16e7a12a480ee83cd310",
                                               "0d30e22e447f3c33dab9ed536400ac01"))),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        n_train=60000, n_test=10000, shape=(1, 28, 28),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot")),
    # CIFAR-10: md5s of the official archive and of its batch files (as torchvision checks them).
    "cifar10": _Spec(
        name="cifar10", kind="cifar",
        files=(("data_batch_1", ("c99cafc152244af753f735de768cd75f",)),
               ("data_batch_2", ("d4bba439e000b95fd0a9bffe97cbabec",)),
               ("data_batch_3", ("54ebc095f3ab1f0389bbae665268c751",)),
               ("data_batch_4", ("634d18415352ddfa80567beed471001a",)),
               ("data_batch_5", ("482c414d41f54cd18b22e5b47cb7c3cb",)),
               ("test_batch", ("40351d587109b95175f43aff81a1287e",)),
               ("batches.meta", ("5ff9c542aee3614f3951f8cda6e48888",))),
        mirrors=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        n_train=50000, n_test=10000, shape=(3, 32, 32),
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"),
        archive=("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")),
}


def _spec(name):
    if name not in SPECS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return SPECS[name]


# --------------------------------------------------------------------------- where the files are

def _cache_dir(name):
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "scae-np" / name


def _md5_bytes(b):
    return hashlib.md5(b).hexdigest()


def _md5_file(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _holds(spec, d):
    """How much of ``spec``'s files folder ``d`` holds: 'complete', 'partial' or None."""
    if not d.is_dir():
        return None
    if spec.kind == "cifar":
        for sub in (d, d / CIFAR_DIR):
            have = [(sub / f).is_file() for f in spec.file_names]
            if all(have):
                return "complete"
        if (d / spec.archive[0]).is_file():
            return "complete"
        if any((d / CIFAR_DIR / f).is_file() or (d / f).is_file() for f in spec.file_names):
            return "partial"
        return None
    have = [(d / f).is_file() for f in spec.file_names]
    if all(have):
        return "complete"
    return "partial" if any(have) else None


def _other_dataset(spec, d):
    """The name of the other dataset whose IDX files ``d`` holds (recognised by the md5 of the
    small training-labels file; the IDX headers of MNIST and Fashion-MNIST are identical), e.g.
    'mnist' for the MNIST folder while looking for Fashion-MNIST; else None."""
    if spec.kind != "idx":
        return None
    f = d / "train-labels-idx1-ubyte.gz"
    if not f.is_file():
        return None
    try:
        got = _md5_file(f)
    except OSError:
        return None
    if got in spec.md5s(f.name):
        return None
    return next((s.name for s in SPECS.values()
                 if s.name != spec.name and s.kind == "idx" and got in s.md5s(f.name)), None)



def _candidates(name, data_dir=None):
    """The folders searched, in order, as (folder, where-it-came-from) pairs."""
    spec = _spec(name)
    out = []
    for root, origin in ((data_dir, "data_dir"), (os.environ.get(ENV_VAR) or None, ENV_VAR)):
        if root is None:
            continue
        root = pathlib.Path(root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"{origin} {str(root)!r} is not a folder. Point it at a folder that holds the "
                f"{name} files (or at a folder with a {name}/ subfolder), or leave it out to use "
                f"{_cache_dir(name)}.")
        out.append((root / name, origin))
        out.append((root, origin))
    out.append((_cache_dir(name), "user cache"))
    if spec.name == "fashion-mnist":
        out.append((DEBIAN_FASHION_DIR, "Debian dataset-fashion-mnist"))
    return out


def resolve_data_dir(name, data_dir=None):
    """The folder that holds (or will receive) dataset ``name``'s files.

    The first searched folder (see the module docstring) with a complete set of files; else the
    first one with some of them (the missing ones are downloaded there); else the user cache.
    """
    return _resolve(name, data_dir)[0]


def _resolve(name, data_dir=None):
    """``resolve_data_dir``'s folder, and the searched folders skipped because they hold
    another dataset's files, as (folder, where-it-came-from, that dataset) triples."""
    spec = _spec(name)
    cands = _candidates(name, data_dir)
    partial, skipped = None, []
    for d, origin in cands:
        state = _holds(spec, d)
        if state is None:
            continue
        other = _other_dataset(spec, d)
        if other is not None:
            skipped.append((d, origin, other))
            continue
        if state == "complete":
            return d, skipped
        if partial is None:
            partial = d
    return (partial if partial is not None else _cache_dir(name)), skipped


def _searched(name, data_dir):
    try:
        return ", ".join(str(d) for d, _ in _candidates(name, data_dir))
    except DataError:
        return str(data_dir)


# --------------------------------------------------------------------------------- downloading

def _download(url, dest, md5s):
    """Stream ``url`` into a temporary file beside ``dest``, check its md5, rename it into place."""
    h = hashlib.md5()
    with atomic_open(dest) as out, _urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
        for chunk in iter(lambda: resp.read(1 << 20), b""):
            h.update(chunk)
            out.write(chunk)
        got = h.hexdigest()
        if got not in md5s:   # raising inside the block discards the temporary file
            raise DataError(f"downloaded {url} but its md5 is {got}, expected {md5s[0]}")


def _fetch_file(spec, fname, dest_dir, md5s, urls):
    errors = []
    for url in urls:
        print(f"scae-np: downloading {url} -> {dest_dir / fname}", file=sys.stderr, flush=True)
        try:
            _download(url, dest_dir / fname, md5s)
            return
        except DataError as e:
            errors.append(str(e))
        except (OSError, ValueError) as e:   # URLError, HTTPError, timeouts, disk full ...
            errors.append(f"{url}: {type(e).__name__}: {e}")
    raise DataError(
        f"{spec.name}: could not download {fname}:\n  " + "\n  ".join(errors) +
        f"\nDownload it yourself from {urls[0]} and put it in {dest_dir} "
        f"(or in a folder given by --data-dir / ${ENV_VAR}).")


def _ensure_files(spec, d, download, data_dir):
    """Make sure folder ``d`` holds the files (downloading them when allowed)."""
    if _holds(spec, d) == "complete":
        return
    if spec.kind == "cifar":
        missing = [spec.archive[0]]
    else:
        missing = [f for f in spec.file_names if not (d / f).is_file()]
    if not download:
        raise DataError(
            f"{spec.name}: missing {', '.join(missing)} (looked in {_searched(spec.name, data_dir)}); "
            f"downloading is off. Put the official file(s) in {d}, or point --data-dir / "
            f"${ENV_VAR} at a folder that holds them, or allow downloading.")
    for fname in missing:
        if spec.kind == "cifar":
            _fetch_file(spec, fname, d, (spec.archive[1],), spec.mirrors)
        else:
            _fetch_file(spec, fname, d, spec.md5s(fname), [m + fname for m in spec.mirrors])


# ------------------------------------------------------------------------------------- parsing

def _where_to_put(spec, path):
    return (f"Put a good copy of the official {path.name} (md5 {spec.md5s(path.name)[0]}) at "
            f"{path} (or delete it and load again to download it).")


def _bad(spec, path, what):
    return DataError(f"{spec.name}: {path}: {what}. {_where_to_put(spec, path)}")


def _read(spec, path):
    """The bytes of ``path``, or a DataError that names the file and what to do."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise _bad(spec, path, f"cannot be read ({e})") from e


def _check_md5(spec, path, raw, parsed=True):
    """Refuse ``raw`` (the bytes of ``path``) unless its md5 is an accepted one. Callers parse
    first (``parsed``), so that a truncated or corrupt file gets the more precise message."""
    got, accepted = _md5_bytes(raw), spec.md5s(path.name)
    if got not in accepted:
        why = " (it parses, but it is not the official file)" if parsed else ""
        raise _bad(spec, path, f"md5 is {got}, expected {accepted[0]}{why}")


def _parse_idx(spec, path, raw, ndim, count):
    try:
        b = gzip.decompress(raw)
    except EOFError as e:
        raise _bad(spec, path, "the gzip stream is truncated (the file was cut short)") from e
    except (OSError, zlib.error) as e:
        raise _bad(spec, path, f"not a valid gzip file ({e})") from e
    if len(b) < 4 + 4 * ndim:
        raise _bad(spec, path, f"IDX header is cut short ({len(b)} bytes after gunzip)")
    if b[0] != 0 or b[1] != 0 or b[2] != 0x08 or b[3] != ndim:
        raise _bad(spec, path, f"bad IDX magic number {b[:4].hex()} (expected 000008{ndim:02x}: "
                               f"unsigned bytes, {ndim} dimension(s))")
    dims = tuple(int(v) for v in np.frombuffer(b, ">u4", count=ndim, offset=4))
    want = (count,) + tuple(spec.shape[1:]) if ndim == 3 else (count,)
    if dims != want:
        raise _bad(spec, path, f"IDX dimensions are {dims}, expected {want}")
    n = int(np.prod(dims))
    body = len(b) - 4 - 4 * ndim
    if body != n:
        raise _bad(spec, path, f"IDX data holds {body} bytes, the header promises {n} "
                               f"({'truncated' if body < n else 'trailing bytes'})")
    return np.frombuffer(b, np.uint8, count=n, offset=4 + 4 * ndim).reshape(dims)


def _load_idx(spec, d):
    arrays = {}
    for fname in spec.file_names:
        path = d / fname
        raw = _read(spec, path)
        is_img = "images" in fname
        count = spec.n_train if fname.startswith("train") else spec.n_test
        a = _parse_idx(spec, path, raw, 3 if is_img else 1, count)
        _check_md5(spec, path, raw)
        if not is_img and a.size and a.max() >= len(spec.classes):
            raise _bad(spec, path, f"label {int(a.max())} out of range 0..{len(spec.classes) - 1}")
        arrays[fname] = a
    x_tr, y_tr, x_te, y_te = (arrays[f] for f in _IDX_NAMES)
    return (_to_float(x_tr[:, None]), _to_labels(y_tr), _to_float(x_te[:, None]), _to_labels(y_te),
            spec.classes)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of lists, strings and numpy arrays) and nothing else:
    a pickle that names any other class or function is refused instead of run."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"),
                ("_codecs", "encode")}   # how protocol-2 pickles written by Python 3 store bytes

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(spec, path, raw):
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any failure here means a corrupt file
        raise _bad(spec, path, f"not a readable CIFAR python pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise _bad(spec, path, f"holds a {type(obj).__name__}, expected a dict")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_batch(spec, path, raw):
    obj = _unpickle(spec, path, raw)
    if "data" not in obj or "labels" not in obj:
        raise _bad(spec, path, f"keys {sorted(obj)} lack 'data' and 'labels'")
    x = np.asarray(obj["data"])
    y = np.asarray(obj["labels"])
    c, h, w = spec.shape
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != c * h * w:
        raise _bad(spec, path, f"'data' is {x.dtype} {x.shape}, expected uint8 (N, {c * h * w})")
    if y.ndim != 1 or len(y) != len(x):
        raise _bad(spec, path, f"{len(y)} labels for {len(x)} images")
    if len(y) and (y.min() < 0 or y.max() >= len(spec.classes)):
        raise _bad(spec, path, f"labels outside 0..{len(spec.classes) - 1}")
    return x.reshape(-1, c, h, w), y


def _cifar_sources(spec, d):
    """The folder that holds all the batch files (``d`` or ``d/cifar-10-batches-py``), or None."""
    for sub in (d, d / CIFAR_DIR):
        if all((sub / f).is_file() for f in spec.file_names):
            return sub
    return None


def _extract_cifar(spec, d):
    """Read the batch files out of the official archive in ``d`` (md5-checked); try to leave them
    extracted in ``d/cifar-10-batches-py`` (atomically: temp folder + rename) for next time."""
    arch = d / spec.archive[0]
    raw_arch = _read(spec, arch)
    got = _md5_bytes(raw_arch)
    if got != spec.archive[1]:
        raise DataError(f"{spec.name}: {arch}: md5 is {got}, expected "
                        f"{spec.archive[1]} (truncated or not the official archive). Put a good copy "
                        f"of cifar-10-python.tar.gz at {arch}, or delete it to download it again.")
    out = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw_arch), mode="r:gz") as tar:
            for f in spec.file_names:
                m = tar.extractfile(f"{CIFAR_DIR}/{f}")
                if m is None:
                    raise KeyError(f)
                out[f] = m.read()
    except (tarfile.TarError, KeyError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{spec.name}: {arch}: not a readable CIFAR-10 archive ({e}). Put a good "
                        f"copy of cifar-10-python.tar.gz at {arch}.") from e
    try:   # cache the extracted batches; a read-only folder is fine, we have them in memory
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=".cifar-extract.", dir=d))
        try:
            for f, b in out.items():
                (tmp / f).write_bytes(b)
            if not (d / CIFAR_DIR).exists():
                u = os.umask(0o022)
                os.umask(u)
                os.chmod(tmp, 0o777 & ~u)         # mkdtemp makes 0700
                os.replace(tmp, d / CIFAR_DIR)
        finally:
            if tmp.exists():
                for p in tmp.iterdir():
                    p.unlink()
                tmp.rmdir()
    except OSError:
        pass
    return out, d / CIFAR_DIR


def _load_cifar(spec, d):
    sub = _cifar_sources(spec, d)
    if sub is not None:
        raws = {f: _read(spec, sub / f) for f in spec.file_names}
    else:
        raws, sub = _extract_cifar(spec, d)
    parts = {}
    for f in spec.file_names:
        path, raw = sub / f, raws[f]
        if f == "batches.meta":
            meta = _unpickle(spec, path, raw)
            names = meta.get("label_names")
            _check_md5(spec, path, raw, parsed=False)
            classes = tuple(str(n) for n in names) if names and len(names) == len(spec.classes) \
                else spec.classes
            continue
        parts[f] = _cifar_batch(spec, path, raw)
        _check_md5(spec, path, raw)
    x_tr = np.concatenate([parts[f][0] for f in _CIFAR_TRAIN])
    y_tr = np.concatenate([parts[f][1] for f in _CIFAR_TRAIN])
    x_te, y_te = parts["test_batch"]
    for what, n, want in (("training", len(x_tr), spec.n_train), ("test", len(x_te), spec.n_test)):
        if n != want:
            raise DataError(f"{spec.name}: {sub}: the batches hold {n} {what} images, expected "
                            f"{want}. Put a good copy of the official batches in {sub}.")
    return _to_float(x_tr), _to_labels(y_tr), _to_float(x_te), _to_labels(y_te), classes


def _to_float(u8):
    x = np.empty(u8.shape, np.float32)
    np.divide(u8, np.float32(255.0), out=x, casting="unsafe")   # correctly rounded u/255
    x.setflags(write=False)
    return x


def _to_labels(y):
    y = np.ascontiguousarray(y, dtype=np.int64)
    y.setflags(write=False)
    return y


def load_dataset(name, data_dir=None, download=True) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) into memory.

    ``data_dir``: a folder that holds the files directly (``../shared/data/mnist``) or one with a
    ``<name>/`` subfolder. Missing files are downloaded (md5-checked, atomically) when ``download``
    is true; every problem raises :class:`DataError`.
    """
    spec = _spec(name)
    d, skipped = _resolve(name, data_dir)
    # A folder given on purpose (data_dir, $SCAE_NP_DATA_DIR) that holds another dataset's
    # files: say so, rather than report the files as missing or download them elsewhere.
    given = [(f, o, other) for f, o, other in skipped if o in ("data_dir", ENV_VAR)]
    if given and _holds(spec, d) != "complete":
        f, origin, other = given[0]
        opt = "--data-dir" if origin == "data_dir" else f"${ENV_VAR}"
        raise DataError(
            f"{f} holds the {other} files, not the {name} ones (the md5 of its "
            f"train-labels-idx1-ubyte.gz is {other}'s). Ask for {other} to use them (python -m "
            f"scae_np.run {other} ...), or point {opt} at a folder with the {name} files.")
    if data_dir is not None:
        given_dir = pathlib.Path(data_dir).expanduser()
        if d not in (given_dir, given_dir / name):
            other = next((o for f, _, o in given if f in (given_dir, given_dir / name)), None)
            held = f" (it holds the {other} files)" if other else ""
            print(f"scae-np: no {name} files in {given_dir}{held}; using {d}", file=sys.stderr,
                  flush=True)
    _ensure_files(spec, d, download, data_dir)
    loader = _load_idx if spec.kind == "idx" else _load_cifar
    x_tr, y_tr, x_te, y_te, classes = loader(spec, d)
    return Dataset(name=name, train_x=x_tr, train_y=y_tr, test_x=x_te, test_y=y_te,
                   classes=tuple(classes))


# ---------------------------------------------------------------------------------- splitting

def split_indices(labels, n_train, n_val, seed, balanced=True):
    """Deterministic training / validation index split of a training set.

    Returns ``(train_idx, val_idx)``, sorted int64 arrays, disjoint, both drawn from
    ``range(len(labels))`` (the training set: the test set is never touched). With
    ``balanced=True`` each class gets ``n // K`` images in each split (the first ``n % K`` classes
    in sorted order get one more); the validation images of a class come from that class's images
    not used for training. With ``balanced=False`` both are uniform random draws without
    replacement. The same ``(labels, n_train, n_val, seed, balanced)`` always gives the same split,
    and for a fixed seed a smaller balanced training subset is contained in a larger one.

    Raises ValueError when ``n_train + n_val > len(labels)`` or, balanced, a class has fewer images
    than its share (use ``balanced=False`` or smaller sizes).
    """
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    n_train, n_val = int(n_train), int(n_val)
    if n_train < 0 or n_val < 0:
        raise ValueError(f"n_train and n_val must be >= 0, got {n_train} and {n_val}")
    if n_train + n_val > len(y):
        raise ValueError(f"n_train + n_val = {n_train} + {n_val} = {n_train + n_val} is more than "
                         f"the {len(y)} training images")
    rng = np.random.default_rng(seed)
    if not balanced:
        perm = rng.permutation(len(y))
        return (np.sort(perm[:n_train]).astype(np.int64),
                np.sort(perm[n_train:n_train + n_val]).astype(np.int64))
    classes = np.unique(y)
    k = len(classes)
    tr, va = [], []
    for i, c in enumerate(classes):
        idx = np.flatnonzero(y == c)
        perm = idx[rng.permutation(len(idx))]
        qt = n_train // k + (1 if i < n_train % k else 0)
        qv = n_val // k + (1 if i < n_val % k else 0)
        if qt + qv > len(idx):
            raise ValueError(
                f"class {c} has {len(idx)} images, fewer than the {qt} + {qv} a balanced split of "
                f"n_train={n_train}, n_val={n_val} over {k} classes needs; use balanced=False or "
                f"smaller sizes")
        tr.append(perm[:qt])
        va.append(perm[qt:qt + qv])
    return (np.sort(np.concatenate(tr)).astype(np.int64),
            np.sort(np.concatenate(va)).astype(np.int64))
