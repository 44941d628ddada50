"""Training and test DataFlows of the 32x32 datasets: ``[images uint8 [B,32,32,3], labels int32 [B]]``.

* Training: reshuffled every epoch, with the augmentation of the paper (and of the ResNet CIFAR
  recipe it follows): zero-pad 4 pixels on each side, take a random 32x32 crop, flip horizontally
  with probability 1/2. Vectorized over the batch with NumPy; deterministic given a seed.
* Test: no augmentation, fixed order.

Normalization (per-channel mean/std of the training set, ``Dataset.channel_mean`` / ``channel_std``)
is deliberately *not* done here: the model does it inside the TF graph, so batches stay uint8 when
they cross the process boundary of ``MultiProcessRunnerZMQ`` (4x less data than float32).
"""
import multiprocessing as mp

import numpy as np

import kalman_norm  # noqa: F401  (environment + NumPy aliases before tensorpack)
from tensorpack.dataflow import MultiProcessRunnerZMQ, RNGDataFlow
from .._process import exit_with_parent

__all__ = ["PAD", "get_dataflow", "augment_batch"]

PAD = 4  # pixels of zero padding before the random crop


def get_dataflow(images, labels, batch_size, train, num_proc=1, seed=None, remainder=False):
    """A DataFlow of ``[uint8 images [B,H,W,3], int32 labels [B]]`` batches.

    Args:
        train: shuffle every epoch + pad-4 random crop + random horizontal flip. ``len()`` is
            ``N // batch_size`` (partial batches are always dropped in training; ``remainder`` is
            only used for test flows).
        num_proc: training only. ``>= 1``: run the augmentation in that many worker processes
            (``MultiProcessRunnerZMQ``); 0: in the calling process. Test flows always run in-process
            (order matters there).
        seed: makes the training flow deterministic. Worker ``k`` of a multi-process flow derives
            its own stream from ``(seed, k)``, so workers do not produce the same batches.
            ``None``: seeded from time/pid like tensorpack's RNGDataFlow.
        remainder: test only: also produce the last partial batch.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError("images must be uint8 [N,H,W,3], got %s %s" % (images.dtype, images.shape))
    if labels.shape != (images.shape[0],):
        raise ValueError("labels must have shape [%d], got %s" % (images.shape[0], labels.shape))
    batch_size = int(batch_size)
    if batch_size <= 0:
        raise ValueError("batch_size must be positive, got %d" % batch_size)
    if train and len(labels) < batch_size:
        raise ValueError("batch_size %d is larger than the training set (%d images)"
                         % (batch_size, len(labels)))
    df = _BatchFlow(images, labels.astype(np.int32), batch_size, bool(train), seed,
                    bool(remainder) and not train)
    if train and num_proc and num_proc >= 1:
        df = MultiProcessRunnerZMQ(df, int(num_proc))
    return df


def augment_batch(images, rng, pad=PAD):
    """Pad ``pad`` zero pixels on each side, random crop back to HxW, random horizontal flip.

    Vectorized: one gather for the whole batch. Returns ``(out, offsets [B,2] (y,x), flipped [B])``.
    """
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oy = rng.randint(0, 2 * pad + 1, size=b)
    ox = rng.randint(0, 2 * pad + 1, size=b)
    flip = rng.rand(b) < 0.5
    rows = oy[:, None] + np.arange(h)[None, :]                         # [B, H]
    cols = ox[:, None] + np.arange(w)[None, :]                         # [B, W]
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    out = padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out, np.stack([oy, ox], axis=1), flip


class _BatchFlow(RNGDataFlow):
    def __init__(self, images, labels, batch_size, train, seed, remainder):
        self.images, self.labels = images, labels
        self.batch_size, self.train, self.seed, self.remainder = batch_size, train, seed, remainder

    def __len__(self):
        n, b = len(self.labels), self.batch_size
        if self.train or not self.remainder:
            return n // b
        return (n + b - 1) // b

    def reset_state(self):
        proc = mp.current_process()
        in_worker = isinstance(proc, MultiProcessRunnerZMQ._Worker)
        if in_worker:
            exit_with_parent()      # no orphan when the trainer is killed with SIGKILL
        if self.seed is None:
            super().reset_state()
            return
        worker = proc.idx if in_worker else 0
        state = np.random.SeedSequence([int(self.seed), int(worker)]).generate_state(1)[0]
        self.rng = np.random.RandomState(int(state))

    def __iter__(self):
        if self.train and self.rng is None:
            raise RuntimeError("reset_state() must be called before iterating a training dataflow")
        n, b = len(self.labels), self.batch_size
        if self.train:
            order = self.rng.permutation(n)
            for k in range(n // b):
                idx = order[k * b:(k + 1) * b]
                out, _, _ = augment_batch(self.images[idx], self.rng)
                yield [out, self.labels[idx]]
        else:
            for k in range(len(self)):
                sl = slice(k * b, min((k + 1) * b, n))
                yield [np.ascontiguousarray(self.images[sl]), self.labels[sl].copy()]
