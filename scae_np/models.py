"""The paper's models on the kernels: a convolutional auto-encoder (CAE), a greedy stack of
CAEs, and the CNN they initialise (Masci, Meier, Ciresan, Schmidhuber, ICANN 2011).

Every model keeps its parameters as a flat dict of named backend arrays (``model.params``),
updated in place by SGD; ``model.state_dict()`` copies them to NumPy, ``model.load_params``
copies NumPy arrays back in, and :func:`save_npz` / :func:`load_npz` write and read them as a
plain ``.npz`` (``numpy.load`` is all another program needs). The names:

========== ======================= ==============================================
model      name                    shape, meaning
========== ======================= ==============================================
CNN        ``conv{i}.W``           (F_i, C_i, K_i, K_i) filters of convolution i (1-based)
CNN        ``conv{i}.b``           (F_i,) one bias per map
CNN        ``fc1.W``, ``fc1.b``    (hidden, F_last*H*W), (hidden,) -- ``y = x W^T + b``
CNN        ``fc2.W``, ``fc2.b``    (classes, hidden), (classes,) -- the softmax layer's logits
CAE        ``W``                   (maps, C, K, K) encoder filters; the decoder uses the same
                                   array flipped (tied weights)
CAE        ``b``                   (maps,) one bias per hidden map
CAE        ``c``                   (C,) one bias per input (reconstructed) channel
CAEStack   ``cae{i}.W/b/c``        the stack's i-th CAE (1-based)
========== ======================= ==============================================

The CNN's forward pass, for each convolution block: ``conv -> maxpool (if any) -> scaled
tanh``. Pooling before the (monotone) tanh gives the same result as after it and costs a
quarter of the tanh work. Flatten order is NCHW (C-order), as ``torch.flatten(x, 1)``.
"""
from __future__ import annotations


import numpy as np

from ._atomic import atomic_open

from .layers import (Conv2D, Dense, MaxPool2D, ScaledTanh, half_squared_error, lecun_uniform,
                     logistic_, scaled_tanh_, scaled_tanh_grad_from_output, sgd_update,
                     softmax_cross_entropy)

#: The paper's CNN (Table 1/2) and CAE-stack architecture.
PAPER_MAPS = (100, 150, 200)
PAPER_KERNELS = (5, 5, 3)
PAPER_POOLS = (2, 2, 1)
PAPER_HIDDEN = 300


# ----------------------------------------------------------------------------- helpers
def _as_int_tuple(name, v, n=None):
    try:
        t = tuple(int(a) for a in v)
        whole = all(a == b for a, b in zip(v, t))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of ints, got {v!r}") from None
    if not whole:                   # int(8.7) == 8: refuse rather than truncate silently
        raise ValueError(f"{name} must hold whole numbers, got {v!r}")
    if n is not None and len(t) != n:
        raise ValueError(f"{name} must have {n} entries, got {len(t)}: {v!r}")
    return t


def save_npz(path, arrays):
    """Write a dict of NumPy arrays as a plain .npz, atomically (temp file + os.replace)."""
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def load_npz(path):
    """Read a .npz written by :func:`save_npz` into a dict of NumPy arrays."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class Model:
    """Shared parameter handling: ``params``/``grads`` dicts, velocities, state I/O."""

    def __init__(self, backend, dtype):
        self.be = backend
        self.xp = backend.xp
        self.dtype = np.dtype(dtype)
        self.params: dict = {}
        self.grads: dict = {}
        self.velocity: dict = {}

    def state_dict(self):
        """Parameters as NumPy arrays (copies), by name."""
        return {k: np.array(self.be.to_host(v)) for k, v in self.params.items()}

    def velocity_dict(self):
        return {k: np.array(self.be.to_host(v)) for k, v in self.velocity.items()}

    def load_params(self, arrays, strict=True):
        """Copy NumPy arrays into the parameters (in place, shapes must match)."""
        missing = [k for k in self.params if k not in arrays]
        extra = [k for k in arrays if k not in self.params]
        if strict and (missing or extra):
            raise ValueError(f"parameter names do not match: missing {missing}, unexpected "
                             f"{extra}")
        for k, p in self.params.items():
            if k not in arrays:
                continue
            a = np.asarray(arrays[k])
            if tuple(a.shape) != tuple(p.shape):
                raise ValueError(f"parameter {k} has shape {tuple(p.shape)} but the file holds "
                                 f"{tuple(a.shape)}; was it saved from a model of another size?")
            p[...] = self.be.to_device(a.astype(self.dtype, copy=False))

    def load_velocity(self, arrays):
        self.velocity = {k: self.be.to_device(np.asarray(v, dtype=self.dtype))
                         for k, v in arrays.items()}

    def save(self, path):
        save_npz(path, self.state_dict())

    def load(self, path):
        self.load_params(load_npz(path))


# ============================================================================== CNN
class CNN(Model):
    """The paper's CNN: [conv K_i x K_i, F_i maps -> max-pool P_i -> scaled tanh] x 3 ->
    fully connected ``hidden`` (scaled tanh) -> ``n_classes`` logits (softmax in the loss).

    Defaults: conv 100@5x5, pool 2, conv 150@5x5, pool 2, conv 200@3x3, fc 300, softmax.
    """

    def __init__(self, backend, in_channels=1, input_hw=(28, 28), n_classes=10,
                 maps=PAPER_MAPS, kernels=PAPER_KERNELS, pools=PAPER_POOLS,
                 hidden=PAPER_HIDDEN, seed=0, dtype=np.float32):
        super().__init__(backend, dtype)
        maps = _as_int_tuple("maps", maps)
        kernels = _as_int_tuple("kernels", kernels, len(maps))
        pools = _as_int_tuple("pools", pools, len(maps))
        h, w = _as_int_tuple("input_hw", input_hw, 2)
        self.in_channels, self.input_hw, self.n_classes = int(in_channels), (h, w), int(n_classes)
        self.maps, self.kernels, self.pools, self.hidden = maps, kernels, pools, int(hidden or 0)
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.blocks = []          # (name, conv, pool or None, tanh)
        c = self.in_channels
        shapes = [(c, h, w)]
        for i, (f, k, p) in enumerate(zip(maps, kernels, pools), start=1):
            if k > h or k > w:
                raise ValueError(
                    f"conv{i} kernel {k}x{k} does not fit its {h}x{w} input (input_hw="
                    f"{input_hw}, kernels={kernels}, pools={pools}); use smaller kernels or "
                    f"pools, or larger images")
            h, w = h - k + 1, w - k + 1
            pool = None
            if p > 1:
                if p > h or p > w:
                    raise ValueError(f"pool{i} window {p}x{p} does not fit the {h}x{w} maps "
                                     f"of conv{i} (input_hw={input_hw}, kernels={kernels}, "
                                     f"pools={pools})")
                pool = MaxPool2D(backend, p)
                h, w = h // p, w // p
            conv = Conv2D(backend, c, f, k, rng, self.dtype)
            self.blocks.append((f"conv{i}", conv, pool, ScaledTanh(backend)))
            c = f
            shapes.append((c, h, w))
        self.feature_shape = (c, h, w)
        self.shapes = shapes
        n_feat = c * h * w
        self.fcs = []             # (name, dense, tanh or None)
        if self.hidden:
            self.fcs.append(("fc1", Dense(backend, n_feat, self.hidden, rng, self.dtype),
                             ScaledTanh(backend)))
            self.fcs.append(("fc2", Dense(backend, self.hidden, self.n_classes, rng,
                                          self.dtype), None))
        else:
            self.fcs.append(("fc1", Dense(backend, n_feat, self.n_classes, rng, self.dtype),
                             None))
        for name, layer in self._param_layers():
            for p, a in layer.params.items():
                self.params[f"{name}.{p}"] = a

    def _param_layers(self):
        for name, conv, _, _ in self.blocks:
            yield name, conv
        for name, dense, _ in self.fcs:
            yield name, dense

    def describe(self):
        parts = []
        for (name, conv, pool, _), f, k in zip(self.blocks, self.maps, self.kernels):
            parts.append(f"conv {f}@{k}x{k}" + (f" -> maxpool {pool.k}x{pool.k}" if pool else ""))
        if self.hidden:
            parts.append(f"fc {self.hidden}")
        parts.append(f"softmax {self.n_classes}")
        return " -> ".join(parts)

    # --------------------------------------------------------------- passes
    def forward(self, x):
        """Logits (N, n_classes) for a backend array x (N, C, H, W); keeps the caches that
        :meth:`backward` needs."""
        if tuple(x.shape[1:]) != (self.in_channels,) + self.input_hw:
            raise ValueError(
                f"the CNN was built for inputs of shape (N, {self.in_channels}, "
                f"{self.input_hw[0]}, {self.input_hw[1]}), got {tuple(x.shape)}")
        h = x
        for _, conv, pool, act in self.blocks:
            h = conv.forward(h)
            if pool is not None:
                h = pool.forward(h)
            h = act.forward(h)
        self._feat_shape = h.shape
        h = h.reshape(h.shape[0], -1)
        for _, dense, act in self.fcs:
            h = dense.forward(h)
            if act is not None:
                h = act.forward(h)
        return h

    def backward(self, dlogits):
        """Back-propagate d loss / d logits; fills ``self.grads``."""
        d = dlogits
        for _, dense, act in reversed(self.fcs):
            if act is not None:
                d = act.backward(d)
            d = dense.backward(d)
        d = d.reshape(self._feat_shape)
        for i, (_, conv, pool, act) in enumerate(reversed(self.blocks)):
            d = act.backward(d)
            if pool is not None:
                d = pool.backward(d)
            d = conv.backward(d, need_dx=(i < len(self.blocks) - 1))
        for name, layer in self._param_layers():
            for p, g in layer.grads.items():
                self.grads[f"{name}.{p}"] = g
            layer.grads = {}
        return self.grads

    def loss_and_grads(self, x, y):
        """Mean softmax cross-entropy on (x, y) and its gradients (``self.grads``), no update."""
        logits = self.forward(x)
        loss, d = softmax_cross_entropy(logits, y, self.xp)
        self.backward(d)
        return loss, self.grads

    def train_step(self, x, y, lr, momentum=0.0):
        """One SGD step on the mini-batch (x, y): forward, backward, in-place update.
        Returns the batch's mean cross-entropy as a 0-d backend array (``float()`` it to
        read it: on a GPU that is a host sync, which the trainer avoids per step)."""
        loss, grads = self.loss_and_grads(x, y)
        sgd_update(self.params, grads, self.velocity, lr, momentum, self.xp)
        self.grads = {}
        return loss

    def predict(self, x, batch_size=None):
        """Logits for x, in batches of ``batch_size`` (all at once when None)."""
        if batch_size is None or x.shape[0] <= batch_size:
            return self.forward(x)
        outs = [self.forward(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        return self.xp.concatenate(outs, axis=0)

    # --------------------------------------------------------------- CAE init
    def init_from_caes(self, stack):
        """Copy the encoder filters and biases of a trained :class:`CAEStack` (or a list of
        :class:`CAE`) into the convolutions, layer by layer (conv{i} <- cae{i}); the fully
        connected layers keep their random initialisation."""
        caes = stack.caes if isinstance(stack, CAEStack) else list(stack)
        if len(caes) > len(self.blocks):
            raise ValueError(f"the stack has {len(caes)} CAEs but the CNN only "
                             f"{len(self.blocks)} convolutions")
        for i, cae in enumerate(caes):
            name, conv, _, _ = self.blocks[i]
            for p in ("W", "b"):
                src, dst = cae.params[p], conv.params[p]
                if tuple(src.shape) != tuple(dst.shape):
                    raise ValueError(
                        f"cae{i + 1}.{p} has shape {tuple(src.shape)} but {name}.{p} has "
                        f"{tuple(dst.shape)}; build the stack with the CNN's maps/kernels")
                dst[...] = src.astype(self.dtype, copy=False)
        return self


# ============================================================================== CAE
class CAE(Model):
    """A convolutional auto-encoder with tied weights (Masci et al. 2011, eq. 1-2):

    * corruption (training only): ``x~ = x * m``, ``m ~ Bernoulli(1 - noise)`` per pixel
      (binomial noise zeroes a share ``noise`` of the pixels); the target stays ``x``;
    * encoder: ``h = f(x~ * W + b)``, ``f`` the scaled tanh, one bias per map;
    * optional ``pool x pool`` max-pooling of ``h``, unpooled through its switches (non-maxima
      zeroed) before decoding: ``u = unpool(maxpool(h))`` (``u = h`` without pooling);
    * decoder: ``r = s(sum_k u_k * W~_k + c)`` with ``W~`` the filters flipped in both
      dimensions -- exactly ``conv2d_backward_input(u, W)`` -- plus one bias per input
      channel. ``s`` is chosen to span the input's range (the paper only says "a scaled
      tanh"): ``output="logistic"``, ``(1 + tanh(a/2))/2``, for pixels in [0, 1] (a tanh
      rescaled to (0, 1)); ``output="tanh"``, the hidden layers' ``1.7159 tanh(2a/3)``, for
      the codes of a lower CAE (which lie in (-1.7159, 1.7159)); ``output="linear"``;
    * loss: ``L = sum (r - x)^2 / (2 N C)``: half the squared error per image and input
      channel, batch mean. (Dividing by the C input channels keeps the gradient's size, and
      so the learning rate, comparable across the layers of a stack, whose inputs have 1
      and then ~100 channels.)

    ``encode(x)`` returns the pooled hidden maps (the next CAE's input in a stack).

    Initialisation: filters uniform in ``+-init_scale * sqrt(3 / fan_in)`` (LeCun's bound
    times ``init_scale``, default 0.1), biases zero. Without weight decay (the paper uses
    none) whatever random structure the filters start with stays visible after a short
    training; small starting filters let the learned structure show (Fig. 1).
    """

    OUTPUTS = ("logistic", "tanh", "linear")

    def __init__(self, backend, in_channels=1, n_maps=20, kernel=7, pool=2, noise=0.0,
                 seed=0, dtype=np.float32, output="logistic", init_scale=0.1):
        super().__init__(backend, dtype)
        if output not in self.OUTPUTS:
            raise ValueError(f"output must be one of {self.OUTPUTS}, got {output!r}")
        self.output = output
        self.in_channels, self.n_maps, self.kernel = int(in_channels), int(n_maps), int(kernel)
        self.pool = int(pool) if pool else 1
        if not 0.0 <= float(noise) < 1.0:
            raise ValueError(f"noise must be a share of pixels in [0, 1), got {noise!r}")
        if self.kernel < 1 or self.n_maps < 1 or self.pool < 1:
            raise ValueError(f"kernel, n_maps and pool must be positive, got kernel="
                             f"{kernel!r}, n_maps={n_maps!r}, pool={pool!r}")
        self.noise = float(noise)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._noise_rng = None          # the device noise generator (see corrupt)
        fan_in = self.in_channels * self.kernel ** 2
        w = lecun_uniform(self.rng, (self.n_maps, self.in_channels, self.kernel, self.kernel),
                          fan_in, self.dtype)
        w *= np.float32(init_scale)
        self.params["W"] = backend.to_device(w)
        self.params["b"] = backend.to_device(np.zeros(self.n_maps, dtype=self.dtype))
        self.params["c"] = backend.to_device(np.zeros(self.in_channels, dtype=self.dtype))
        self._zero_b = backend.to_device(np.zeros(self.n_maps, dtype=self.dtype))

    def describe(self):
        s = f"CAE {self.n_maps}@{self.kernel}x{self.kernel}"
        if self.output != "logistic":
            s += f", {self.output} output"
        if self.pool > 1:
            s += f", maxpool {self.pool}x{self.pool}"
        if self.noise:
            s += f", {self.noise:.0%} noise"
        return s

    def _check_x(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"the CAE takes (N, {self.in_channels}, H, W) inputs, got shape "
                             f"{tuple(x.shape)}")

    def corrupt(self, x):
        """``x * m`` with ``m`` zeroing each pixel with probability ``noise``.

        Host backends (``xp`` is NumPy: numpy, the emulators) draw the mask from the model's
        RNG, so they all see the same masks. A device backend draws it on the device from
        ``xp.random`` (nothing uploaded per step), with a generator seeded from the model's
        RNG by :meth:`begin_epoch` (once per epoch; lazily before the first step), so a
        resumed run draws the same masks as an uninterrupted one on the same device."""
        if not self.noise:
            return x
        if self.xp is np:
            keep = self.rng.random(tuple(x.shape), dtype=np.float32) >= self.noise
            return x * self.be.to_device(keep.astype(self.dtype))
        if self._noise_rng is None:
            self.begin_epoch()
        keep = self._noise_rng.random(tuple(x.shape), dtype=np.float32) >= self.noise
        return x * keep.astype(self.dtype)

    def begin_epoch(self):
        """Called by the trainer before each epoch: on a device backend with noise, a new
        device generator seeded by one draw from the model's (host) RNG, whose state the
        checkpoints keep. Does nothing on host backends (their masks come from the model's
        RNG directly)."""
        if self.noise and self.xp is not np:
            self._noise_rng = self.xp.random.default_rng(int(self.rng.integers(2 ** 63)))

    def _encode_full(self, x):
        """(h, pooled, switches): hidden maps, pooled maps and switches (None w/o pooling)."""
        be = self.be
        h = scaled_tanh_(be.conv2d_forward(x, self.params["W"], self.params["b"]), self.xp)
        if self.pool > 1:
            p, s = be.maxpool2d_forward(h, self.pool)
            return h, p, s
        return h, h, None

    def encode(self, x):
        """The (pooled) hidden maps of clean input x."""
        self._check_x(x)
        return self._encode_full(x)[1]

    def _decode(self, u):
        r = self.be.conv2d_backward_input(u, self.params["W"])
        r += self.params["c"].reshape(1, -1, 1, 1)
        if self.output == "logistic":
            return logistic_(r, self.xp)
        if self.output == "tanh":
            return scaled_tanh_(r, self.xp)
        return r

    def _output_grad(self, y):
        """``s'`` of the decoder's output nonlinearity, written with its output ``y``."""
        if self.output == "logistic":
            return y * (1.0 - y)
        if self.output == "tanh":
            return scaled_tanh_grad_from_output(y)
        return None

    def reconstruct(self, x):
        """Reconstruction of clean input x (no noise)."""
        self._check_x(x)
        h, p, s = self._encode_full(x)
        u = self.be.unpool2d_forward(p, s, h.shape[2:]) if s is not None else h
        return self._decode(u)

    def reconstruction_loss(self, y, x):
        """``E = sum (y - x)^2 / (2 N C)`` and ``dE/dy``: half the squared error per image
        and input channel, batch mean (the one place the division by C is written; the
        trainer's validation loss calls this too)."""
        E, dE_dy = half_squared_error(y, x, self.xp)
        inv_c = 1.0 / self.in_channels
        dE_dy *= inv_c
        return E * inv_c, dE_dy

    def loss_and_grads(self, x, x_in=None):
        """Loss of reconstructing ``x`` from ``x_in`` (default: ``x``, i.e. no corruption)
        and the gradients w.r.t. W, b, c in ``self.grads``.

        The paper's equations (Masci et al. 2011, numbered as we recall them; ``*`` is the
        valid convolution of the kernels, ``~`` a flip of both spatial axes)::

            (1)  h^k = f(x~ * W^k + b^k)               encoder, f the scaled tanh
                 u^k = unpool(maxpool(h^k))            (u = h without pooling)
            (2)  y   = s(sum_k u^k * W~^k + c)         decoder, tied weights
            (3)  E   = 1/(2n) sum_i (x_i - y_i)^2      here also / C (see reconstruction_loss)
            (4)  dE/dW^k = x~ * dh^k + u~^k * dy       the encoder's and the decoder's use of W

        with ``dy = dE/d(decoder pre-activation)`` and ``dh^k = dE/d(encoder pre-activation)``.
        In the kernels' terms: ``sum_k u^k * W~^k`` is ``conv2d_backward_input(u, W)``, so its
        adjoint (``dE/du``) is ``conv2d_forward(dy, W)`` and both terms of (4) are
        ``conv2d_backward_weight`` calls.
        """
        be = self.be
        self._check_x(x)
        x_in = x if x_in is None else x_in              # x~, the (corrupted) input; x the target
        h, p, s = self._encode_full(x_in)               # (1)
        hw = (int(h.shape[2]), int(h.shape[3]))
        u = be.unpool2d_forward(p, s, hw) if s is not None else h
        y = self._decode(u)                             # (2)
        E, dy = self.reconstruction_loss(y, x)          # (3); dy = dE/dy for now
        s_prime = self._output_grad(y)
        if s_prime is not None:
            dy *= s_prime                               # dy = dE/d(decoder pre-activation)
        du = be.conv2d_forward(dy, self.params["W"], self._zero_b)   # dE/du, adjoint of (2)
        if s is not None:                               # back through unpool and maxpool:
            dp = be.unpool2d_backward(du, s)            # gather at the switches,
            dp *= scaled_tanh_grad_from_output(p)       # f' at the maxima only,
            dh = be.maxpool2d_backward(dp, s, hw)       # back to the full maps
        else:
            du *= scaled_tanh_grad_from_output(h)
            dh = du
        dW = be.conv2d_backward_weight(x_in, dh)        # (4), x~ * dh^k: the encoder's W
        dW += be.conv2d_backward_weight(dy, u)          # (4), u~^k * dy: the decoder's W~
        self.grads = {"W": dW, "b": be.conv2d_backward_bias(dh),
                      "c": be.conv2d_backward_bias(dy)}
        return E, self.grads

    def train_step(self, x, lr, momentum=0.0):
        """One SGD step: corrupt x with the model's RNG, reconstruct, compare with clean x.
        Returns the batch loss as a 0-d backend array (``float()`` it to read it: on a GPU
        that is a host sync)."""
        loss, grads = self.loss_and_grads(x, self.corrupt(x))
        sgd_update(self.params, grads, self.velocity, lr, momentum, self.xp)
        self.grads = {}
        return loss

    def filters(self):
        """Encoder filters as a NumPy array (maps, C, K, K)."""
        return np.array(self.be.to_host(self.params["W"]))


# ========================================================================= CAE stack
class CAEStack(Model):
    """CAEs trained greedily, layer by layer, each on the pooled codes of the one below;
    with the CNN's maps and kernels its encoders initialise the CNN's convolutions.

    ``pools``: each CAE's pooling (the codes passed upward are pooled with it). The default
    (2, 2, 2) pools the top CAE as well: it shapes its filters, and nothing is stacked on it.
    ``noise``: one share for all CAEs, or one per CAE. ``output``: the first CAE's output
    nonlinearity (``logistic`` for pixels in [0, 1]); the CAEs above it reconstruct scaled-tanh
    codes and use ``tanh``.
    """

    def __init__(self, backend, in_channels=1, maps=PAPER_MAPS, kernels=PAPER_KERNELS,
                 pools=(2, 2, 2), noise=0.0, seed=0, dtype=np.float32, output="logistic",
                 init_scale=0.1):
        super().__init__(backend, dtype)
        maps = _as_int_tuple("maps", maps)
        kernels = _as_int_tuple("kernels", kernels, len(maps))
        pools = _as_int_tuple("pools", pools, len(maps))
        noises = tuple(noise) if np.ndim(noise) else (float(noise),) * len(maps)
        if len(noises) != len(maps):
            raise ValueError(f"noise must be one share or {len(maps)} shares, got {noise!r}")
        self.maps, self.kernels, self.pools, self.noises = maps, kernels, pools, noises
        self.caes = []
        c = int(in_channels)
        for i, (f, k, p, nz) in enumerate(zip(maps, kernels, pools, noises)):
            self.caes.append(CAE(backend, c, f, k, p, nz, seed=[int(seed), i + 1], dtype=dtype,
                                 output=output if i == 0 else "tanh", init_scale=init_scale))
            c = f
        for i, cae in enumerate(self.caes, start=1):
            for p, a in cae.params.items():
                self.params[f"cae{i}.{p}"] = a

    def __len__(self):
        return len(self.caes)

    def encode(self, x, depth=None):
        """Codes of x after the first ``depth`` CAEs (all by default): the input of CAE
        ``depth + 1`` during greedy training."""
        depth = len(self.caes) if depth is None else depth
        for cae in self.caes[:depth]:
            x = cae.encode(x)
        return x
