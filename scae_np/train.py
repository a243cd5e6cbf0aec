"""Training loops: SGD epochs with early stopping, per-epoch metrics and resumable checkpoints.

One *stage* is one model trained by SGD (a CAE, one layer of a CAE stack, a CNN). A stage:

* shuffles the training images every epoch with its own RNG (seeded from the run's seed and
  the stage's name, so stages are independent and a resumed run draws the same numbers);
* runs on-line (``batch_size=1``) or mini-batch SGD with optional momentum and a learning-rate
  schedule (:meth:`SGD.lr_at`): ``decay``, ``lr * lr_decay ** epoch``; or annealed over the
  planned epochs (``horizon``, fixed when the stage starts) from ``lr`` down to
  ``lr * lr_final`` at the last planned epoch, ``exp`` (geometric) or ``cosine``;
* evaluates the validation split after every epoch (error % for a CNN, reconstruction loss
  for a CAE), keeps the parameters of the best epoch, stops early after ``patience`` epochs
  without improvement, and ends with the best parameters; the result says whether the stage
  ``converged`` (:func:`converged`);
* stops with :class:`Diverged` (a :class:`TrainingError`) when training diverges, by the rule
  below;
* writes, after every epoch, a checkpoint ``checkpoints/<stage>.npz`` atomically (temp file +
  ``os.replace``): parameters (``param/<name>``), momentum buffers (``vel/<name>``), the best
  parameters so far (``best/<name>``) and a JSON ``meta`` string (format, the stage's SGD
  settings, epoch, metrics history, the RNG states, early-stopping state, and, once the stage
  is done, its result); then appends the epoch's line to ``metrics.jsonl``.

Stage completion, in this order: the epoch's checkpoint; the final parameters (the best
epoch's) evaluated (``final_eval``, e.g. the test error) and written as a plain
``weights/<stage>.npz``; the metrics line; and last the checkpoint again, now marked done with
the result -- the commit point. A run killed at any moment before it redoes at most the epoch
in progress (or only the final evaluation); one killed after it finds the stage done. A done
stage whose weights file or metrics lines are missing (deleted, or written by an older
version that committed first) is repaired from its checkpoint on resume.

Resuming (``resume=True``) goes through one path, :meth:`Trainer.restore`: a stage
continues from its last checkpoint to the same numbers an uninterrupted run gets (NumPy
backend, same machine), with the SGD settings it started with (a new learning rate applies
to stages not started yet) except ``epochs`` and ``patience``, which are taken from the
caller: more epochs continue an unfinished stage, and reopen a finished one that ran all its
epochs (its checkpoint keeps the last epoch's parameters and momentum, so the extension is the
run a larger ``epochs`` would have made). Fewer epochs than a stage already trained are an
error.

Divergence (:data:`DIVERGENCE_FACTOR`, :data:`DIVERGENCE_MIN_BATCHES`): a stage has diverged

* at once, when a mini-batch loss is not finite (NaN or Inf);
* when the mean training loss of the epoch so far, once at least ``min(10, batches per
  epoch)`` mini-batches are in, exceeds ``10 x`` the stage's reference loss: for a CNN the
  cross-entropy of guessing, ``ln(n_classes)`` (chance level; 2.30 for 10 classes), for a CAE
  its reconstruction loss at initialisation, measured on the first 256 training images before
  the first update (kept in the checkpoint).

Healthy runs stay far below: a CNN's epoch loss starts near ``ln(n_classes)`` and falls; a
CAE's falls from its starting loss however small that is (the rule is a ratio). On MNIST with
the paper's CNN (batch 16, momentum 0.9) lr 0.01 trains, 0.03 already diverges (epoch losses
27 and 48), lr 1e6 gives 1e9 and 1e30 gives 1e33; all of those stop in the first epoch. A CAE
with a bounded output (logistic pixels) cannot exceed a few times its starting loss: an
over-large learning rate there shows as a loss stuck high, which no rule flags. A diverged
stage's checkpoint is moved aside to ``checkpoints/<stage>.diverged.npz`` (kept for a look),
so that a resume with a lower learning rate starts that stage afresh (a stage being extended
too: from its first epoch); every other stage's files stay.

Writers: a Trainer writes its stage's checkpoint and weights files (each atomically) and hands
every metrics record to its ``log`` (default: :class:`MetricsLog`, appending to
``metrics.jsonl``). Only one process may write ``metrics.jsonl`` (``sync_stage`` rewrites it);
worker processes running stages in parallel should get a ``log`` that passes records to the
parent, or none, leaving the parent to call ``sync_stage(stage, history)`` from the stage's
checkpoint, which holds the stage's history.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import zlib
from dataclasses import dataclass

import numpy as np

from ._atomic import atomic_open, name_os_error

from .models import load_npz, save_npz

#: Checkpoint layout version: 2 keeps the last epoch's parameters in ``param/`` of a done
#: stage (1 kept the final ones there) and the stage's SGD settings in ``meta``.
CKPT_FORMAT = 2
#: A stage diverged when its running epoch loss exceeds this many times its reference loss.
DIVERGENCE_FACTOR = 10.0
#: ... once this many mini-batches (or the whole epoch, if it has fewer) are in.
DIVERGENCE_MIN_BATCHES = 10
#: Training images the CAE's starting (reference) loss is measured on.
REFERENCE_IMAGES = 256
#: On a device backend with a progress bar: seconds between reads of the mini-batch losses
#: (each read is one host sync; without a bar they are read once, at the end of the epoch).
LOSS_READ_S = 5.0


class Interrupted(Exception):
    """Raised after the number of epochs asked for by ``stop_after_epochs`` (a testing aid that
    behaves like a kill right after a checkpoint)."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


class Diverged(TrainingError):
    """A stage diverged (the rule is in the module docstring). ``stage``, ``kind`` ('cnn' or
    'cae'), ``epoch`` (1-based), ``lr`` (the stage's base learning rate) and ``why`` say where
    and how; the message ends with what to change."""

    def __init__(self, stage, kind, epoch, lr, why):
        self.stage, self.kind, self.epoch, self.lr, self.why = stage, kind, epoch, lr, why
        super().__init__(f"stage {stage}: training diverged in epoch {epoch}: {why}; lower "
                         f"the learning rate (now {lr:g})")


@dataclass
class SGD:
    """Hyperparameters of one SGD stage."""
    lr: float
    epochs: int = 1
    batch_size: int = 1
    momentum: float = 0.0
    lr_decay: float = 1.0
    patience: int = 0           # epochs without validation improvement before stopping; 0: off
    schedule: str = "decay"     # "decay": lr * lr_decay**epoch; "exp"/"cosine": annealed
    lr_final: float = 1.0       # annealed schedules end at lr * lr_final (a fraction of lr)
    horizon: int = 0            # epochs the annealing spans; 0: ``epochs`` (set at the start)

    #: fields a resumed stage takes from the caller; the others stay as the stage started
    #: (``horizon`` among them: more epochs after it continue at ``lr * lr_final``)
    RESUMABLE = ("epochs", "patience")
    SCHEDULES = ("decay", "exp", "cosine")

    def __post_init__(self):
        if self.schedule not in self.SCHEDULES:
            raise ValueError(f"schedule must be one of {self.SCHEDULES}, got {self.schedule!r}")
        if not 0 < float(self.lr_final) <= 1:
            raise ValueError(f"lr_final is a fraction of the starting rate in (0, 1], got "
                             f"{self.lr_final!r}")

    def planned(self):
        """These settings with the annealing horizon fixed (``epochs`` if not set)."""
        return self if self.horizon else dataclasses.replace(self, horizon=int(self.epochs))

    def lr_at(self, epoch):
        """The learning rate of epoch ``epoch`` (0-based)."""
        if self.schedule == "decay":
            return self.lr * self.lr_decay ** epoch
        h = int(self.horizon or self.epochs)
        if h > 1:
            t = min(epoch, h - 1) / (h - 1)
        else:                 # a one-epoch horizon: that epoch at lr, any later at the end
            t = 0.0 if epoch == 0 else 1.0
        if self.schedule == "exp":
            return self.lr * float(self.lr_final) ** t
        return self.lr * (self.lr_final + (1.0 - self.lr_final) * 0.5 * (1.0 + math.cos(math.pi * t)))

    def resumed(self, saved):
        """The settings of a stage that started with ``saved`` (a dict from its checkpoint)
        and is continued under this SGD: ``saved`` except for :attr:`RESUMABLE`."""
        names = {f.name for f in dataclasses.fields(self)}
        kept = {k: v for k, v in saved.items() if k in names and k not in self.RESUMABLE}
        return dataclasses.replace(self, **kept)


def stage_seed(seed, name):
    """Seed material for a stage's RNG: the run's seed and a hash of the stage's name."""
    return [int(seed), zlib.crc32(name.encode())]


def _atomic_write_text(path, text):
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path, obj):
    _atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class MetricsLog:
    """``metrics.jsonl``: one JSON object per stage epoch. On resume a stage's lines are made
    to agree with its checkpoint (lines of epochs after it dropped, missing ones restored).
    One process writes it (see the module docstring)."""

    def __init__(self, path):
        self.path = path

    def records(self):
        if not os.path.exists(self.path):
            return []
        out = []
        with open(self.path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:   # a line cut short by a kill
                        pass
        return out

    def append(self, rec):
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec, default=_json_default) + "\n")
                f.flush()
        except OSError as e:
            raise name_os_error(e, self.path) from e

    def sync_stage(self, stage, history):
        """Make ``stage``'s lines equal ``history`` (the file is rewritten, atomically, only
        if they differ or a line is cut short)."""
        def dump(r):
            return json.dumps(r, default=_json_default)
        lines = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                lines = [ln.rstrip("\n") for ln in f if ln.strip()]
        want = [dump(r) for r in history]
        new, mine, broken, placed = [], [], False, False
        for ln in lines:
            try:
                r = json.loads(ln)
            except json.JSONDecodeError:
                broken = True
                continue
            if r.get("stage") != stage:
                new.append(ln)
                continue
            mine.append(r)
            if not placed:               # the stage's lines stay where they began
                new.extend(want)
                placed = True
        if not placed:
            new.extend(want)
        if not broken and mine == [json.loads(w) for w in want]:
            return
        _atomic_write_text(self.path, "".join(ln + "\n" for ln in new))


# -------------------------------------------------------------------------- evaluation
def _batch_to_device(backend, a):
    """``backend.to_device`` of a host batch, copied first when it is a read-only view (the
    datasets are read-only, and numba's CUDA simulator writes every kernel argument back to
    its host array after a launch, inputs included)."""
    if isinstance(a, np.ndarray) and not a.flags.writeable:
        a = a.copy()
    return backend.to_device(a)


def evaluate_classifier(backend, model, x, y, batch_size=256):
    """Mean cross-entropy and error (%) of a CNN on host arrays (x, y), in batches. The
    per-batch losses and the error count stay on the device; one read at the end."""
    from .layers import softmax_cross_entropy
    xp = backend.xp
    n = len(x)
    losses = _BatchLosses(backend, -(-n // batch_size))
    wrong = None
    for i in range(0, n, batch_size):
        xb = _batch_to_device(backend, x[i:i + batch_size])
        yb = _batch_to_device(backend, y[i:i + batch_size])
        logits = model.forward(xb)
        loss, _ = softmax_cross_entropy(logits, yb, xp)
        losses.add(loss)
        w = xp.sum(xp.argmax(logits, axis=1) != yb)
        wrong = w if wrong is None else wrong + w
    loss_sum = sum(v * len(x[i:i + batch_size])
                   for v, i in zip(losses.read(), range(0, n, batch_size)))
    wrong = int(backend.to_host(wrong)) if wrong is not None else 0
    return loss_sum / n, 100.0 * wrong / n


def evaluate_reconstruction(backend, cae, x, batch_size=256):
    """Mean reconstruction loss (the CAE's training loss: half squared error per image and
    channel) and per-pixel MSE of a CAE on clean host images x, in batches (the per-batch
    losses stay on the device; one read at the end)."""
    n = len(x)
    losses = _BatchLosses(backend, -(-n // batch_size))
    for i in range(0, n, batch_size):
        xb = _batch_to_device(backend, x[i:i + batch_size])
        loss, _ = cae.reconstruction_loss(cae.reconstruct(xb), xb)
        losses.add(loss)
    loss = sum(v * len(x[i:i + batch_size])
               for v, i in zip(losses.read(), range(0, n, batch_size))) / n
    return loss, 2.0 * loss / int(np.prod(x.shape[2:]))


def computes_on_host(backend):
    """True when the backend's arrays are host (NumPy) arrays: the numpy backend and the
    emulated/simulated GPU backends. Reading a loss there costs nothing, so the trainer
    reads (and checks) it after every step; on a device every read is a host sync."""
    return backend.xp is np


class _BatchLosses:
    """The per-mini-batch losses of one pass, kept where the backend computes.

    On a host backend (:func:`computes_on_host`) each loss is read at once (``float``), as the loop always did. On a device each loss is copied, on the
    device, into slot ``b`` of a float64 buffer (``buf[b:b+1] = loss``: a device-to-device
    copy queued behind the step, no host sync), and :meth:`read` copies the slots not yet
    read to the host in one transfer. The values read are the float32 losses widened to
    float64, the same numbers ``float(loss)`` gives, so sums taken over them in batch order
    are bit-identical on every backend."""

    def __init__(self, backend, n_batches):
        self.be = backend
        self.host = computes_on_host(backend)
        self.n = 0                  # losses added
        self.done = 0               # losses read
        self._vals = []             # host values read so far
        self._buf = None if self.host else backend.xp.zeros(max(1, n_batches), np.float64)

    def add(self, loss):
        if self.host:
            self._vals.append(float(loss))
        else:
            self._buf[self.n:self.n + 1] = loss
        self.n += 1

    def unread(self):
        return self.n - self.done

    def read(self):
        """The losses added since the last read (host floats, in batch order)."""
        if not self.host and self.n > self.done:
            self._vals.extend(np.asarray(self.be.to_host(self._buf[self.done:self.n]),
                                         dtype=np.float64).tolist())
        new = self._vals[self.done:self.n]
        self.done = self.n
        return new


class _Resident:
    """A stage's training set where the backend computes, for the whole stage.

    On a device backend the images (and labels) are uploaded once and each epoch's
    permutation once; a mini-batch is gathered on the device (``x_dev[perm_dev[i:i+bs]]``),
    so a step copies nothing from the host. (The set must fit in device memory: MNIST's
    60k images are 188 MB, CIFAR-10's 50k 614 MB, a second-layer CAE's codes a few GB.)
    On a host backend the batches are gathered from the host arrays as before."""

    def __init__(self, backend, x, y=None):
        self.be = backend
        self.host = computes_on_host(backend)
        if self.host:
            self.x, self.y = x, y
        else:
            self.x = _batch_to_device(backend, x)
            self.y = None if y is None else _batch_to_device(backend, np.asarray(y))
        self.perm = None

    def order(self, perm):
        """Use host permutation ``perm`` for the next batches (uploaded once)."""
        self.perm = perm if self.host else self.be.to_device(perm)

    def batch(self, i, j):
        """Images (and labels, or None) ``perm[i:j]``, on the backend."""
        idx = self.perm[i:j]
        if self.host:
            xb = _batch_to_device(self.be, self.x[idx])
            yb = None if self.y is None else _batch_to_device(self.be, self.y[idx])
            return xb, yb
        return self.x[idx], (None if self.y is None else self.y[idx])


def encode_batches(backend, encoder, x, batch_size=256):
    """``encoder(batch)`` over host images x, in batches; a host float array."""
    outs = [np.asarray(backend.to_host(encoder(_batch_to_device(backend,
                                                                x[i:i + batch_size]))))
            for i in range(0, len(x), batch_size)]
    return np.ascontiguousarray(np.concatenate(outs, axis=0))


# ---------------------------------------------------------------------------- trainer
def _new_state():
    return {"epoch": 0, "history": [], "best": None, "best_epoch": 0, "bad_epochs": 0,
            "train_time_s": 0.0, "done": False, "result": None, "stopped_early": False,
            "start_loss": None}


@dataclass
class Restored:
    """What :meth:`Trainer.restore` read from a stage's checkpoint."""
    path: str
    meta: dict
    params: dict            # param/: the parameters after the last epoch trained
    velocity: dict          # vel/
    best: dict              # best/: the best epoch's parameters ({} without validation)

    @property
    def state(self):
        return self.meta["state"]

    @property
    def done(self):
        return bool(self.state["done"])

    def final_params(self):
        """The stage's final parameters: the best epoch's, if it was not the last one.
        (Format 1 checkpoints of done stages hold the final ones in ``param/``.)"""
        st = self.state
        if (self.meta.get("format", 1) >= 2 and self.best
                and st["best_epoch"] != st["epoch"]):
            return self.best
        return self.params

    def extendable(self, epochs):
        """True if this done stage ran all its epochs and ``epochs`` asks for more."""
        st = self.state
        return (self.done and self.meta.get("format", 1) >= 2 and not st.get("stopped_early")
                and epochs > st["epoch"])


def read_checkpoint_meta(path):
    """The ``meta`` dict of a checkpoint file (reads only that member)."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["meta"]))


class Trainer:
    """Runs stages in one output folder. ``progress``: tqdm bars (images/s, loss) on stderr;
    ``stop_after_epochs``: raise :class:`Interrupted` after that many epochs in this process;
    ``log``: where metrics records go (default: the folder's ``metrics.jsonl``)."""

    def __init__(self, backend, out_dir, progress=True, stop_after_epochs=None,
                 eval_batch=256, resume=False, echo=None, log=None):
        self.be = backend
        self.out = out_dir
        self.log = log if log is not None else MetricsLog(os.path.join(out_dir, "metrics.jsonl"))
        self.progress = progress
        self.stop_after_epochs = stop_after_epochs
        self.eval_batch = eval_batch
        self.resume = resume
        self.epochs_run = 0          # epochs trained by this process
        self.stages_finished = 0     # stages this process brought to done
        self._echo = echo

    def echo(self, msg):
        if self._echo is not None:
            self._echo(msg)
            return
        from tqdm import tqdm
        tqdm.write(msg)
        sys.stdout.flush()

    def ckpt_path(self, stage):
        return os.path.join(self.out, "checkpoints", f"{stage}.npz")

    def diverged_path(self, stage):
        return os.path.join(self.out, "checkpoints", f"{stage}.diverged.npz")

    def weights_path(self, stage):
        return os.path.join(self.out, "weights", f"{stage}.npz")

    # ----------------------------------------------------------------- checkpoints
    def _save_ckpt(self, stage, kind, sgd, params, velocity, rng, model, state, best_params):
        arrays = {f"param/{k}": v for k, v in params.items()}
        arrays.update({f"vel/{k}": v for k, v in velocity.items()})
        if best_params is not None:
            arrays.update({f"best/{k}": v for k, v in best_params.items()})
        meta = {"format": CKPT_FORMAT, "stage": stage, "kind": kind,
                "sgd": dataclasses.asdict(sgd), "state": state, "rng": rng.bit_generator.state}
        if getattr(model, "rng", None) is not None:
            meta["model_rng"] = model.rng.bit_generator.state
        arrays["meta"] = np.array(json.dumps(meta, default=_json_default))
        save_npz(self.ckpt_path(stage), arrays)

    def restore(self, stage):
        """The stage's checkpoint, read, when resuming and there is one; else None. The one
        place a checkpoint is read (``fit`` and ``load_done`` go through it)."""
        path = self.ckpt_path(stage)
        if not (self.resume and os.path.exists(path)):
            return None
        arrays = load_npz(path)
        meta = json.loads(str(arrays.pop("meta")))
        pick = lambda pre: {k[len(pre):]: v for k, v in arrays.items() if k.startswith(pre)}
        return Restored(path, meta, pick("param/"), pick("vel/"), pick("best/"))

    def _repair_done(self, stage, model, ck):
        """A done stage: its final parameters into ``model``; its weights file and metrics
        lines rewritten from the checkpoint where missing or different."""
        model.load_params(ck.final_params())
        self.log.sync_stage(stage, ck.state["history"])
        self.echo(f"[{stage}] done in an earlier run (checkpoint {ck.path})")
        w = self.weights_path(stage)
        ok, existed = False, os.path.exists(w)
        if existed:
            try:
                have = load_npz(w)
                want = model.state_dict()
                ok = (sorted(have) == sorted(want)
                      and all(np.array_equal(have[k], want[k]) for k in want))
            except Exception:  # noqa: BLE001 - unreadable, truncated, not an npz: rewrite
                ok = False
        if not ok:
            model.save(w)
            self.echo(f"[{stage}] repaired: wrote {w} from its checkpoint "
                      f"({'it differed' if existed else 'it was missing'})")

    def load_done(self, stage, model, sgd=None):
        """If ``stage`` finished in an earlier (resumed) run -- and ``sgd`` (when given) does
        not extend it -- load its final parameters into ``model``, repair its files and return
        its result; else None."""
        ck = self.restore(stage)
        if ck is None or not ck.done or (sgd is not None and ck.extendable(sgd.epochs)):
            return None
        self._repair_done(stage, model, ck)
        return ck.state["result"]

    # ------------------------------------------------------------------------- fit
    def fit(self, stage, model, kind, x_train, y_train, sgd, seed, x_val=None, y_val=None,
            final_eval=None, info=None):
        """Train ``model`` (``kind`` 'cnn' or 'cae') on host arrays; returns the stage result:
        a dict with the best validation metric, epochs, timings and whatever ``final_eval(model)``
        returned (e.g. the test error). ``info``: extra fields for the metrics records."""
        kind = kind.lower()
        if kind not in ("cnn", "cae"):
            raise ValueError(f"kind must be 'cnn' or 'cae', got {kind!r}")
        n = len(x_train)
        if n == 0:
            raise ValueError(f"stage {stage}: no training images")
        rng = np.random.default_rng(stage_seed(seed, stage))
        sgd = sgd.planned()
        state = _new_state()
        best_params = None
        ck = self.restore(stage)
        if ck is not None:
            if ck.done and not ck.extendable(sgd.epochs):
                self._repair_done(stage, model, ck)
                return ck.state["result"]
            if "sgd" in ck.meta:
                asked, sgd = sgd, sgd.resumed(ck.meta["sgd"])
                if sgd.lr != asked.lr:
                    self.echo(f"[{stage}] keeps the learning rate it started with, {sgd.lr:g} "
                              f"(not {asked.lr:g}: a new one applies to stages not started yet)")
            state = dict(_new_state(), **ck.state)
            if state["epoch"] > sgd.epochs:
                raise ValueError(f"stage {stage} already trained {state['epoch']} epochs, more "
                                 f"than the {sgd.epochs} asked for")
            model.load_params(ck.params)
            model.load_velocity(ck.velocity)
            best_params = ck.best or None
            rng.bit_generator.state = ck.meta["rng"]
            if "model_rng" in ck.meta and getattr(model, "rng", None) is not None:
                model.rng.bit_generator.state = ck.meta["model_rng"]
            self.log.sync_stage(stage, state["history"])
            if ck.done:
                state.update(done=False, result=None)
                self.echo(f"[{stage}] finished after {state['epoch']} epochs in an earlier run; "
                          f"extending it to {sgd.epochs} (checkpoint {ck.path})")
            else:
                self.echo(f"[{stage}] resuming after epoch {state['epoch']} "
                          f"(checkpoint {ck.path})")
        else:
            self.log.sync_stage(stage, [])
        try:
            return self._train(stage, model, kind, x_train, y_train, sgd, rng, state,
                               best_params, x_val, y_val, final_eval, info)
        except Diverged:
            if os.path.exists(self.ckpt_path(stage)):     # start afresh on resume, keep a copy
                os.replace(self.ckpt_path(stage), self.diverged_path(stage))
            raise

    def _reference_loss(self, kind, model, x_train, state):
        """The divergence rule's reference (module docstring): chance level for a CNN, the
        starting loss for a CAE (measured once, before the first update)."""
        if kind == "cnn":
            return math.log(max(2, int(getattr(model, "n_classes", 2))))
        if state.get("start_loss") is None:
            if state["epoch"] == 0:
                state["start_loss"] = evaluate_reconstruction(
                    self.be, model, x_train[:REFERENCE_IMAGES], self.eval_batch)[0]
            elif state["history"]:          # a format-1 checkpoint: its first epoch's loss
                state["start_loss"] = state["history"][0]["train_loss"]
        return state["start_loss"]

    def _train(self, stage, model, kind, x_train, y_train, sgd, rng, state, best_params,
               x_val, y_val, final_eval, info):
        """The epochs of one stage.

        Host syncs: none inside an epoch on a device backend. The training set is resident
        on the device (:class:`_Resident`: one upload per stage, the permutation once per
        epoch, batches gathered there), a CAE draws its noise there (``CAE.begin_epoch``),
        and the mini-batch losses stay there (:class:`_BatchLosses`) until they are read:
        at the end of the epoch, and -- only while a progress bar is shown -- at most every
        :data:`LOSS_READ_S` seconds, which is when the bar's ``loss`` and the divergence
        rule learn them (one sync per read, not per step: ~10 per minute of training). On a
        host backend (NumPy, the emulators) a read is free, so every step is read and
        checked, as before. Either way the rule sees every batch's loss in order, so a
        diverged stage stops with the same message (the first bad mini-batch named); on a
        device it may stop up to one read later."""
        n = len(x_train)
        ref = self._reference_loss(kind, model, x_train, state)
        data = _Resident(self.be, x_train, y_train if kind == "cnn" else None)
        for epoch in range(state["epoch"], sgd.epochs):
            lr = sgd.lr_at(epoch)
            data.order(rng.permutation(n))
            begin_epoch = getattr(model, "begin_epoch", None)
            if begin_epoch is not None:
                begin_epoch()
            t0 = time.perf_counter()
            loss_sum = self._epoch_steps(stage, model, kind, data, n, sgd, epoch, lr, ref)
            dt = time.perf_counter() - t0
            rec = {"stage": stage, "kind": kind, "epoch": epoch + 1, "lr": lr,
                   "train_loss": loss_sum / n}
            rec.update(info or {})
            metric = self._validate(rec, model, kind, x_val, y_val)
            rec["time_s"] = round(dt, 3)
            rec["images_per_s"] = round(n / dt, 1) if dt > 0 else None
            state["train_time_s"] += dt
            stop = False
            if metric is not None:                      # best epoch and early stopping
                if state["best"] is None or metric < state["best"]:
                    state["best"], state["best_epoch"], state["bad_epochs"] = metric, epoch + 1, 0
                    best_params = model.state_dict()
                else:
                    state["bad_epochs"] += 1
                    stop = bool(sgd.patience) and state["bad_epochs"] >= sgd.patience
            state["epoch"] = epoch + 1
            state["stopped_early"] = stop
            state["history"].append(rec)
            last = stop or epoch + 1 == sgd.epochs
            params, velocity = model.state_dict(), model.velocity_dict()
            self._save_ckpt(stage, kind, sgd, params, velocity, rng, model, state, best_params)
            self.log.append(rec)
            self.echo(_summary(rec, state, stop))
            if last:
                self._finish(stage, kind, sgd, model, rng, state, params, velocity,
                             best_params, final_eval)
            self.epochs_run += 1
            if self.stop_after_epochs and self.epochs_run >= self.stop_after_epochs:
                raise Interrupted(f"stopped after {self.epochs_run} epoch(s) as asked")
            if last:
                break
        else:   # zero epochs asked for, or resumed after the last epoch's checkpoint
            if not state["done"]:
                self._finish(stage, kind, sgd, model, rng, state, model.state_dict(),
                             model.velocity_dict(), best_params, final_eval)
        return state["result"]

    def _epoch_steps(self, stage, model, kind, data, n, sgd, epoch, lr, ref):
        """The SGD steps of one epoch over ``data`` (already in this epoch's order), with the
        divergence rule (module docstring) applied to every batch loss in order, read as
        ``_train`` describes; returns the sum over the images of their batch's loss."""
        bs = max(1, int(sgd.batch_size))
        n_batches = -(-n // bs)
        min_batches = min(DIVERGENCE_MIN_BATCHES, n_batches)
        losses = _BatchLosses(self.be, n_batches)
        run = {"sum": 0.0, "seen": 0, "batches": 0}
        bar = _bar(n, f"{stage} {epoch + 1}/{sgd.epochs}", self.progress)

        def check(values):
            """The divergence rule over newly read batch losses, in batch order."""
            for loss in values:
                b = run["batches"]
                if not math.isfinite(loss):
                    raise Diverged(stage, kind, epoch + 1, sgd.lr,
                                   f"the loss of mini-batch {b + 1} became {loss} "
                                   f"(lr this epoch {lr:g}, momentum {sgd.momentum:g}, "
                                   f"batch {bs})")
                size = min(bs, n - b * bs)
                run["sum"] += loss * size
                run["seen"] += size
                run["batches"] = b = b + 1
                mean = run["sum"] / run["seen"]
                if ref is not None and b >= min_batches and mean > DIVERGENCE_FACTOR * ref:
                    what = (f"chance level, ln({round(math.exp(ref))}) = {ref:.4g}"
                            if kind == "cnn" else f"its loss at initialisation, {ref:.4g}")
                    raise Diverged(stage, kind, epoch + 1, sgd.lr,
                                   f"the mean training loss of its first {b} "
                                   f"mini-batches is {mean:.4g}, more than "
                                   f"{DIVERGENCE_FACTOR:g} x {what}")
            if values and bar is not None:
                bar.set_postfix_str(f"loss {values[-1]:.4f}", refresh=False)

        last_read = time.perf_counter()
        try:
            for i in range(0, n, bs):
                xb, yb = data.batch(i, i + bs)
                if kind == "cnn":
                    loss = model.train_step(xb, yb, lr, sgd.momentum)
                else:
                    loss = model.train_step(xb, lr, sgd.momentum)
                losses.add(loss)
                if bar is not None:
                    bar.update(min(bs, n - i))
                if losses.host:
                    check(losses.read())
                elif bar is not None and time.perf_counter() - last_read >= LOSS_READ_S:
                    check(losses.read())
                    last_read = time.perf_counter()
            check(losses.read())
        finally:
            if bar is not None:
                bar.close()
        return run["sum"]

    def _validate(self, rec, model, kind, x_val, y_val):
        """Validation loss and error (CNN) or loss and per-pixel MSE (CAE) into ``rec``;
        returns the metric early stopping watches (None without validation images)."""
        if x_val is None or len(x_val) == 0:
            return None
        if kind == "cnn":
            rec["val_loss"], rec["val_error"] = evaluate_classifier(
                self.be, model, x_val, y_val, self.eval_batch)
            return rec["val_error"]
        rec["val_loss"], rec["val_mse"] = evaluate_reconstruction(
            self.be, model, x_val, self.eval_batch)
        return rec["val_loss"]

    def _finish(self, stage, kind, sgd, model, rng, state, params, velocity, best_params,
                final_eval):
        """Stage completion (module docstring): final parameters, result, weights file, and
        the done checkpoint last. ``params``/``velocity``: the last epoch's, kept in the
        checkpoint so that more epochs can continue from them."""
        if best_params is not None and state["best_epoch"] != state["epoch"]:
            model.load_params(best_params)
        result = {"stage": stage, "epochs": state["epoch"], "best_epoch": state["best_epoch"],
                  "best_val": state["best"], "train_time_s": round(state["train_time_s"], 3),
                  "lr": sgd.lr}
        if state["history"]:
            result["final_train_loss"] = state["history"][-1]["train_loss"]
        result["stopped_early"] = bool(state.get("stopped_early"))
        result["converged"], result["converged_why"] = converged(
            [r.get("val_error", r.get("val_loss")) for r in state["history"]],
            state["best_epoch"], sgd.patience, kind)
        if final_eval is not None:
            result.update(final_eval(model))
        model.save(self.weights_path(stage))
        state["done"] = True
        state["result"] = result
        self._save_ckpt(stage, kind, sgd, params, velocity, rng, model, state, best_params)
        self.stages_finished += 1


#: Validation metric changes up to this are "flat" (CNN: error points; 0.1 is 5 images of
#: 5,000; CAE: a share of the best loss).
FLAT_CNN_POINTS = 0.1
FLAT_CAE_SHARE = 0.002
#: Epochs the flatness is judged on when the stage has no patience.
FLAT_WINDOW = 3


def converged(vals, best_epoch, patience=0, kind="cnn"):
    """(converged, why) for a stage's validation metrics ``vals`` (one per epoch, lower is
    better) and its best epoch (1-based): converged if the best epoch is not the last one
    (validation stopped improving: early stopping or the epochs ran out after the best), or
    if the validation metric stayed flat over the last ``max(patience, 3)`` epochs (its range
    there at most :data:`FLAT_CNN_POINTS` points / :data:`FLAT_CAE_SHARE` of the best loss).
    Without validation there is no evidence: (None, ...)."""
    vals = [v for v in vals if v is not None]
    if not vals or not best_epoch:
        return None, "no validation metric"
    n = len(vals)
    if best_epoch < n:
        return True, f"best epoch {best_epoch} of {n}: validation stopped improving"
    w = max(int(patience or 0), FLAT_WINDOW)
    if n >= w + 1:
        tail = vals[-(w + 1):]
        tol = FLAT_CNN_POINTS if kind == "cnn" else FLAT_CAE_SHARE * abs(min(vals))
        if max(tail) - min(tail) <= tol:
            return True, (f"best epoch is the last ({n}), but validation moved at most "
                          f"{max(tail) - min(tail):.3g} over the last {w} epochs (flat)")
    return False, f"best epoch is the last ({n}): still improving, train longer"


def _bar(n, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=n, desc=desc, unit="img", leave=False, dynamic_ncols=True, disable=None,
                mininterval=0.5, file=sys.stderr)


def _summary(rec, state, stop):
    s = (f"[{rec['stage']}] epoch {rec['epoch']}: lr {rec['lr']:.4g}  "
         f"train loss {rec['train_loss']:.4f}")
    if "val_error" in rec:
        s += f"  val loss {rec['val_loss']:.4f}  val error {rec['val_error']:.2f}%"
    elif "val_loss" in rec:
        s += f"  val loss {rec['val_loss']:.4f} (mse/pixel {rec['val_mse']:.5f})"
    s += f"  {rec['time_s']:.1f} s, {rec['images_per_s']:.0f} img/s"
    if state["best_epoch"] == rec["epoch"] and "val_loss" in rec:
        s += "  *best"
    if stop:
        s += f"  (early stop: no improvement for {state['bad_epochs']} epochs)"
    return s
