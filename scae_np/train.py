"""Training loops: SGD epochs with early stopping, per-epoch metrics and resumable checkpoints.

One *stage* is one model trained by SGD (a CAE, one layer of a CAE stack, a CNN). A stage:

* shuffles the training images every epoch with its own RNG (seeded from the run's seed and
  the stage's name, so stages are independent and a resumed run draws the same numbers);
* runs on-line (``batch_size=1``) or mini-batch SGD with optional momentum and a per-epoch
  learning-rate decay ``lr_epoch = lr * lr_decay ** epoch``;
* evaluates the validation split after every epoch (error % for a CNN, reconstruction loss
  for a CAE), keeps the parameters of the best epoch, stops early after ``patience`` epochs
  without improvement, and ends with the best parameters;
* writes, after every epoch, a checkpoint ``checkpoints/<stage>.npz`` atomically (temp file +
  ``os.replace``): parameters (``param/<name>``), momentum buffers (``vel/<name>``), the best
  parameters so far (``best/<name>``) and a JSON ``meta`` string (epoch, metrics history,
  the RNG states, early-stopping state, and, once the stage is done, its result). A run
  killed at any moment therefore loses at most the epoch in progress, and ``resume=True``
  continues from the last checkpoint to the same numbers an uninterrupted run gets (NumPy
  backend, same machine);
* appends one JSON line per epoch to ``metrics.jsonl``;
* when done, saves the final (best) parameters as a plain ``weights/<stage>.npz``.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass

import numpy as np

from .models import load_npz, save_npz


class Interrupted(Exception):
    """Raised after the number of epochs asked for by ``stop_after_epochs`` (a testing aid that
    behaves like a kill right after a checkpoint)."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


@dataclass
class SGD:
    """Hyperparameters of one SGD stage."""
    lr: float
    epochs: int = 1
    batch_size: int = 1
    momentum: float = 0.0
    lr_decay: float = 1.0
    patience: int = 0           # epochs without validation improvement before stopping; 0: off

    def lr_at(self, epoch):
        return self.lr * self.lr_decay ** epoch


def stage_seed(seed, name):
    """Seed material for a stage's RNG: the run's seed and a hash of the stage's name."""
    return [int(seed), zlib.crc32(name.encode())]


def _atomic_write_text(path, text):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    to agree with its checkpoint (lines of epochs after it dropped, missing ones restored)."""

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
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, default=_json_default) + "\n")
            f.flush()

    def sync_stage(self, stage, history):
        recs = [r for r in self.records() if r.get("stage") != stage] + list(history)
        _atomic_write_text(self.path, "".join(json.dumps(r, default=_json_default) + "\n"
                                              for r in recs))


# -------------------------------------------------------------------------- evaluation
def evaluate_classifier(backend, model, x, y, batch_size=256):
    """Mean cross-entropy and error (%) of a CNN on host arrays (x, y), in batches."""
    from .layers import softmax_cross_entropy
    xp = backend.xp
    n = len(x)
    loss_sum, wrong = 0.0, 0
    for i in range(0, n, batch_size):
        xb = backend.to_device(x[i:i + batch_size])
        yb = backend.to_device(y[i:i + batch_size])
        logits = model.forward(xb)
        loss, _ = softmax_cross_entropy(logits, yb, xp)
        loss_sum += float(loss) * len(xb)
        wrong += int(xp.sum(xp.argmax(logits, axis=1) != yb))
    return loss_sum / n, 100.0 * wrong / n


def evaluate_reconstruction(backend, cae, x, batch_size=256):
    """Mean reconstruction loss (half squared error per image) and per-pixel MSE of a CAE on
    clean host images x, in batches."""
    from .layers import half_squared_error
    xp = backend.xp
    n = len(x)
    loss_sum = 0.0
    for i in range(0, n, batch_size):
        xb = backend.to_device(x[i:i + batch_size])
        loss, _ = half_squared_error(cae.reconstruct(xb), xb, xp)
        loss_sum += float(loss) * len(xb)
    loss = loss_sum / n
    return loss, 2.0 * loss / int(np.prod(x.shape[1:]))


def encode_batches(backend, encoder, x, batch_size=256):
    """``encoder(batch)`` over host images x, in batches; a host float array."""
    outs = [np.asarray(backend.to_host(encoder(backend.to_device(x[i:i + batch_size]))))
            for i in range(0, len(x), batch_size)]
    return np.ascontiguousarray(np.concatenate(outs, axis=0))


# ---------------------------------------------------------------------------- trainer
class Trainer:
    """Runs stages in one output folder. ``progress``: tqdm bars (images/s, loss) on stderr;
    ``stop_after_epochs``: raise :class:`Interrupted` after that many epochs in this process."""

    def __init__(self, backend, out_dir, progress=True, stop_after_epochs=None,
                 eval_batch=256, resume=False, echo=None):
        self.be = backend
        self.out = out_dir
        self.log = MetricsLog(os.path.join(out_dir, "metrics.jsonl"))
        self.progress = progress
        self.stop_after_epochs = stop_after_epochs
        self.eval_batch = eval_batch
        self.resume = resume
        self.epochs_run = 0
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

    def weights_path(self, stage):
        return os.path.join(self.out, "weights", f"{stage}.npz")

    # ----------------------------------------------------------------- checkpoints
    def _save_ckpt(self, stage, model, rng, state, best_params):
        arrays = {f"param/{k}": v for k, v in model.state_dict().items()}
        arrays.update({f"vel/{k}": v for k, v in model.velocity_dict().items()})
        if best_params is not None:
            arrays.update({f"best/{k}": v for k, v in best_params.items()})
        meta = {"stage": stage, "state": state, "rng": rng.bit_generator.state}
        if getattr(model, "rng", None) is not None:
            meta["model_rng"] = model.rng.bit_generator.state
        arrays["meta"] = np.array(json.dumps(meta, default=_json_default))
        save_npz(self.ckpt_path(stage), arrays)

    def load_done(self, stage, model):
        """If ``stage`` finished in an earlier (resumed) run, load its final parameters into
        ``model`` and return its result; else None."""
        path = self.ckpt_path(stage)
        if not (self.resume and os.path.exists(path)):
            return None
        arrays = load_npz(path)
        meta = json.loads(str(arrays["meta"]))
        if not meta["state"]["done"]:
            return None
        model.load_params({k[6:]: v for k, v in arrays.items() if k.startswith("param/")})
        self.echo(f"[{stage}] done in an earlier run (checkpoint {path})")
        return meta["state"]["result"]

    # ------------------------------------------------------------------------- fit
    def fit(self, stage, model, kind, x_train, y_train, sgd, seed, x_val=None, y_val=None,
            final_eval=None, info=None):
        """Train ``model`` (``kind`` 'cnn' or 'cae') on host arrays; returns the stage result:
        a dict with the best validation metric, epochs, timings and whatever ``final_eval(model)``
        returned (e.g. the test error). ``info``: extra fields for the metrics records."""
        be = self.be
        kind = kind.lower()
        if kind not in ("cnn", "cae"):
            raise ValueError(f"kind must be 'cnn' or 'cae', got {kind!r}")
        n = len(x_train)
        if n == 0:
            raise ValueError(f"stage {stage}: no training images")
        rng = np.random.default_rng(stage_seed(seed, stage))
        state = {"epoch": 0, "history": [], "best": None, "best_epoch": 0, "bad_epochs": 0,
                 "train_time_s": 0.0, "done": False, "result": None}
        best_params = None
        path = self.ckpt_path(stage)
        if self.resume and os.path.exists(path):
            arrays = load_npz(path)
            meta = json.loads(str(arrays["meta"]))
            model.load_params({k[6:]: v for k, v in arrays.items() if k.startswith("param/")})
            model.load_velocity({k[4:]: v for k, v in arrays.items() if k.startswith("vel/")})
            best = {k[5:]: v for k, v in arrays.items() if k.startswith("best/")}
            best_params = best or None
            rng.bit_generator.state = meta["rng"]
            if "model_rng" in meta and getattr(model, "rng", None) is not None:
                model.rng.bit_generator.state = meta["model_rng"]
            state = meta["state"]
            self.log.sync_stage(stage, state["history"])
            if state["done"]:
                self.echo(f"[{stage}] done in an earlier run (checkpoint {path})")
                return state["result"]
            self.echo(f"[{stage}] resuming after epoch {state['epoch']} (checkpoint {path})")
        else:
            self.log.sync_stage(stage, [])

        has_val = x_val is not None and len(x_val) > 0
        bs = max(1, int(sgd.batch_size))
        for epoch in range(state["epoch"], sgd.epochs):
            lr = sgd.lr_at(epoch)
            perm = rng.permutation(n)
            loss_sum = 0.0
            t0 = time.perf_counter()
            bar = _bar(n, f"{stage} {epoch + 1}/{sgd.epochs}", self.progress)
            try:
                for i in range(0, n, bs):
                    idx = perm[i:i + bs]
                    xb = be.to_device(x_train[idx])
                    if kind == "cnn":
                        loss = model.train_step(xb, be.to_device(y_train[idx]), lr, sgd.momentum)
                    else:
                        loss = model.train_step(xb, lr, sgd.momentum)
                    if not math.isfinite(loss):
                        raise TrainingError(
                            f"stage {stage}: the training loss became {loss} in epoch {epoch + 1} "
                            f"(lr {lr:g}, momentum {sgd.momentum:g}, batch {bs}); training "
                            f"diverged: lower the learning rate")
                    loss_sum += loss * len(idx)
                    if bar is not None:
                        bar.update(len(idx))
                        bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
            finally:
                if bar is not None:
                    bar.close()
            dt = time.perf_counter() - t0
            rec = {"stage": stage, "kind": kind, "epoch": epoch + 1, "lr": lr,
                   "train_loss": loss_sum / n}
            if info:
                rec.update(info)
            metric = None
            if has_val:
                if kind == "cnn":
                    rec["val_loss"], rec["val_error"] = evaluate_classifier(
                        be, model, x_val, y_val, self.eval_batch)
                    metric = rec["val_error"]
                else:
                    rec["val_loss"], rec["val_mse"] = evaluate_reconstruction(
                        be, model, x_val, self.eval_batch)
                    metric = rec["val_loss"]
            rec["time_s"] = round(dt, 3)
            rec["images_per_s"] = round(n / dt, 1) if dt > 0 else None
            state["train_time_s"] += dt
            stop = False
            if metric is not None:
                if state["best"] is None or metric < state["best"]:
                    state["best"], state["best_epoch"], state["bad_epochs"] = metric, epoch + 1, 0
                    best_params = model.state_dict()
                else:
                    state["bad_epochs"] += 1
                    stop = bool(sgd.patience) and state["bad_epochs"] >= sgd.patience
            state["epoch"] = epoch + 1
            state["history"].append(rec)
            last = stop or epoch + 1 == sgd.epochs
            if last:
                self._finish(stage, model, state, best_params, final_eval)
            self._save_ckpt(stage, model, rng, state, best_params)
            self.log.append(rec)
            self.echo(_summary(rec, state, stop))
            if last:
                model.save(self.weights_path(stage))
            self.epochs_run += 1
            if self.stop_after_epochs and self.epochs_run >= self.stop_after_epochs:
                raise Interrupted(f"stopped after {self.epochs_run} epoch(s) as asked")
            if last:
                break
        else:   # zero epochs asked for, or resumed exactly at the end
            if not state["done"]:
                self._finish(stage, model, state, best_params, final_eval)
                self._save_ckpt(stage, model, rng, state, best_params)
                model.save(self.weights_path(stage))
        return state["result"]

    def _finish(self, stage, model, state, best_params, final_eval):
        if best_params is not None and state["best_epoch"] != state["epoch"]:
            model.load_params(best_params)
        result = {"stage": stage, "epochs": state["epoch"], "best_epoch": state["best_epoch"],
                  "best_val": state["best"], "train_time_s": round(state["train_time_s"], 3)}
        if state["history"]:
            result["final_train_loss"] = state["history"][-1]["train_loss"]
        if final_eval is not None:
            result.update(final_eval(model))
        state["done"] = True
        state["result"] = result


def _bar(n, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=n, desc=desc, unit="img", leave=False, dynamic_ncols=True,
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
