#!/usr/bin/env python
"""Throughput of the CIFAR training dataflow alone (shuffle + pad-4 crop + flip, uint8 batches),
and, side by side in the same process, of the training step that consumes it.

    python scripts/dataflow_speed.py --data ../shared/data/cifar10-jpeg.tar.gz --num-proc 1 --train-steps 30

The data never starves training when the first number is well above the second.
"""
import argparse
import os
import sys
import time


import kalman_norm  # noqa: E402,F401  (before tensorpack)
from kalman_norm.data import DataError, describe, get_dataflow, load_dataset  # noqa: E402

# ---- config (overridable from the command line)
DATASET = "cifar10"
BATCH = 128
NUM_PROC = 1        # 0: augmentation in this process; >= 1: MultiProcessRunnerZMQ workers
STEPS = 200
WARMUP = 20
SEED = None
TRAIN_NORM = "bn"   # the training step timed by --train-steps: ResNet-N with this norm
TRAIN_DEPTH_N = 3   # ResNet-20


def measure(df, steps, warmup):
    it = iter(_forever(df))
    for _ in range(warmup):
        next(it)
    n = 0
    t0 = time.perf_counter()
    for _ in range(steps):
        n += len(next(it)[1])
    return n / (time.perf_counter() - t0)


def _forever(df):
    while True:
        yield from df


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="dataset dir / image folder / .tar.gz (default: "
                                                  "tensorpack's download dir)")
    p.add_argument("--dataset", default=DATASET, choices=["cifar10", "cifar100", "svhn"])
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--num-proc", type=int, default=NUM_PROC)
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--warmup", type=int, default=WARMUP)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--train-steps", type=int, default=0,
                   help="also time this many ResNet-20 (BN) training steps fed by the dataflow")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache (default: $KALMAN_NORM_CACHE "
                                                     "or ~/.cache/kalman_norm)")
    args = p.parse_args()

    t0 = time.perf_counter()
    try:
        ds = load_dataset(args.dataset, args.data, cache_dir=args.cache_dir)
    except DataError as e:
        sys.exit("error: %s" % e)
    print("loaded in %.2f s: %s" % (time.perf_counter() - t0, describe(ds)))

    df = get_dataflow(ds.train_images, ds.train_labels, args.batch, train=True,
                      num_proc=args.num_proc, seed=args.seed)
    df.reset_state()
    ips = measure(df, args.steps, args.warmup)
    print("train dataflow: batch %d, num_proc %d, %d steps after %d warm-up: %.0f images/s "
          "(%.1f batches/s, %.2f ms/batch)"
          % (args.batch, args.num_proc, args.steps, args.warmup, ips, ips / args.batch,
             1000.0 * args.batch / ips))
    if args.train_steps > 0:
        train_ips = measure_training(df, ds, args.batch, args.train_steps)
        print("training step (ResNet-%d, %s, batch %d): %.0f images/s -> the dataflow is %.0fx faster"
              % (6 * TRAIN_DEPTH_N + 2, TRAIN_NORM, args.batch, train_ips, ips / train_ips))


def measure_training(df, ds, batch, steps, warmup=5):
    """Median images/s of SGD steps of ResNet-20 fed with the dataflow's batches."""
    import numpy as np
    import tensorflow as tf
    from tensorpack.tfutils.tower import TowerContext
    from kalman_norm.runtime import session_config
    from kalman_norm.models.resnet_cifar import resnet_cifar
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.uint8, [batch, 32, 32, 3])
        y = tf.compat.v1.placeholder(tf.int32, [batch])
        image = (tf.cast(x, tf.float32) - ds.channel_mean) / ds.channel_std
        with TowerContext("", is_training=True), kalman_norm.norm_scope(TRAIN_NORM, group_size=batch):
            logits = resnet_cifar(image, TRAIN_DEPTH_N, ds.num_classes)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        step = tf.compat.v1.train.MomentumOptimizer(0.01, 0.9).minimize(loss)
        it = iter(_forever(df))
        times = []
        with tf.compat.v1.Session(config=session_config()) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for i in range(warmup + steps):
                images, labels = next(it)
                t0 = time.perf_counter()
                sess.run(step, {x: images, y: labels})
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
    return batch / float(np.median(times))


if __name__ == "__main__":
    main()
