"""Tests of scae_np.data on small files written here in the real formats (gzip IDX, CIFAR-10
python-pickle batches and archive), and on the real MNIST when ../shared/data/mnist is there.

Nothing here downloads: every test runs with ``scae_np.data._urlopen`` replaced by a fake (one that
fails the test if called, or one that serves bytes from a temporary folder).
"""
import dataclasses
import gzip
import hashlib
import io
import os
import pathlib
import pickle
import tarfile
import urllib.error

import numpy as np
import pytest

from scae_np import data as D
from scae_np.data import DataError, load_dataset, resolve_data_dir, split_indices

ROOT = pathlib.Path(__file__).resolve().parents[1]
IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
N_TRAIN, N_TEST = 30, 12


def md5(b):
    return hashlib.md5(b).hexdigest()


# ------------------------------------------------------------------------ writing real formats

def idx_bytes(arr, magic=None):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = bytes([0, 0, 8, arr.ndim]) if magic is None else magic
    return head + np.array(arr.shape, ">u4").tobytes() + arr.tobytes()


def tiny_idx_arrays(seed, n_train=N_TRAIN, n_test=N_TEST):
    rng = np.random.default_rng(seed)
    return {
        IDX[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        IDX[1]: rng.permutation(np.arange(n_train) % 10).astype(np.uint8),
        IDX[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        IDX[3]: (np.arange(n_test) % 10).astype(np.uint8),
    }


def write_idx_set(folder, seed=0):
    """Write the four gzip IDX files; returns {file name: (arrays, gz bytes)}."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for fname, a in tiny_idx_arrays(seed).items():
        gz = gzip.compress(idx_bytes(a), mtime=0)
        (folder / fname).write_bytes(gz)
        out[fname] = (a, gz)
    return out


def accept(monkeypatch, name, *sets, n_train=N_TRAIN, n_test=N_TEST):
    """Make dataset ``name`` accept the files of the given written sets (their md5s)."""
    spec = D.SPECS[name]
    files = tuple((f, tuple(md5(s[f][1]) for s in sets)) for f in spec.file_names)
    monkeypatch.setitem(D.SPECS, name, dataclasses.replace(spec, files=files, n_train=n_train,
                                                           n_test=n_test))


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No env var, an empty private cache, no Debian folder, and no network."""
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(D, "DEBIAN_FASHION_DIR", tmp_path / "debian-fashion")

    def no_network(url, timeout=None):
        raise AssertionError(f"test tried to download {url}")
    monkeypatch.setattr(D, "_urlopen", no_network)


class FakeServer:
    """Serves files from a folder by URL basename, like the mirrors; records every URL asked for."""

    def __init__(self, folder, fail_prefixes=()):
        self.folder, self.fail_prefixes, self.urls = pathlib.Path(folder), fail_prefixes, []

    def __call__(self, url, timeout=None):
        self.urls.append(url)
        if any(url.startswith(p) for p in self.fail_prefixes):
            raise urllib.error.URLError("mirror down (fake)")
        p = self.folder / url.rsplit("/", 1)[1]
        if not p.is_file():
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        return io.BytesIO(p.read_bytes())


# ----------------------------------------------------------------------------- IDX: good files

def test_load_tiny_idx_values_shapes_and_types(monkeypatch, tmp_path):
    files = write_idx_set(tmp_path / "m", seed=1)
    accept(monkeypatch, "mnist", files)
    ds = load_dataset("mnist", tmp_path / "m", download=False)
    assert ds.name == "mnist" and ds.classes == tuple("0123456789")
    assert ds.train_x.shape == (N_TRAIN, 1, 28, 28) and ds.test_x.shape == (N_TEST, 1, 28, 28)
    for x in (ds.train_x, ds.test_x):
        assert x.dtype == np.float32 and x.flags.c_contiguous and not x.flags.writeable
        assert 0.0 <= x.min() and x.max() <= 1.0
    assert ds.train_y.dtype == np.int64 and ds.test_y.dtype == np.int64
    np.testing.assert_array_equal(ds.train_x[:, 0], files[IDX[0]][0].astype(np.float32) / 255)
    np.testing.assert_array_equal(np.rint(ds.test_x[:, 0] * 255), files[IDX[2]][0])
    np.testing.assert_array_equal(ds.train_y, files[IDX[1]][0])
    np.testing.assert_array_equal(ds.test_y, files[IDX[3]][0])


def test_data_dir_may_be_a_root_with_a_dataset_subfolder(monkeypatch, tmp_path):
    files = write_idx_set(tmp_path / "root" / "fashion-mnist", seed=2)
    accept(monkeypatch, "fashion-mnist", files)
    assert resolve_data_dir("fashion-mnist", tmp_path / "root") == tmp_path / "root" / "fashion-mnist"
    ds = load_dataset("fashion-mnist", tmp_path / "root", download=False)
    assert ds.classes[0] == "T-shirt/top" and ds.train_x.shape == (N_TRAIN, 1, 28, 28)


def test_lookup_order_data_dir_then_env_then_cache_then_debian(monkeypatch, tmp_path):
    sets = {k: write_idx_set(tmp_path / k, seed=i)
            for i, k in enumerate(["arg", "env", "cache/scae-np/fashion-mnist", "debian-fashion"])}
    accept(monkeypatch, "fashion-mnist", *sets.values())
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "env"))

    def first_pixels(**kw):
        return load_dataset("fashion-mnist", download=False, **kw).train_x[0, 0, 0, :4] * 255

    def expected(k):
        return sets[k][IDX[0]][0][0, 0, :4]

    assert resolve_data_dir("fashion-mnist", tmp_path / "arg") == tmp_path / "arg"
    np.testing.assert_array_equal(first_pixels(data_dir=tmp_path / "arg"), expected("arg"))
    assert resolve_data_dir("fashion-mnist") == tmp_path / "env"
    np.testing.assert_array_equal(first_pixels(), expected("env"))
    monkeypatch.delenv(D.ENV_VAR)
    assert resolve_data_dir("fashion-mnist") == tmp_path / "cache/scae-np/fashion-mnist"
    np.testing.assert_array_equal(first_pixels(), expected("cache/scae-np/fashion-mnist"))
    for f in IDX:
        (tmp_path / "cache/scae-np/fashion-mnist" / f).unlink()
    assert resolve_data_dir("fashion-mnist") == tmp_path / "debian-fashion"
    np.testing.assert_array_equal(first_pixels(), expected("debian-fashion"))


def test_empty_data_dir_falls_through_to_the_next_place(monkeypatch, tmp_path, capsys):
    files = write_idx_set(tmp_path / "envroot" / "mnist", seed=3)
    accept(monkeypatch, "mnist", files)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "envroot"))
    assert resolve_data_dir("mnist", tmp_path / "empty") == tmp_path / "envroot" / "mnist"
    load_dataset("mnist", tmp_path / "empty", download=False)
    assert f"no mnist files in {tmp_path / 'empty'}; using {tmp_path / 'envroot' / 'mnist'}" \
        in capsys.readouterr().err


def test_missing_data_dir_or_env_folder_is_an_error(monkeypatch, tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset("mnist", tmp_path / "typo", download=False)
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=D.ENV_VAR):
        resolve_data_dir("mnist")


def test_another_datasets_folder_is_skipped(monkeypatch, tmp_path):
    """SCAE_NP_DATA_DIR pointing straight at the MNIST files must not serve them as Fashion-MNIST."""
    m = write_idx_set(tmp_path / "mnist", seed=4)
    f = write_idx_set(tmp_path / "cache" / "scae-np" / "fashion-mnist", seed=5)
    accept(monkeypatch, "mnist", m)
    accept(monkeypatch, "fashion-mnist", f)
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "mnist"))
    assert resolve_data_dir("mnist") == tmp_path / "mnist"
    assert resolve_data_dir("fashion-mnist") == tmp_path / "cache" / "scae-np" / "fashion-mnist"


def test_another_datasets_files_given_as_data_dir_are_named_not_missing(monkeypatch, tmp_path):
    """Fashion-MNIST files passed as mnist (--data-dir or $SCAE_NP_DATA_DIR): the error says
    what they are (by the md5 of the labels file) instead of calling the mnist files missing,
    and nothing is downloaded."""
    m = write_idx_set(tmp_path / "unused-mnist", seed=4)
    f = write_idx_set(tmp_path / "fashion", seed=5)
    accept(monkeypatch, "mnist", m)
    accept(monkeypatch, "fashion-mnist", f)
    for download in (False, True):
        with pytest.raises(DataError, match=r"holds the fashion-mnist files, not the mnist ones"
                                            r".*--data-dir") as e:
            load_dataset("mnist", tmp_path / "fashion", download=download)
        assert "missing" not in str(e.value)
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "fashion"))
    with pytest.raises(DataError, match=r"fashion-mnist files.*\$SCAE_NP_DATA_DIR"):
        load_dataset("mnist", download=False)
    assert load_dataset("fashion-mnist", tmp_path / "fashion", download=False).train_x.shape[0] \
        == N_TRAIN


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")


# ------------------------------------------------------------------------------ IDX: bad files

def corrupt_case(case, gz, arr):
    if case == "truncated gzip":
        return gz[: len(gz) // 2], "truncated"
    if case == "not gzip":
        return b"<html>404 Not Found</html>" * 10, "not a valid gzip"
    if case == "bad magic":
        return gzip.compress(idx_bytes(arr, magic=bytes([0, 0, 0x0D, arr.ndim]))), "magic"
    if case == "wrong count":
        return gzip.compress(idx_bytes(np.concatenate([arr, arr[:1]]))), "dimensions"
    if case == "short body":
        return gzip.compress(idx_bytes(arr)[:-5]), "truncated"
    if case == "empty file":
        return b"", "truncated|gzip|header"
    raise AssertionError(case)


@pytest.mark.parametrize("fname", [IDX[0], IDX[3]])
@pytest.mark.parametrize("case", ["truncated gzip", "not gzip", "bad magic", "wrong count",
                                  "short body", "empty file"])
def test_corrupt_idx_file_names_file_problem_and_fix(monkeypatch, tmp_path, case, fname):
    files = write_idx_set(tmp_path / "m", seed=6)
    arr, gz = files[fname]
    bad, pattern = corrupt_case(case, gz, arr)
    (tmp_path / "m" / fname).write_bytes(bad)
    accept(monkeypatch, "mnist", files)
    with pytest.raises(DataError, match=pattern) as e:
        load_dataset("mnist", tmp_path / "m", download=True)   # present files are never re-fetched
    msg = str(e.value)
    assert str(tmp_path / "m" / fname) in msg and "Put a good copy" in msg


def test_wrong_md5_of_a_well_formed_file(monkeypatch, tmp_path):
    official = write_idx_set(tmp_path / "m", seed=7)
    accept(monkeypatch, "mnist", official)
    other = tiny_idx_arrays(seed=8)[IDX[2]]
    (tmp_path / "m" / IDX[2]).write_bytes(gzip.compress(idx_bytes(other)))
    with pytest.raises(DataError, match=r"md5 is [0-9a-f]{32}, expected " + md5(official[IDX[2]][1])) as e:
        load_dataset("mnist", tmp_path / "m", download=False)
    assert IDX[2] in str(e.value) and "not the official file" in str(e.value)


def test_label_out_of_range(monkeypatch, tmp_path):
    files = write_idx_set(tmp_path / "m", seed=9)
    y = files[IDX[1]][0].copy()
    y[3] = 10
    gz = gzip.compress(idx_bytes(y))
    (tmp_path / "m" / IDX[1]).write_bytes(gz)
    files[IDX[1]] = (y, gz)
    accept(monkeypatch, "mnist", files)
    with pytest.raises(DataError, match="label 10 out of range"):
        load_dataset("mnist", tmp_path / "m", download=False)


def test_missing_file_offline_says_where_to_put_it(monkeypatch, tmp_path):
    files = write_idx_set(tmp_path / "m", seed=10)
    accept(monkeypatch, "mnist", files)
    (tmp_path / "m" / IDX[3]).unlink()
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path / "m", download=False)
    msg = str(e.value)
    assert "missing " + IDX[3] in msg and "downloading is off" in msg
    assert f"Put the official file(s) in {tmp_path / 'm'}" in msg   # the partial folder
    assert IDX[0] not in msg.split("(looked")[0]


# -------------------------------------------------------------------------------- downloading

def test_download_into_cache_atomically_with_md5_check(monkeypatch, tmp_path):
    served = write_idx_set(tmp_path / "server", seed=11)
    accept(monkeypatch, "mnist", served)
    server = FakeServer(tmp_path / "server", fail_prefixes=(D.SPECS["mnist"].mirrors[0],))
    monkeypatch.setattr(D, "_urlopen", server)
    ds = load_dataset("mnist")
    cache = tmp_path / "cache" / "scae-np" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(IDX)      # no .part leftovers
    for f in IDX:
        assert (cache / f).read_bytes() == served[f][1]
    np.testing.assert_array_equal(ds.train_y, served[IDX[1]][0])
    # first mirror down -> second mirror used, for each of the four files
    assert len(server.urls) == 8 and all(u.endswith(tuple(IDX)) for u in server.urls)
    # second load: everything is local, no more requests
    n = len(server.urls)
    load_dataset("mnist")
    assert len(server.urls) == n


def test_download_only_the_missing_files(monkeypatch, tmp_path):
    served = write_idx_set(tmp_path / "server", seed=12)
    local = tmp_path / "m"
    local.mkdir()
    (local / IDX[0]).write_bytes(served[IDX[0]][1])
    accept(monkeypatch, "mnist", served)
    server = FakeServer(tmp_path / "server")
    monkeypatch.setattr(D, "_urlopen", server)
    load_dataset("mnist", local)
    assert sorted(u.rsplit("/", 1)[1] for u in server.urls) == sorted(IDX[1:])
    assert all((local / f).is_file() for f in IDX)


def test_download_with_wrong_md5_leaves_nothing_and_explains(monkeypatch, tmp_path):
    served = write_idx_set(tmp_path / "server", seed=13)
    accept(monkeypatch, "mnist", served)
    (tmp_path / "server" / IDX[1]).write_bytes(b"\x1f\x8bgarbage from a captive portal")
    monkeypatch.setattr(D, "_urlopen", FakeServer(tmp_path / "server"))
    with pytest.raises(DataError) as e:
        load_dataset("mnist")
    msg = str(e.value)
    cache = tmp_path / "cache" / "scae-np" / "mnist"
    assert "could not download " + IDX[1] in msg and "md5 is" in msg and str(cache) in msg
    assert not (cache / IDX[1]).exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]


def test_offline_download_fails_with_a_clear_message(monkeypatch, tmp_path):
    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(D, "_urlopen", offline)
    with pytest.raises(DataError) as e:
        load_dataset("mnist")
    msg = str(e.value)
    assert "could not download train-images-idx3-ubyte.gz" in msg and "name resolution" in msg
    assert "ossci-datasets" in msg and "storage.googleapis.com" in msg       # both mirrors tried
    assert str(tmp_path / "cache" / "scae-np" / "mnist") in msg


def test_download_false_never_touches_the_network(tmp_path):
    with pytest.raises(DataError, match="downloading is off"):   # the autouse fake would raise
        load_dataset("fashion-mnist", download=False)


# --------------------------------------------------------------------------------- CIFAR-10

def cifar_batches(seed, per_batch=4, n_test=6):
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(1, 6):
        out[f"data_batch_{i}"] = {
            "batch_label": f"training batch {i} of 5",
            "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)]}
    out["test_batch"] = {"batch_label": "testing batch 1 of 1",
                         "labels": [int(v) for v in rng.integers(0, 10, n_test)],
                         "data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                         "filenames": [f"t_{j}.png" for j in range(n_test)]}
    out["batches.meta"] = {"num_cases_per_batch": per_batch, "num_vis": 3072,
                           "label_names": list(D.SPECS["cifar10"].classes)}
    return {k: pickle.dumps(v, protocol=2) for k, v in out.items()}, out


def write_cifar(folder, seed=0):
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    raw, objs = cifar_batches(seed)
    for k, b in raw.items():
        (folder / k).write_bytes(b)
    return raw, objs


def cifar_tar(raw):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for k, b in raw.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{k}")
            info.size = len(b)
            tar.addfile(info, io.BytesIO(b))
    return buf.getvalue()


def accept_cifar(monkeypatch, raw, archive=None):
    spec = D.SPECS["cifar10"]
    files = tuple((f, (md5(raw[f]),)) for f in spec.file_names)
    arch = (spec.archive[0], md5(archive) if archive else spec.archive[1])
    monkeypatch.setitem(D.SPECS, "cifar10", dataclasses.replace(
        spec, files=files, n_train=20, n_test=6, archive=arch))


def check_cifar(ds, objs):
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (6, 3, 32, 32)
    assert ds.train_x.dtype == np.float32 and ds.train_x.flags.c_contiguous
    assert ds.classes == D.SPECS["cifar10"].classes
    # official layout: each row is 1024 red, then 1024 green, then 1024 blue values, row-major
    row = objs["data_batch_2"]["data"][1]
    np.testing.assert_array_equal(np.rint(ds.train_x[5, 1, 0, :] * 255), row[1024:1056])
    np.testing.assert_array_equal(np.rint(ds.train_x[5, 2, 31, 31] * 255), row[3071])
    want = sum((objs[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    np.testing.assert_array_equal(ds.train_y, want)
    np.testing.assert_array_equal(ds.test_y, objs["test_batch"]["labels"])


def test_cifar_from_batches_folder(monkeypatch, tmp_path):
    raw, objs = write_cifar(tmp_path / "root" / "cifar10" / "cifar-10-batches-py", seed=1)
    accept_cifar(monkeypatch, raw)
    check_cifar(load_dataset("cifar10", tmp_path / "root", download=False), objs)
    # pointing straight at the batches folder works too
    check_cifar(load_dataset("cifar10", tmp_path / "root" / "cifar10" / "cifar-10-batches-py",
                             download=False), objs)


def _cifar_archive(monkeypatch, folder, seed):
    """The official-format archive of fresh batches in ``folder`` (accepted); their objects."""
    raw, objs = cifar_batches(seed=seed)
    arch = cifar_tar(raw)
    folder.mkdir()
    (folder / "cifar-10-python.tar.gz").write_bytes(arch)
    accept_cifar(monkeypatch, raw, arch)
    return raw, objs


def test_cifar_from_the_archive_extracts_it(monkeypatch, tmp_path):
    raw, objs = _cifar_archive(monkeypatch, tmp_path / "c", seed=2)
    check_cifar(load_dataset("cifar10", tmp_path / "c", download=False), objs)
    assert sorted(p.name for p in (tmp_path / "c" / "cifar-10-batches-py").iterdir()) == sorted(raw)
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".")]


def test_cifar_download(monkeypatch, tmp_path):
    raw, objs = _cifar_archive(monkeypatch, tmp_path / "server", seed=3)
    server = FakeServer(tmp_path / "server")
    monkeypatch.setattr(D, "_urlopen", server)
    check_cifar(load_dataset("cifar10"), objs)
    assert server.urls == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert (tmp_path / "cache/scae-np/cifar10/cifar-10-batches-py/test_batch").is_file()


def test_cifar_truncated_archive(monkeypatch, tmp_path):
    raw, _ = cifar_batches(seed=4)
    arch = cifar_tar(raw)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cifar-10-python.tar.gz").write_bytes(arch[:-100])
    accept_cifar(monkeypatch, raw, arch)
    with pytest.raises(DataError, match="cifar-10-python.tar.gz: md5 is .*truncated"):
        load_dataset("cifar10", tmp_path / "c", download=False)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("case", ["truncated", "wrong md5", "code in pickle", "not a dict",
                                  "wrong data shape", "label count"])
def test_cifar_bad_batches(monkeypatch, tmp_path, case):
    folder = tmp_path / "c" / "cifar-10-batches-py"
    raw, objs = write_cifar(folder, seed=5)
    accept_cifar(monkeypatch, raw)
    b3 = dict(objs["data_batch_3"])
    if case == "truncated":
        bad, pattern = raw["data_batch_3"][:-50], "not a readable CIFAR python pickle"
    elif case == "wrong md5":
        b3["labels"] = [(v + 1) % 10 for v in b3["labels"]]
        bad, pattern = pickle.dumps(b3, protocol=2), "md5 is .*not the official file"
    elif case == "code in pickle":
        bad, pattern = pickle.dumps({"data": Evil()}), "refusing to load"
    elif case == "not a dict":
        bad, pattern = pickle.dumps([1, 2, 3]), "expected a dict"
    elif case == "wrong data shape":
        b3["data"] = b3["data"][:, :1000]
        bad, pattern = pickle.dumps(b3, protocol=2), r"expected uint8 \(N, 3072\)"
    else:
        b3["labels"] = b3["labels"][:-1]
        bad, pattern = pickle.dumps(b3, protocol=2), "3 labels for 4 images"
    (folder / "data_batch_3").write_bytes(bad)
    with pytest.raises(DataError, match=pattern) as e:
        load_dataset("cifar10", tmp_path / "c", download=False)
    assert str(folder / "data_batch_3") in str(e.value) and "Put a good copy" in str(e.value)


def test_cifar_missing_offline(tmp_path):
    with pytest.raises(DataError, match="missing cifar-10-python.tar.gz.*downloading is off"):
        load_dataset("cifar10", download=False)


# ---------------------------------------------------------------------------------- splitting

def mnist_like_labels(seed=0, n=3000):
    return np.random.default_rng(seed).integers(0, 10, n)


def test_split_is_deterministic_disjoint_and_balanced():
    y = mnist_like_labels()
    tr, va = split_indices(y, 1000, 500, seed=3)
    tr2, va2 = split_indices(y, 1000, 500, seed=3)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(va, va2)
    assert tr.dtype == np.int64 and va.dtype == np.int64
    assert len(tr) == 1000 and len(va) == 500
    assert len(np.unique(tr)) == 1000 and len(np.unique(va)) == 500
    assert not set(tr) & set(va)
    assert tr.min() >= 0 and max(tr.max(), va.max()) < len(y)
    np.testing.assert_array_equal(np.bincount(y[tr], minlength=10), [100] * 10)
    np.testing.assert_array_equal(np.bincount(y[va], minlength=10), [50] * 10)
    tr3, _ = split_indices(y, 1000, 500, seed=4)
    assert not np.array_equal(tr, tr3)


def test_split_remainders_and_nesting():
    y = mnist_like_labels(1)
    tr, va = split_indices(y, 1003, 7, seed=0)
    assert np.bincount(y[tr], minlength=10).tolist() == [101] * 3 + [100] * 7
    assert np.bincount(y[va], minlength=10).tolist() == [1] * 7 + [0] * 3
    small, _ = split_indices(y, 100, 50, seed=0)
    big, _ = split_indices(y, 1000, 50, seed=0)
    assert set(small) <= set(big)


def test_split_unbalanced_is_a_uniform_draw():
    y = mnist_like_labels(2)
    tr, va = split_indices(y, 2000, 1000, seed=1, balanced=False)
    assert len(tr) == 2000 and len(va) == 1000 and not set(tr) & set(va)
    assert len(set(tr) | set(va)) == 3000
    t2, _ = split_indices(y, 2000, 1000, seed=1, balanced=False)
    np.testing.assert_array_equal(tr, t2)


def test_split_errors():
    y = mnist_like_labels(3, n=200)
    with pytest.raises(ValueError, match="more than the 200 training images"):
        split_indices(y, 150, 51, seed=0)
    y = np.array([0] * 50 + [1] * 5 + [2] * 50)
    with pytest.raises(ValueError, match="class 1 has 5 images.*balanced=False"):
        split_indices(y, 30, 0, seed=0)
    split_indices(y, 30, 0, seed=0, balanced=False)
    with pytest.raises(ValueError, match="1-D integer"):
        split_indices(np.zeros(10), 5, 0, seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        split_indices(y, -1, 0, seed=0)


# ------------------------------------------------------------------------------ the real MNIST

REAL_DEBIAN_FASHION = D.DEBIAN_FASHION_DIR      # before the autouse fixture hides it


@pytest.mark.skipif(not (REAL_DEBIAN_FASHION / IDX[0]).is_file(),
                    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
def test_real_debian_fashion_mnist():
    ds = load_dataset("fashion-mnist", REAL_DEBIAN_FASHION, download=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.train_y).tolist() == [6000] * 10
    assert np.bincount(ds.test_y).tolist() == [1000] * 10
    assert ds.train_y[:4].tolist() == [9, 0, 0, 3]


REAL_MNIST_MD5 = {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                  "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                  "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                  "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}


def real_mnist_dir():
    # ../shared/data/mnist from the repo root (the main checkout); a git worktree under
    # <workspace>/wt/<name> finds the same folder one level further up.
    for d in (ROOT.parent / "shared/data/mnist", ROOT.parent.parent / "shared/data/mnist"):
        if all((d / f).is_file() for f in REAL_MNIST_MD5):
            return d
    return None


@pytest.mark.skipif(real_mnist_dir() is None,
                    reason="real MNIST not found at ../shared/data/mnist (from the repo root)")
def test_real_mnist():
    d = real_mnist_dir()
    for f, m in REAL_MNIST_MD5.items():
        assert hashlib.md5((d / f).read_bytes()).hexdigest() == m
    ds = load_dataset("mnist", d, download=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == np.float32 and ds.train_x.flags.c_contiguous
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0
    assert np.bincount(ds.train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265,
                                                5851, 5949]
    assert np.bincount(ds.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert ds.train_y[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]
    tr, va = split_indices(ds.train_y, 1000, 1000, seed=0)
    assert np.bincount(ds.train_y[tr]).tolist() == [100] * 10 and not set(tr) & set(va)
