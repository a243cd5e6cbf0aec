"""``python -m scae_np.run DATASET``: the paper's experiments on the hand-written kernels.

Experiments (``--experiment``):

``default``  a short but real version of the whole pipeline (the default): the four Fig. 1
             CAEs (20 filters 7x7: plain, 50% noise, 2x2 max-pooling, pooling + 30% noise)
             on a few thousand images, a 3-layer CAE stack, and the paper's CNN trained from
             random initialisation and from the stack on 1,000 images, tested on the whole
             test set; ends by printing our errors beside the paper's.
``fig1``     the four Fig. 1 CAEs and their filter images (full-size defaults).
``table``    Table 1/2: the CNN from random init vs from the CAE stack, for every training-set
             size in ``--sizes`` and seed in ``--seeds``.
``cae``      one CAE (``--maps``/``--kernel``/``--pool``/``--noise`` via the ``--cae-*`` options).
``cnn``      one CNN (``--init random|cae``) at the first of ``--sizes``.

Typical full-protocol commands (MNIST in ``../shared/data/mnist``)::

    python -m scae_np.run mnist -e fig1 --data-dir ../shared/data/mnist --out runs/fig1
    python -m scae_np.run mnist -e table --data-dir ../shared/data/mnist --sizes 1000,10000 \
        --seeds 0,1,2 --out runs/table1           # add --backend cupy on a GPU
    python -m scae_np.run mnist -e table --out runs/table1 --resume    # after a kill

Every run writes a folder (``--out``): ``config.json``, ``metrics.jsonl`` (one line per stage
epoch), ``results.json`` + ``results.md`` (our table beside the paper's), PNG figures,
``checkpoints/`` (resumable, see :mod:`scae_np.train`) and ``weights/`` (plain ``.npz``).

The folder is locked for the life of the process (``scae_np._lock``): a second run or
``--resume`` on it stops with exit 2, naming the holder's PID. ``--resume`` takes the saved
config.json; the options given with it are sorted by ``RESUME_EPOCHS``,
``RESUME_NEXT_STAGES`` and ``RESUME_UNFINISHED`` (applied, with a note, and recorded in
config.json under ``resumes``), everything else is refused (exit 2, listing the saved values).
config.json also records every session (``sessions``: start, wall time, outcome);
``results.json``'s ``wall_time_s`` sums the sessions that trained, so resuming a finished run
keeps it. A full disk, a read-only folder or an ``--out`` that is a file end with a one-line
message and exit 2; Ctrl-C with exit 130 and the command that continues.
"""
from __future__ import annotations

import os
import sys


from ._threads import early_threads  # noqa: E402  (no NumPy import)

_THREADS_APPLIED = None          # True: --threads applied before NumPy loaded
if __name__ == "__main__":
    _THREADS_APPLIED = early_threads(sys.argv[1:])

import argparse  # noqa: E402
import errno  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from . import summary  # noqa: E402

#: Test error (%) of the paper's CNN, from our memory of Masci et al. 2011, Tables 1 and 2 --
#: NOT copied from the paper; check the paper before quoting them.
PAPER = {
    "mnist": {"title": "Table 1 (MNIST)",
              1000: {"random": 7.63, "cae": 7.23},
              10000: {"random": 2.21, "cae": 1.88},
              50000: {"random": 0.79, "cae": 0.71}},
    "cifar10": {"title": "Table 2 (CIFAR-10)",
                1000: {"random": 55.52, "cae": 52.30},
                10000: {"random": 35.23, "cae": 34.35},
                50000: {"random": 22.50, "cae": 21.80}},
}
PAPER_NOTE = ("The paper's numbers are quoted from memory of Masci et al., ICANN 2011 "
              "(Tables 1 and 2), not copied from the paper: check them there before citing.")

EXPERIMENTS = ("default", "fig1", "table", "cae", "cnn")
#: test images in the embedding figure of the CAE stack (--embed-images)
EMBED_IMAGES = 500
FIG1_VARIANTS = (            # (stage name, caption, pool, noise)
    ("plain", "plain CAE", 1, 0.0),
    ("noise50", "50% binomial noise", 1, 0.5),
    ("pool", "2x2 max-pooling", 2, 0.0),
    ("pool-noise30", "2x2 max-pooling + 30% noise", 2, 0.3),
)

# Settings a run may take from the command line; None in the presets = "not used".
# 'default' is the quick preset; the others use the full-protocol preset. Both share the
# paper's architecture and the SGD settings; they differ in budget and in the stack recipe.
_PAPER_SETTINGS = dict(
    test_images=None, maps=[100, 150, 200], kernels=[5, 5, 3], hidden=300,
    lr=0.01, momentum=0.9, batch_size=16,
    cae_lr=0.005, cae_momentum=0.9, cae_batch_size=16, cae_noise=0.0,
    cae_maps=20, cae_kernel=7, cae_pool=2,                       # the Fig. 1 CAEs: 20@7x7
    cae_lr_schedule="decay", cae_lr_final=1.0, cae_patience=0, init="cae",
)
#: The recipe chosen on validation (RESULTS.md, issue 10): annealed CNN schedule, the stack's
#: CAEs starting at the LeCun scale, its filters rescaled to the random init's activation
#: spread in the CNN. The quick preset runs the same recipe on a smaller budget.
_RECIPE = dict(lr_schedule="exp", lr_final=0.01, lr_decay=0.95, cae_init_scale=1.0,
               cae_rescale="activation")
QUICK = dict(
    _PAPER_SETTINGS, **_RECIPE, seeds=[0], sizes=[1000], val_images=1000,
    epochs=6, patience=0, cae_images=2000, cae_epochs=1, diag_images=256,
    fig_images=3000, fig_epochs=1,
)
FULL = dict(
    _PAPER_SETTINGS, **_RECIPE, seeds=[0, 1, 2], sizes=[1000, 10000, 50000], val_images=5000,
    epochs=30, patience=8, cae_images=20000, cae_epochs=2, diag_images=512,
    fig_images=50000, fig_epochs=5,
)

# Random streams: every draw of a run comes from numpy.random.default_rng([seed, tag, ...]),
# the tags keeping the streams apart (changing one changes a run's numbers). The CNN of a
# size uses [seed, size]; the stack's CAE i [seed, i] (models.CAEStack).
RNG_FIG1_CAE = 1        # [seed, 1, i]: the start of the i-th Fig. 1 CAE
RNG_SINGLE_CAE = 2      # [seed, 2]: the start of the 'cae' experiment's CAE
RNG_CAE_IMAGES = 7      # [seed, 7]: which training images the CAEs train on
RNG_FIG1_IMAGES = 11    # [seed, 11]: which the Fig. 1 CAEs train on
#: validation images for a CAE's validation loss, and images shown in its figures
CAE_VAL_IMAGES = 1000
SHOWN_IMAGES = 10

#: Values of the options added after a run was saved that reproduce what it did (--resume of
#: a config.json without them).
LEGACY = dict(lr_schedule="decay", lr_final=1.0, cae_lr_schedule="decay", cae_lr_final=1.0,
              cae_patience=0, cae_init_scale=0.1, cae_rescale="none", diag_images=512)
# Options that belong to the machine running the command, not to the experiment: on --resume
# they are taken from the command line; everything else comes from the saved config.json.
RUNTIME_KEYS = ("backend", "emulate", "data_dir", "no_download", "threads", "jobs", "progress",
                "stop_after_epochs", "eval_batch_size", "out", "resume")


class UserError(Exception):
    """A problem with the command line or the environment; printed without a traceback."""


# ------------------------------------------------------------------------------ parsing
def _int_list(s):
    try:
        v = [int(t) for t in str(s).replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not v:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return v


def _int_at_least(lo, what):
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            v = None
        if v is None or v < lo:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "an integer >= 0")


def _float(s):
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None


# The command line, one row per option: (flag, kind, help[, argparse extras]). ``kind`` is a
# parser (type=), a tuple of choices, or "flag" (store_true). Options that take their value
# from the presets get "(default: quick / full)" appended to their help.
_OPTION_GROUPS = (
    ("what to run", (
        ("--backend", ("numpy", "cupy", "numba"),
         "kernels to run on (default: cupy, else numba, when a GPU works here; numpy otherwise)"),
        ("--emulate", "flag",
         "run the cupy or numba backend without a GPU (cupy: the CUDA C kernels in the CPU "
         "emulator; numba: numba's CUDA simulator); slow, for tests"),
        ("--threads", _positive_int,
         "CPU threads for BLAS/OpenMP (default: the libraries' own choice)"),
        ("--jobs", _positive_int,
         "worker processes running independent stages at once (table cells, the Fig. 1 CAEs, "
         "one CAE stack per seed), the CPU threads divided among them; same results as one "
         "(default: %(default)s)", dict(default=1)),
        ("--seeds", _int_list,
         "comma-separated seeds; one table row per seed, the first one for fig1/cae/cnn"),
    )),
    ("data", (
        ("--data-dir", str,
         "folder holding the dataset files (or a folder with a DATASET/ subfolder); default: "
         "$SCAE_NP_DATA_DIR, then the user cache"),
        ("--no-download", "flag", "never download missing files; stop with a message instead"),
        ("--sizes", _int_list, "training-set sizes for the CNN (class-balanced subsets)"),
        ("--val-images", _nonneg_int,
         "validation images, taken from the training images not used for training (never the "
         "test set); used for early stopping and model choice"),
        ("--test-images", _positive_int,
         "evaluate on the first N test images only (default: the whole test set, as the "
         "paper)"),
    )),
    ("CNN (Table 1/2)", (
        ("--maps", _int_list, "maps of the convolutions, also the CAE stack's"),
        ("--kernels", _int_list, "kernel sizes of the convolutions"),
        ("--hidden", _nonneg_int, "units of the fully connected layer, 0 for none"),
        ("--init", ("random", "cae"), "initialisation for the 'cnn' experiment"),
        ("--epochs", _nonneg_int, "CNN epochs"),
        ("--lr", _float, "CNN learning rate"),
        ("--momentum", _float, "CNN momentum, 0 for plain SGD"),
        ("--lr-decay", _float, "CNN learning rate multiplied by this after every epoch"),
        ("--lr-schedule", ("decay", "exp", "cosine"),
         "CNN learning-rate schedule: decay (lr x --lr-decay per epoch), or annealed over the "
         "planned --epochs from lr to lr x --lr-final, geometrically (exp) or on a half "
         "cosine"),
        ("--lr-final", _float, "annealed schedules end at lr x this, in (0, 1]"),
        ("--batch-size", _positive_int, "CNN mini-batch size, 1 for on-line SGD"),
        ("--patience", _nonneg_int,
         "early stopping: stop after this many epochs without a better validation error, 0 "
         "for never; the best epoch's weights are kept either way"),
    )),
    ("CAEs (stack, fig1, cae)", (
        ("--cae-images", _positive_int,
         "training images (labels unused) for each CAE of the stack and for the 'cae' "
         "experiment"),
        ("--cae-epochs", _nonneg_int, "epochs per CAE of the stack / 'cae' experiment"),
        ("--cae-lr", _float, "CAE learning rate"),
        ("--cae-momentum", _float, "CAE momentum"),
        ("--cae-batch-size", _positive_int, "CAE mini-batch size, 1 for on-line"),
        ("--cae-lr-schedule", ("decay", "exp", "cosine"),
         "CAE learning-rate schedule, as --lr-schedule (decay: constant)"),
        ("--cae-lr-final", _float, "annealed CAE schedules end at --cae-lr x this"),
        ("--cae-patience", _nonneg_int,
         "CAEs (stack and Fig. 1) stop after this many epochs without a lower validation "
         "loss, 0 for never"),
        ("--cae-init-scale", _float,
         "the stack's CAE filters start uniform in +-this x the LeCun bound"),
        ("--cae-rescale", ("none", "activation"),
         "CAE init of the CNN: copy the filters as trained (none), or rescale each "
         "convolution so its pre-activation spread equals the random init's on the same "
         "validation images (activation)"),
        ("--diag-images", _positive_int,
         "validation images for the diagnostics (effective rank, saturation) of the stack "
         "and the CNNs"),
        ("--cae-noise", _float,
         "share of input pixels zeroed (binomial noise) for the stack's CAEs and the 'cae' "
         "experiment"),
        ("--cae-maps", _positive_int, "filters of the 'cae' experiment and of the Fig. 1 CAEs"),
        ("--cae-kernel", _positive_int,
         "filter size of the 'cae' experiment and of the Fig. 1 CAEs"),
        ("--cae-pool", _positive_int, "max-pooling of the 'cae' experiment, 1 for none"),
        ("--fig-images", _positive_int, "training images for each Fig. 1 CAE"),
        ("--fig-epochs", _nonneg_int, "epochs for each Fig. 1 CAE"),
    )),
    ("output", (
        ("--out", str, "output folder (default: runs/DATASET-EXPERIMENT-<date-time>)"),
        ("--resume", "flag",
         "continue the run in --out from its checkpoints, with its saved config.json "
         "(backend/threads/data options from this command). Options given with it: more "
         "--epochs/--cae-epochs/--fig-epochs extend the stages, a new rate/momentum/batch "
         "size applies to the stages not started yet, --patience to those not finished (each "
         "noted in config.json); any other change is refused"),
        ("--no-progress", "flag", "no progress bars (the one-line epoch summaries stay)",
         dict(dest="progress", action="store_false")),
        ("--verbose", "flag",
         "print the full reasons of the backend choice (always in config.json)"),
        ("--embed-images", _nonneg_int,
         f"test images in the embedding figure (the CAE stack's top-layer codes in 2-D beside "
         f"those of its random start; t-SNE with the 'embed' extra, else PCA), 0 for none "
         f"(default: {EMBED_IMAGES})"),
        ("--eval-batch-size", _positive_int,
         "batch size for evaluation and encoding (default: %(default)s)", dict(default=256)),
        ("--stop-after-epochs", _positive_int,
         "testing aid: stop (exit status 3) after N training epochs in this process, as if "
         "killed right after a checkpoint"),
    )),
)

_DESCRIPTION = (
    "Stacked convolutional auto-encoders (Masci et al., ICANN 2011) and the CNN they\n"
    "initialise, trained with this project's hand-written kernels.\n\n"
    "With only a dataset it runs a short but real version of the whole pipeline\n"
    "(Fig. 1 CAEs, a CAE stack, CNN random vs CAE-init on 1,000 images; a few minutes\n"
    "on a 2-core CPU) and prints our test errors beside the paper's.\n"
    "Options left out take the experiment's preset: quick ones for 'default', the\n"
    "full protocol for the others (shown as 'quick / full').")
_EPILOG = (
    "examples:\n"
    "  python -m scae_np.run mnist --data-dir ../shared/data/mnist\n"
    "  python -m scae_np.run mnist -e fig1 --fig-images 60000 --fig-epochs 5\n"
    "  python -m scae_np.run mnist -e table --sizes 1000,10000 --seeds 0,1,2 --backend cupy\n"
    "  python -m scae_np.run mnist -e table --out runs/t1 --resume   # continue a run\n\n"
    "exit status: 0 done, 1 training failed (diverged: the message says which rate to\n"
    "lower), 2 bad input (options, data, backend) or an output folder that cannot be\n"
    "used (locked by another run, read-only, a file, a full disk), 3 stopped by\n"
    "--stop-after-epochs, 130 interrupted (Ctrl-C); after 1, 2 (full disk), 3 and 130\n"
    "--resume continues.\n\n")


def _preset_default(key):
    """``quick / full`` (or the one value both presets share) for an option's help."""
    fmt = lambda v: ",".join(map(str, v)) if isinstance(v, list) else str(v)  # noqa: E731
    a, b = fmt(QUICK[key]), fmt(FULL[key])
    return a if a == b else f"{a} / {b}"


def build_parser():
    from .data import DATASETS
    p = argparse.ArgumentParser(prog="python -m scae_np.run", description=_DESCRIPTION,
                                epilog=_EPILOG + PAPER_NOTE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=DATASETS, metavar="DATASET",
                   help=f"one of {', '.join(DATASETS)}")
    for title, options in _OPTION_GROUPS:
        g = p.add_argument_group(title)
        if title == "what to run":
            g.add_argument("-e", "--experiment", choices=EXPERIMENTS, default="default",
                           help="default: the short whole pipeline; fig1: the four Fig. 1 "
                                "CAEs; table: Table 1/2 CNN random vs CAE-init; cae: one CAE; "
                                "cnn: one CNN (default: %(default)s)")
        for flag, kind, text, *extra in options:
            kw = dict(extra[0]) if extra else {}
            key = flag[2:].replace("-", "_")
            if QUICK.get(key) is not None:
                text += f" (default: {_preset_default(key)})"
            if kind == "flag":
                kw.setdefault("action", "store_true")
            elif isinstance(kind, tuple):
                kw.update(choices=kind, default=kw.get("default"))
            else:
                kw.update(type=kind, default=kw.get("default"))
            g.add_argument(flag, help=text, **kw)
    return p


def resolve_config(args):
    """The experiment's settings: its preset overlaid with the options given."""
    preset = QUICK if args.experiment == "default" else FULL
    cfg = {"dataset": args.dataset, "experiment": args.experiment}
    for k, v in preset.items():
        given = getattr(args, k, None)
        cfg[k] = list(v) if isinstance(v, list) and given is None else (v if given is None
                                                                        else given)
    if args.dataset == "cifar10" and args.sizes is None and args.experiment != "default":
        cfg["sizes"] = [1000, 10000, 45000]     # 50,000 training images leave no validation
    cfg["embed_images"] = EMBED_IMAGES if args.embed_images is None else args.embed_images
    for k in RUNTIME_KEYS:
        cfg[k] = getattr(args, k, None)
    return cfg


def validate_config(cfg):
    def bad(msg):
        raise UserError(msg)
    if len(cfg["maps"]) != len(cfg["kernels"]):
        bad(f"--maps has {len(cfg['maps'])} entries but --kernels has {len(cfg['kernels'])}; "
            f"give one kernel size per convolution")
    if any(m < 1 for m in cfg["maps"]) or any(k < 1 for k in cfg["kernels"]):
        bad("--maps and --kernels must be positive")
    if any(s < 1 for s in cfg["sizes"]):
        bad(f"--sizes must be positive, got {cfg['sizes']}")
    for k in ("lr", "cae_lr"):
        if not cfg[k] > 0:
            bad(f"--{k.replace('_', '-')} must be > 0, got {cfg[k]}")
    for k in ("momentum", "cae_momentum"):
        if not 0 <= cfg[k] < 1:
            bad(f"--{k.replace('_', '-')} must be in [0, 1), got {cfg[k]}")
    if not 0 < cfg["lr_decay"] <= 1:
        bad(f"--lr-decay must be in (0, 1], got {cfg['lr_decay']}")
    for k in ("lr_final", "cae_lr_final"):
        if not 0 < cfg[k] <= 1:
            bad(f"--{k.replace('_', '-')} is a fraction of the starting rate in (0, 1], got "
                f"{cfg[k]}")
    if not cfg["cae_init_scale"] > 0:
        bad(f"--cae-init-scale must be > 0, got {cfg['cae_init_scale']}")
    if not 0 <= cfg["cae_noise"] < 1:
        bad(f"--cae-noise must be a share of pixels in [0, 1), got {cfg['cae_noise']}")
    if cfg["emulate"] and cfg["backend"] not in ("cupy", "numba"):
        bad("--emulate runs a GPU backend without a GPU: use it with --backend cupy or "
            "--backend numba")
    if len(set(cfg["seeds"])) != len(cfg["seeds"]):
        bad(f"--seeds has duplicates: {cfg['seeds']}")
    if cfg["val_images"] == 0 and cfg["experiment"] in ("default", "table", "cnn"):
        bad("--val-images 0 leaves the CNNs without validation images, which they need for "
            "early stopping, the diagnostics of their starting weights and --cae-rescale "
            "activation; give --val-images N (N >= 1; the presets use 1000 / 5000)")


# ------------------------------------------------------------------------------ backend
def pick_backend(name, emulate):
    """The backend asked for, or the first GPU backend that works, else NumPy."""
    from kernels import BackendUnavailableError, get_backend
    if name is not None:
        if name == "numba" and emulate and "numba" not in sys.modules:
            os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
        try:
            return get_backend(name, emulate=emulate), None
        except BackendUnavailableError as e:
            raise UserError(summary.unavailable_message(name, emulate, e)) from None
        except ValueError as e:
            raise UserError(str(e)) from None
    why = {}
    for cand in ("cupy", "numba"):
        try:
            return get_backend(cand), None
        except BackendUnavailableError as e:
            why[cand] = str(e)
        except Exception as e:  # noqa: BLE001 - a broken GPU stack must not stop a CPU run
            why[cand] = f"{type(e).__name__}: {e}"
    return get_backend("numpy"), why


# ------------------------------------------------------------------------------ splits
def make_splits(labels, n_val, sizes, n_cae, seed):
    """Validation indices (the same for every size), class-balanced training subsets of every
    size (nested: a smaller one is inside a larger one) and the CAE training images (labels
    unused), all from the training set minus the validation images."""
    from .data import split_indices
    labels = np.asarray(labels)
    n = len(labels)
    biggest = max(sizes) if sizes else 0
    if n_val + biggest > n:
        raise UserError(f"--val-images {n_val} + the largest of --sizes {biggest} = "
                        f"{n_val + biggest} is more than the {n} training images; use smaller "
                        f"sizes or fewer validation images")
    try:
        _, val = split_indices(labels, 0, n_val, seed)
        rest = np.setdiff1d(np.arange(n), val)
        train = {}
        for s in sorted(set(sizes)):
            try:
                t, _ = split_indices(labels[rest], s, 0, seed)
            except ValueError:
                # A class-balanced subset this large does not exist (MNIST's rarest class,
                # 5, has 5421 training images: 50k balanced would need 5000 per class after
                # the validation split). Take a random subset of the remaining images, which
                # keeps the training set's own class frequencies, as the paper's 50k did.
                t, _ = split_indices(labels[rest], s, 0, seed, balanced=False)
            train[s] = rest[t]
    except ValueError as e:
        raise UserError(f"cannot split the training set: {e}") from None
    order = np.random.default_rng([seed, RNG_CAE_IMAGES]).permutation(rest)
    cae = np.sort(order[:min(n_cae, len(rest))])
    return val, train, cae


# ------------------------------------------------------------------------------ the run
class Run:
    def __init__(self, cfg, backend, ds, out, trainer):
        self.cfg, self.be, self.ds, self.out, self.trainer = cfg, backend, ds, out, trainer
        self.results = {"fig1": {}, "stacks": {}, "cnn": {}, "cae": {}, "diagnostics": {}}
        self.figures = []
        self.in_channels = ds.train_x.shape[1]
        self.input_hw = tuple(ds.train_x.shape[2:])
        self.n_classes = len(ds.classes)
        n_test = cfg["test_images"] or len(ds.test_x)
        self.test_x, self.test_y = ds.test_x[:n_test], ds.test_y[:n_test]

    def echo(self, msg):
        self.trainer.echo(msg)

    def check(self):
        """Fail on impossible settings before any training: the splits of every seed and the
        CNN's shapes."""
        from .models import CNN
        c = self.cfg
        if c["experiment"] in ("default", "table", "cnn"):
            sizes = c["sizes"] if c["experiment"] != "cnn" else c["sizes"][:1]
            for seed in c["seeds"]:
                make_splits(self.ds.train_y, c["val_images"], sizes, c["cae_images"], seed)
            CNN(self.be, self.in_channels, self.input_hw, self.n_classes, c["maps"],
                c["kernels"], self._cnn_pools(), c["hidden"], seed=0)
        else:
            make_splits(self.ds.train_y, c["val_images"], [], 0, c["seeds"][0])

    def fig_path(self, name):
        os.makedirs(os.path.join(self.out, "figures"), exist_ok=True)
        p = os.path.join(self.out, "figures", name)
        self.figures.append(os.path.relpath(p, self.out))
        return p

    def _curves(self, stage):
        from . import figures
        recs = [{k: r[k] for k in ("epoch", "train_loss", "val_loss", "val_error") if k in r}
                for r in self.trainer.log.records() if r.get("stage") == stage]
        if recs:
            figures.learning_curves(recs, self.fig_path(f"curves_{stage}.png"), title=stage)

    def cae_sgd(self, epochs=None):
        from .train import SGD
        c = self.cfg
        return SGD(lr=c["cae_lr"], epochs=c["cae_epochs"] if epochs is None else epochs,
                   batch_size=c["cae_batch_size"], momentum=c["cae_momentum"],
                   schedule=c["cae_lr_schedule"], lr_final=c["cae_lr_final"],
                   patience=c["cae_patience"])

    def cnn_sgd(self):
        from .train import SGD
        c = self.cfg
        return SGD(lr=c["lr"], epochs=c["epochs"], batch_size=c["batch_size"],
                   momentum=c["momentum"], lr_decay=c["lr_decay"], patience=c["patience"],
                   schedule=c["lr_schedule"], lr_final=c["lr_final"])

    # ------------------------------------------------------------------ one CAE
    def train_cae(self, stage, cae, x, x_val, epochs=None, seed=0):
        be = self.be

        def final(model):
            from .train import evaluate_reconstruction
            out = {}
            if len(x_val):
                out["val_loss"], out["val_mse"] = evaluate_reconstruction(
                    be, model, x_val, self.cfg["eval_batch_size"])
            return out
        res = self.trainer.fit(stage, cae, "cae", x, None, self.cae_sgd(epochs), seed,
                               x_val=x_val, final_eval=final, info={"images": len(x)})
        return res

    def cae_figures(self, stage, cae, x_show, caption):
        from . import figures
        be = self.be
        figures.filter_grid(cae.filters(), self.fig_path(f"filters_{stage}.png"), title=caption)
        if x_show is not None and cae.in_channels == self.in_channels:
            r = be.to_host(cae.reconstruct(be.to_device(x_show)))
            figures.reconstructions(x_show, np.asarray(r),
                                    self.fig_path(f"reconstructions_{stage}.png"),
                                    title=f"{caption}: inputs (top), reconstructions (bottom)")
        self._curves(stage)

    # ------------------------------------------------------------------ fig1
    def fig1(self, seed):
        data = self.fig1_data(seed)
        panels = [self.fig1_cae(seed, i, data) for i in range(len(FIG1_VARIANTS))]
        self.fig1_figure(panels)

    def fig1_data(self, seed):
        """The Fig. 1 CAEs' training, validation and shown images."""
        c, ds = self.cfg, self.ds
        val, _, _ = make_splits(ds.train_y, c["val_images"], [], 0, seed)
        rest = np.setdiff1d(np.arange(len(ds.train_y)), val)
        order = np.random.default_rng([seed, RNG_FIG1_IMAGES]).permutation(rest)
        idx = np.sort(order[:c["fig_images"]])
        return ds.train_x[idx], ds.train_x[val[:CAE_VAL_IMAGES]], ds.train_x[val[:SHOWN_IMAGES]]

    def fig1_cae(self, seed, i, data):
        """Train the ``i``-th Fig. 1 CAE (stage ``fig1-<name>``); its (caption, filters)."""
        from .models import CAE
        c = self.cfg
        x, x_val, x_show = data
        name, caption, pool, noise = FIG1_VARIANTS[i]
        stage = f"fig1-{name}"
        cae = CAE(self.be, self.in_channels, c["cae_maps"], c["cae_kernel"], pool, noise,
                  seed=[seed, RNG_FIG1_CAE, i])
        self.echo(f"== {stage}: {cae.describe()}, {len(x)} images, "
                  f"{c['fig_epochs']} epoch(s)")
        res = self.train_cae(stage, cae, x, x_val, epochs=c["fig_epochs"], seed=seed)
        res = dict(res, caption=caption, pool=pool, noise=noise)
        self.results["fig1"][name] = res
        self.cae_figures(stage, cae, x_show, caption)
        return caption, cae.filters()

    def fig1_figure(self, panels):
        from . import figures
        c = self.cfg
        figures.filter_figure(panels, self.fig_path("fig1_filters.png"),
                              title=f"{c['cae_maps']} filters {c['cae_kernel']}x"
                                    f"{c['cae_kernel']} of four CAEs ({self.ds.name}, "
                                    f"cf. Fig. 1 of Masci et al. 2011)")

    # ------------------------------------------------------------------ cae
    def single_cae(self, seed):
        from .models import CAE
        c, ds = self.cfg, self.ds
        val, _, cae_idx = make_splits(ds.train_y, c["val_images"], [], c["cae_images"], seed)
        cae = CAE(self.be, self.in_channels, c["cae_maps"], c["cae_kernel"], c["cae_pool"],
                  c["cae_noise"], seed=[seed, RNG_SINGLE_CAE])
        self.echo(f"== cae: {cae.describe()}, {len(cae_idx)} images")
        stage = "cae"
        res = self.train_cae(stage, cae, ds.train_x[cae_idx], ds.train_x[val[:CAE_VAL_IMAGES]],
                             seed=seed)
        self.results["cae"] = res
        self.cae_figures(stage, cae, ds.train_x[val[:SHOWN_IMAGES]], cae.describe())

    # ------------------------------------------------------------------ stack
    def stack(self, seed, cae_idx, val):
        """Train (or load) the CAE stack of this seed, greedily, layer by layer."""
        from .train import encode_batches
        c, be, ds = self.cfg, self.be, self.ds
        stack = self.new_stack(seed)
        x, x_val = ds.train_x[cae_idx], ds.train_x[val[:CAE_VAL_IMAGES]]
        res_all = []
        for i, cae in enumerate(stack.caes):
            stage = f"stack-s{seed}-cae{i + 1}"
            self.echo(f"== {stage}: {cae.describe()} on {tuple(x.shape[1:])} inputs, "
                      f"{len(x)} images")
            res = self.train_cae(stage, cae, x, x_val, seed=seed)
            res_all.append(res)
            if i == 0:
                self.cae_figures(stage, cae, ds.train_x[val[:SHOWN_IMAGES]],
                                 f"{stage}: {cae.describe()}")
            else:
                self._curves(stage)
            if i + 1 < len(stack.caes):
                enc = cae.encode
                x = encode_batches(be, enc, x, c["eval_batch_size"])
                x_val = encode_batches(be, enc, x_val, c["eval_batch_size"])
        self.results["stacks"][str(seed)] = res_all
        from .diagnostics import stack_diagnostics
        diag = stack_diagnostics(be, stack, ds.train_x[val[:c["diag_images"]]],
                                 c["eval_batch_size"])
        self.results["diagnostics"][f"stack-s{seed}"] = diag
        for d in diag:
            self.echo(f"[stack-s{seed}] cae{d['layer']}: val loss {d['val_loss']:.4f}, codes "
                      f"span {d['effective_rank']} of {d['channels']} directions, "
                      f"{100 * d['saturated']:.1f}% saturated, filters "
                      f"{d['filter_scale']:.2f} x LeCun")
        return stack

    def new_stack(self, seed):
        """The CAE stack of this seed, untrained."""
        from kernels.contract import conv2d_output_hw, maxpool2d_output_hw
        from .models import CAEStack
        c = self.cfg
        hw = self.input_hw                       # the CNN's maps after each conv (+ pool)
        for k, pool in zip(c["kernels"], self._cnn_pools()):
            hw = maxpool2d_output_hw(conv2d_output_hw(hw, (k, k)), pool)
        # the top CAE pools too when its maps allow (it shapes its filters; nothing above)
        pools = list(self._cnn_pools()[:-1]) + [2 if min(hw) >= 2 else 1]
        return CAEStack(self.be, self.in_channels, c["maps"], c["kernels"], pools,
                        noise=c["cae_noise"], seed=seed, init_scale=c["cae_init_scale"])

    def _cnn_pools(self):
        n = len(self.cfg["maps"])
        return [2] * (n - 1) + [1] if n > 1 else [1]

    # ------------------------------------------------------------------ cnn
    def cnn(self, seed, size, init, train_idx, val, stack=None):
        from .models import CNN
        from .train import evaluate_classifier
        c, be, ds = self.cfg, self.be, self.ds
        cnn = CNN(be, self.in_channels, self.input_hw, self.n_classes, c["maps"], c["kernels"],
                  self._cnn_pools(), c["hidden"], seed=[seed, size])
        stage = f"cnn-{init}-n{size}-s{seed}"
        diag = self._init_cnn(cnn, stage, seed, size, stack, ds.train_x[val[:c["diag_images"]]])
        self.echo(f"== {stage}: {cnn.describe()}, {init} init, {size} training images")

        def final(model):
            loss, err = evaluate_classifier(be, model, self.test_x, self.test_y,
                                            c["eval_batch_size"])
            return {"test_loss": loss, "test_error": err, "test_images": len(self.test_x)}
        res = self.trainer.fit(
            stage, cnn, "cnn", ds.train_x[train_idx], ds.train_y[train_idx], self.cnn_sgd(),
            seed, x_val=ds.train_x[val], y_val=ds.train_y[val], final_eval=final,
            info={"init": init, "size": size, "seed": seed})
        res = dict(res, init=init, size=size, seed=seed)
        if res["epochs"] == 0:
            # --epochs 0: the initial (random or CAE) weights, which are no result to report
            res["untrained"] = True
            res["untrained_test_error"] = res.pop("test_error")
            self.echo(f"[{stage}] not trained (--epochs 0): weights/{stage}.npz holds its "
                      f"{init} initialisation; no test error is reported for it")
        else:
            self.echo(f"[{stage}] test error {res['test_error']:.2f}% on {res['test_images']} "
                      f"test images (best epoch {res['best_epoch']})")
        self.results["cnn"][stage] = res
        self.results["diagnostics"][stage] = {"init": diag}
        self._curves(stage)
        return res

    def _init_cnn(self, cnn, stage, seed, size, stack, x_diag):
        """Copy the stack into ``cnn`` (and rescale it, ``--cae-rescale activation``);
        return the diagnostics of its starting weights (and the rescaling factors)."""
        from .diagnostics import cnn_diagnostics, match_activation_spread
        from .models import CNN
        c, be = self.cfg, self.be
        factors = None
        if stack is not None:
            cnn.init_from_caes(stack)
            if c["cae_rescale"] == "activation":
                ref = CNN(be, self.in_channels, self.input_hw, self.n_classes, c["maps"],
                          c["kernels"], self._cnn_pools(), c["hidden"], seed=[seed, size])
                factors = match_activation_spread(be, cnn, ref, x_diag, c["eval_batch_size"])
        d = cnn_diagnostics(be, cnn, x_diag, c["eval_batch_size"])
        self.echo(f"[{stage}] at init: " + ", ".join(
            f"{x['name']} spans {x['effective_rank']}/{x['channels']} directions, "
            f"{100 * x['saturated']:.1f}% saturated" for x in d)
            + (f" (rescaled x {', '.join(f'{f:.2f}' for f in factors)})" if factors else ""))
        return {"layers": d, "rescale_factors": factors}

    def table(self, seeds, inits=("random", "cae"), sizes=None):
        c, ds = self.cfg, self.ds
        sizes = c["sizes"] if sizes is None else sizes
        for seed in seeds:
            val, train, cae_idx = make_splits(ds.train_y, c["val_images"], sizes,
                                              c["cae_images"], seed)
            stack = self.stack(seed, cae_idx, val) if "cae" in inits else None
            if stack is not None and seed == seeds[0]:
                summary.embedding_figure(self, seed, stack)
            for size in sizes:
                for init in inits:
                    self.cnn(seed, size, init, train[size], val,
                             stack if init == "cae" else None)

    # ------------------------------------------------------------------ results
    def table_rows(self):
        rows = []
        paper = PAPER.get(self.ds.name, {})
        for size in self.cfg["sizes"]:
            row = {"size": size}
            for init in ("random", "cae"):
                errs = [r["test_error"] for r in self.results["cnn"].values()
                        if r["size"] == size and r["init"] == init and "test_error" in r]
                if errs:
                    row[init] = {"mean": float(np.mean(errs)),
                                 "std": float(np.std(errs, ddof=1)) if len(errs) > 1 else 0.0,
                                 "n": len(errs), "errors": errs}
                row[f"paper_{init}"] = paper.get(size, {}).get(init)
            if "random" in row or "cae" in row:
                rows.append(row)
        return rows


def _fmt_err(cell):
    if not cell:
        return "—"
    if cell["n"] > 1:
        return f"{cell['mean']:.2f} ± {cell['std']:.2f} (n={cell['n']})"
    return f"{cell['mean']:.2f}"


def _fmt_paper(v):
    return "—" if v is None else f"{v:.2f}"


def results_markdown(cfg, rows, fig1, n_test, backend_desc, wall, cnn_runs=None,
                     diagnostics=None):
    lines = [f"# scae-np results: {cfg['dataset']}, experiment `{cfg['experiment']}`", ""]
    lines.append(f"Backend: {backend_desc}. Wall time: {wall:.0f} s.")
    lines.append("")
    if rows:
        title = PAPER.get(cfg["dataset"], {}).get("title", "no paper table for this dataset")
        lines += [f"## Test error (%) of the CNN, ours beside the paper's ({title})", "",
                  "| training images | ours: random init | ours: CAE init | paper: random init "
                  "| paper: CAE init |", "|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['size']} | {_fmt_err(r.get('random'))} | "
                         f"{_fmt_err(r.get('cae'))} | {_fmt_paper(r['paper_random'])} | "
                         f"{_fmt_paper(r['paper_cae'])} |")
        lines += ["", f"Ours: test error on {n_test} test images, mean ± sample standard "
                      f"deviation over seeds; CNN {cfg['epochs']} epochs max, lr {cfg['lr']}, "
                      f"momentum {cfg['momentum']}, batch {cfg['batch_size']}, validation "
                      f"{cfg['val_images']} training images. {PAPER_NOTE}", ""]
    if cnn_runs and not rows and all(r.get("untrained") for r in cnn_runs.values()):
        lines += ["The CNN was not trained (`--epochs 0`): `weights/` holds its initial "
                  "weights, and there is no test error to report.", ""]
    if cnn_runs:
        lines += ["### Every CNN run", "", "| run | init | training images | seed | epochs (best) "
                  "| converged | validation error % | test error % | training time s |",
                  "|---|---|---:|---:|---:|---|---:|---:|---:|"]
        for stage, r in cnn_runs.items():
            best_val = "—" if r.get("best_val") is None else f"{r['best_val']:.2f}"
            test = f"{r['test_error']:.2f}" if "test_error" in r else "— (not trained)"
            conv = {True: "yes", False: "**no**", None: "—"}[r.get("converged")]
            lines.append(f"| {stage} | {r['init']} | {r['size']} | {r['seed']} | {r['epochs']} "
                         f"({r['best_epoch']}) | {conv} | {best_val} | {test} | "
                         f"{r['train_time_s']:.0f} |")
        lines.append("")
        if any(r.get("converged") is False for r in cnn_runs.values()):
            lines += ["Not converged: the best validation epoch is the last one and validation "
                      "was still moving; raise --epochs (and continue with --resume).", ""]
    if diagnostics:
        lines += diagnostics_markdown(diagnostics, cfg)
    if fig1:
        lines += ["## Fig. 1 CAEs", "", "| CAE | validation loss (half squared error per image and channel) "
                  "| MSE / pixel |", "|---|---:|---:|"]
        for name, r in fig1.items():
            lines.append(f"| {r['caption']} | {r.get('val_loss', float('nan')):.3f} | "
                         f"{r.get('val_mse', float('nan')):.5f} |")
        lines += ["", "Filters: `figures/fig1_filters.png`.", ""]
    return "\n".join(lines) + "\n"


def diagnostics_markdown(diagnostics, cfg):
    """The stack and CNN-init diagnostics of a run (scae_np.diagnostics) as markdown."""
    from .diagnostics import compare_inits, stack_lines
    lines = [f"## Diagnostics ({cfg['diag_images']} validation images)", "",
             "Effective rank: principal directions of the codes (channel vectors over images "
             "and positions) that hold 99% of their variance; saturated: share of scaled-tanh "
             "outputs beyond 95% of its range; filter scale: filter RMS over the LeCun RMS.",
             ""]
    for name, diag in diagnostics.items():
        if name.startswith("stack-"):
            lines += [f"**{name}** (each CAE's codes, pooled):", ""] + stack_lines(diag) + [""]
    pairs = {}
    for name, d in diagnostics.items():
        if name.startswith("cnn-"):
            _, init, rest = name.split("-", 2)
            pairs.setdefault(rest, {})[init] = d["init"]
    for rest, p in pairs.items():
        if "cae" in p and "random" in p:
            f = p["cae"].get("rescale_factors")
            lines += [f"**CNN at initialisation, {rest}**"
                      + (f" (CAE filters rescaled x {', '.join(f'{v:.2f}' for v in f)})"
                         if f else "") + ":", ""]
            lines += compare_inits(p["cae"]["layers"], p["random"]["layers"]) + [""]
    return lines


def _describe_backend(be):
    s = be.name + (" (emulated)" if getattr(be, "emulated", False) else "")
    return s


# ------------------------------------------------------------------------------ resume
# What --resume does with the options given beside it (everything in RUNTIME_KEYS is taken
# from the command line anyway). Stage groups, by stage name: 'fig1' (fig1-*), 'stack'
# (stack-s<seed>-cae<i>), 'cae' (the single CAE) and 'cnn' (cnn-<init>-n<size>-s<seed>).
#: epoch counts: a stage not finished trains up to the new count; a finished one that ran all
#: its epochs is extended; fewer epochs than a stage already trained are refused.
RESUME_EPOCHS = {"epochs": ("cnn",), "cae_epochs": ("stack", "cae"), "fig_epochs": ("fig1",)}
#: SGD settings: they apply to the stages not started yet (a started stage keeps its own).
RESUME_NEXT_STAGES = {k: ("cnn",) for k in ("lr", "momentum", "lr_decay", "batch_size",
                                             "lr_schedule", "lr_final")}
RESUME_NEXT_STAGES.update({k: ("fig1", "stack", "cae")
                           for k in ("cae_lr", "cae_momentum", "cae_batch_size",
                                     "cae_lr_schedule", "cae_lr_final")})
#: early stopping: applies from now on to every stage not finished.
RESUME_UNFINISHED = {"patience": ("cnn",), "cae_patience": ("fig1", "stack", "cae")}
# Every other option (dataset, experiment, seeds, sizes, splits, architectures, noise ...)
# shapes what was already trained: --resume refuses a new value.


def stage_group(stage):
    for prefix, group in (("cnn-", "cnn"), ("stack-", "stack"), ("fig1-", "fig1")):
        if stage.startswith(prefix):
            return group
    return "cae" if stage == "cae" else None


def _dependents(stage, stages):
    """Stages trained on a stack CAE's output: the CAEs above it and the CNNs it initialises."""
    import re
    m = re.fullmatch(r"stack-s(\d+)-cae(\d+)", stage)
    if not m:
        return []
    seed, layer = m.group(1), int(m.group(2))
    out = []
    for s in stages:
        m2 = re.fullmatch(r"stack-s(\d+)-cae(\d+)", s)
        if (m2 and m2.group(1) == seed and int(m2.group(2)) > layer) or \
                re.fullmatch(rf"cnn-cae-n\d+-s{seed}", s):
            out.append(s)
    return sorted(out)


def stage_progress(out):
    """{stage: its checkpoint's state (epoch, done, stopped_early) and format} for every
    stage with a checkpoint in ``out`` (a diverged stage's aside copy does not count)."""
    from .train import read_checkpoint_meta
    d = os.path.join(out, "checkpoints")
    progress = {}
    if not os.path.isdir(d):
        return progress
    for name in sorted(os.listdir(d)):
        if not name.endswith(".npz") or name.startswith(".") or name.endswith(".diverged.npz"):
            continue
        try:
            meta = read_checkpoint_meta(os.path.join(d, name))
        except (OSError, ValueError, KeyError):
            continue          # unreadable: the stage's own resume will say so
        st = meta["state"]
        progress[name[:-4]] = {"epoch": st["epoch"], "done": bool(st["done"]),
                               "stopped_early": bool(st.get("stopped_early")),
                               "format": meta.get("format", 1)}
    return progress


def _opt(k):
    return "-e/--experiment" if k == "experiment" else "--" + k.replace("_", "-")


def _val(v):
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def resume_changes(saved_cfg, args, given, progress):
    """Compare the options given with --resume to the saved ones. Returns (changes, notices):
    ``changes`` {key: (saved, new)} to apply; raises UserError listing every option that
    cannot change, with its saved value."""
    changes, refused, notices = {}, [], []
    for k in sorted(given):
        if k in RUNTIME_KEYS or k == "dataset" or k not in saved_cfg:
            continue
        old, new = saved_cfg[k], getattr(args, k)
        if new == old:
            continue
        opt = f"{_opt(k)} {_val(new)} (saved: {_val(old)})"
        if k in RESUME_EPOCHS:
            mine = {s: p for s, p in progress.items() if stage_group(s) in RESUME_EPOCHS[k]}
            over = [f"{s} ({p['epoch']})" for s, p in mine.items() if p["epoch"] > new]
            if over:
                refused.append(f"{opt}: fewer epochs than already trained by "
                               f"{', '.join(over)}")
                continue
            grow = [s for s, p in mine.items() if p["done"] and not p["stopped_early"]
                    and p["format"] >= 2 and new > p["epoch"]]
            blocked = [s for s in grow if _dependents(s, progress)]
            if blocked:
                deps = sorted({d for s in blocked for d in _dependents(s, progress)},
                              key=lambda d: (stage_group(d) != "stack", d))
                refused.append(f"{opt}: cannot extend {', '.join(blocked)}, since "
                               f"{', '.join(deps)} already trained on their output")
                continue
            old_fmt = [s for s, p in mine.items() if p["done"] and p["format"] < 2
                       and new > p["epoch"]]
            note = f"{_opt(k)} {_val(new)} (was {_val(old)}) applies to the stages not finished"
            if grow:
                note += f", and extends the finished ones: {', '.join(grow)}"
            if old_fmt:
                note += (f"; {', '.join(old_fmt)} finished under an older checkpoint format "
                         f"and stay as they are")
            notices.append(note)
        elif k in RESUME_NEXT_STAGES:
            started = sorted(s for s in progress if stage_group(s) in RESUME_NEXT_STAGES[k])
            note = f"{_opt(k)} {_val(new)} (was {_val(old)}) applies to the stages not started yet"
            if started:
                note += f"; those started keep {_val(old)}: {', '.join(started)}"
            notices.append(note)
        elif k in RESUME_UNFINISHED:
            done = sorted(s for s, p in progress.items()
                          if stage_group(s) in RESUME_UNFINISHED[k] and p["done"])
            note = f"{_opt(k)} {_val(new)} (was {_val(old)}) applies to the stages not finished"
            if done:
                note += f"; finished ones stay as they are: {', '.join(done)}"
            notices.append(note)
        else:
            refused.append(opt)
            continue
        changes[k] = (old, new)
    if refused:
        raise UserError(
            "--resume cannot change what the run already trained with these options: "
            + "; ".join(refused) + ". Leave them out to continue the run as it was, or start "
            "a new run with another --out")
    return changes, notices


def given_options(argv):
    """The ``dest`` of every option given on the command line (not left to its default)."""
    p = build_parser()
    for a in p._actions:
        a.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def resume_command(dataset, out, extra=""):
    import shlex
    return f"python -m scae_np.run {dataset} --resume --out {shlex.quote(str(out))}" + extra


# --------------------------------------------------------------------- errors of the machine
_DISK_FULL = {getattr(errno, n) for n in ("ENOSPC", "EDQUOT") if hasattr(errno, n)}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def os_error_message(e, out, dataset, started):
    """A one-line message for an OSError of writing the run's files, or None (a bug: let
    it show). ``started``: the run has a config.json, so --resume can continue it."""
    where = e.filename or out
    folder = os.path.dirname(str(where)) or str(out)
    then = (f"; then {resume_command(dataset, out)} continues the run" if started
            else ", then run the command again")
    if e.errno in _DISK_FULL:
        return (f"the disk is full: no space left on the device holding {folder} (writing "
                f"{where}). Free some space there{then}")
    if e.errno in _NOT_WRITABLE:
        return (f"cannot write {where} ({e.strerror}): the output folder {out} must be "
                f"writable; choose another --out or fix its permissions")
    return None


def prepare_out(out, resume):
    """Check the output folder can be one (and create it): UserError otherwise."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file, not a folder: choose another --out, or move "
                        f"the file away")
    if resume:
        cfg_path = os.path.join(out, "config.json")
        if not os.path.exists(cfg_path):
            raise UserError(f"--resume: {cfg_path} does not exist; nothing to continue "
                            f"(leave out --resume to start a new run there)")
        return
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        why = ("a part of that path is a file" if isinstance(e, (NotADirectoryError,
                                                                FileExistsError))
               else e.strerror)
        raise UserError(f"cannot create the output folder {out} ({why}): choose another "
                        f"--out") from None


# ------------------------------------------------------------------------------ main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)          # exits 2 with a message on bad options
    try:
        return _main(args, argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:      # before the folder was locked: nothing written yet
        print("\ninterrupted", file=sys.stderr)
        return 130


def _main(args, argv):
    """Lock the output folder, then run; machine errors (disk full, read-only folder) and
    Ctrl-C become one-line messages and exit statuses (2, 130)."""
    from ._lock import FolderLocked, RunLock
    t_start = time.time()
    if args.resume and not args.out:
        raise UserError("--resume needs --out: the folder of the run to continue")
    out = args.out or os.path.join(
        "runs", f"{args.dataset}-{args.experiment}-{time.strftime('%Y%m%d-%H%M%S')}")
    prepare_out(out, args.resume)
    lock = RunLock(out, command="python -m scae_np.run " + " ".join(argv))
    try:
        lock.acquire()
    except FolderLocked as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(os_error_message(e, out, args.dataset, False)
                        or f"cannot lock {out}: {e}") from None
    if lock.warning:
        print(f"note: {lock.warning}", file=sys.stderr)
    session = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "resumed": bool(args.resume),
               "command": "python -m scae_np.run " + " ".join(argv), "outcome": "failed"}
    ctx = {"out": out, "session": session, "t_start": t_start}
    try:
        return _run(args, argv, ctx)
    except KeyboardInterrupt:
        session["outcome"] = "interrupted"
        if ctx.get("config_doc") is not None or args.resume:
            print(f"\ninterrupted; continue with: {resume_command(args.dataset, out)}",
                  file=sys.stderr)
        else:
            print("\ninterrupted before the run started; nothing to resume", file=sys.stderr)
        return 130
    except OSError as e:
        msg = os_error_message(e, out, args.dataset,
                               ctx.get("config_doc") is not None or args.resume)
        if msg is None:
            raise
        session["outcome"] = "disk full" if e.errno in _DISK_FULL else "not writable"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    finally:
        _record_session(ctx)
        lock.release()


def _record_session(ctx):
    """Append this process's session (wall time, outcome) to config.json; best effort."""
    from .train import write_json
    doc = ctx.get("config_doc")
    if doc is None:
        return
    s = dict(ctx["session"], wall_s=round(time.time() - ctx["t_start"], 1))
    tr = ctx.get("trainer")
    s["trained"] = bool(tr is not None and (tr.epochs_run or tr.stages_finished))
    doc.setdefault("sessions", []).append(s)
    try:
        write_json(os.path.join(ctx["out"], "config.json"), doc)
    except OSError:
        pass


def _load_resumed(args, argv, out):
    """The saved config of the run in ``out``, with this command's runtime options and the
    resume changes it may apply (printed as notices); and the config document."""
    given = given_options(argv)
    with open(os.path.join(out, "config.json")) as f:
        saved = json.load(f)
    cfg = dict(LEGACY, **saved["config"])
    if cfg["dataset"] != args.dataset:
        raise UserError(f"--resume: the run in {out} is on {cfg['dataset']}, not "
                        f"{args.dataset}")
    changes, notices = resume_changes(cfg, args, given, stage_progress(out))
    for k, (_, new) in changes.items():
        cfg[k] = new
    for k in RUNTIME_KEYS:
        cfg[k] = getattr(args, k, None)
    # where the data is and which backend ran: the saved ones unless given again
    was = saved.get("runtime", {})
    if cfg["data_dir"] is None:
        cfg["data_dir"] = was.get("data_dir")
    if cfg["backend"] is None and was.get("backend"):
        cfg["backend"], cfg["emulate"] = was["backend"], bool(was.get("emulate"))
    if changes:
        saved.setdefault("resumes", []).append({
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": "python -m scae_np.run " + " ".join(argv),
            "changed": {k: {"was": a, "now": b} for k, (a, b) in changes.items()}})
        saved["config"].update({k: b for k, (a, b) in changes.items()})
        for n in notices:
            print(f"note: {n}; recorded in {os.path.join(out, 'config.json')}", file=sys.stderr)
    return cfg, saved


def _run(args, argv, ctx):
    """The run itself: settings, backend, data, the experiment's stages, the results."""
    from .train import Trainer, write_json
    out = ctx["out"]
    cfg, saved = _settings(args, argv, out)
    be, backend_desc, why = _open_backend(cfg, args)
    ds = _load_data(cfg)
    if saved is None:
        saved = _config_doc(cfg, argv, be, backend_desc, why)
    write_json(os.path.join(out, "config.json"), saved)
    ctx["config_doc"] = saved
    print(f"output: {out}", flush=True)

    trainer = Trainer(be, out, progress=cfg["progress"], resume=bool(args.resume),
                      stop_after_epochs=cfg["stop_after_epochs"],
                      eval_batch=cfg["eval_batch_size"])
    ctx["trainer"] = trainer
    run = Run(cfg, be, ds, out, trainer)
    status = _run_stages(run, cfg, out, trainer, ctx)
    if status is not None:
        return status
    _write_results(run, cfg, out, trainer, saved, backend_desc, ctx)
    ctx["session"]["outcome"] = "done"
    return 0


def _settings(args, argv, out):
    """(cfg, saved config document or None): the saved ones on --resume, else the preset
    with the options given."""
    from ._atomic import remove_partial_files
    if args.resume:
        cfg, saved = _load_resumed(args, argv, out)
        for p in remove_partial_files(out):
            print(f"note: removed {p}, left by a write that was cut short", file=sys.stderr)
    else:
        if os.path.exists(os.path.join(out, "config.json")):
            raise UserError(f"{out} already holds a run (config.json); continue it with "
                            f"--resume, or choose another --out")
        cfg, saved = resolve_config(args), None
    validate_config(cfg)
    return cfg, saved


def _open_backend(cfg, args):
    """The backend, its one-line description (printed) and why no GPU backend works (a
    dict, empty when one was asked for or works; printed under --verbose)."""
    be, why = pick_backend(cfg["backend"], cfg["emulate"])
    backend_desc = summary.backend_line(_describe_backend(be), why)
    if why and args.verbose:
        print("why no GPU backend:" + summary.reasons_text(why), flush=True)
    print(f"scae-np: {cfg['dataset']}, experiment {cfg['experiment']}, backend {backend_desc}",
          flush=True)
    if args.threads and not _THREADS_APPLIED:
        print("note: --threads came after NumPy was loaded; it has no effect in this process",
              file=sys.stderr)
    return be, backend_desc, why or {}


def _load_data(cfg):
    from .data import DataError, load_dataset
    try:
        ds = load_dataset(cfg["dataset"], data_dir=cfg["data_dir"],
                          download=not cfg["no_download"])
    except DataError as e:
        raise UserError(str(e)) from None
    print(f"data: {ds.name}: {len(ds.train_x)} training, {len(ds.test_x)} test images "
          f"{tuple(ds.train_x.shape[1:])}", flush=True)
    return ds


def _config_doc(cfg, argv, be, backend_desc, why):
    """config.json of a new run: the settings, the command, where it ran."""
    return {
        "config": {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS or k == "backend"},
        "command": "python -m scae_np.run " + " ".join(argv),
        "runtime": {"data_dir": os.path.abspath(cfg["data_dir"]) if cfg["data_dir"] else None,
                    "backend": be.name, "emulate": bool(getattr(be, "emulated", False))},
        "backend": backend_desc,
        "backend_reasons": why,
        "versions": {"python": platform.python_version(), "numpy": np.__version__},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count()},
    }


def _run_stages(run, cfg, out, trainer, ctx):
    """Run the experiment's stages (in worker processes with --jobs); None when they all
    finished, else the exit status (training stopped, diverged or failed)."""
    from kernels import BackendUnavailableError
    from .parallel import run_parallel
    from .train import Diverged, Interrupted, TrainingError
    seeds, exp = cfg["seeds"], cfg["experiment"]
    try:
        try:
            run.check()
        except ValueError as e:    # a model that cannot be built with these options
            raise UserError(str(e)) from None
        if run_parallel(run):          # --jobs N: every stage ran in worker processes
            exp = None
        if exp in ("default", "fig1"):
            run.fig1(seeds[0])
        if exp == "cae":
            run.single_cae(seeds[0])
        if exp in ("default", "table"):
            run.table(seeds)
        if exp == "cnn":
            run.table(seeds[:1], inits=(cfg["init"],), sizes=cfg["sizes"][:1])
    except Interrupted as e:
        ctx["session"]["outcome"] = "stopped"
        print(f"{e}; continue with:  {resume_command(cfg['dataset'], out)}", file=sys.stderr)
        return 3
    except Diverged as e:
        ctx["session"]["outcome"] = "diverged"
        print(f"error: {_diverged_message(e, cfg, out, trainer)}", file=sys.stderr)
        return 1
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BackendUnavailableError as e:
        raise UserError(str(e)) from None
    return None


def _write_results(run, cfg, out, trainer, saved, backend_desc, ctx):
    """results.json and results.md (printed), with the wall time of every session that
    trained."""
    from .train import _atomic_write_text, write_json
    wall_now = time.time() - ctx["t_start"]
    trained_now = bool(trainer.epochs_run or trainer.stages_finished)
    wall = _previous_wall_time(out, saved) + (wall_now if trained_now else 0.0)
    rows = run.table_rows()
    results = {"dataset": cfg["dataset"], "experiment": cfg["experiment"],
               "backend": backend_desc, "wall_time_s": round(wall, 1),
               "wall_time_this_session_s": round(wall_now, 1),
               "table": rows, "paper": {str(k): v for k, v in
                                        PAPER.get(cfg["dataset"], {}).items()},
               "paper_note": PAPER_NOTE, "fig1": run.results["fig1"],
               "stacks": run.results["stacks"], "cnn": run.results["cnn"],
               "cae": run.results["cae"], "embedding": run.results.get("embedding"),
               "diagnostics": run.results["diagnostics"],
               "figures": sorted(set(run.figures))}
    write_json(os.path.join(out, "results.json"), results)
    md = results_markdown(cfg, rows, run.results["fig1"], len(run.test_x), backend_desc, wall,
                          run.results["cnn"], run.results["diagnostics"])
    md = summary.with_verdict(md, cfg, rows)
    _atomic_write_text(os.path.join(out, "results.md"), md)
    print()
    print(md)
    print(f"wrote {out}/results.md, results.json, metrics.jsonl, figures/ "
          f"({len(set(run.figures))} PNG), weights/, checkpoints/")


def _previous_wall_time(out, doc):
    """Wall time of the earlier sessions that trained (recorded in config.json); for a run
    from before sessions were recorded, the wall time its results.json holds."""
    if "sessions" in doc:
        return sum(s.get("wall_s", 0.0) for s in doc["sessions"] if s.get("trained"))
    try:
        with open(os.path.join(out, "results.json")) as f:
            return float(json.load(f).get("wall_time_s", 0.0))
    except (OSError, ValueError):
        return 0.0


def _diverged_message(e, cfg, out, trainer):
    opt = "--lr" if e.kind == "cnn" else "--cae-lr"
    lower = float(f"{e.lr / 10:.3g}")
    aside = trainer.diverged_path(e.stage)
    kept = f" (its last checkpoint is kept as {aside})" if os.path.exists(aside) else ""
    return (f"stage {e.stage} diverged in epoch {e.epoch}: {e.why}. Lower {opt} (now "
            f"{e.lr:g}), e.g. to {lower:g}, and continue with: "
            f"{resume_command(cfg['dataset'], out, f' {opt} {lower:g}')} (finished stages "
            f"and their checkpoints are kept; {e.stage} starts again{kept})")


if __name__ == "__main__":
    sys.exit(main())
