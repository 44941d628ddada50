#!/usr/bin/env python
"""Which prior predicts a layer's statistics better?  Per KN layer, prior vs large-batch statistics.

For each hand-on mode (``propagate='input'``: the paper's, pushing the previous layer's estimate
of its *input*; ``'output'``: pushing the distribution of its normalised output), build ResNet
with BKN, optionally train it a few steps with micro-batches, then feed one large batch normalised
in micro-batch groups and report, per KN layer, how far the prior and the micro-batch statistics
are from the statistics of the whole large batch (see kalman_norm.diagnostics).

    python scripts/prior_diagnostic.py --data ../shared/data/cifar10-jpeg.tar.gz --train-steps 200
"""
import argparse
import os
import sys


import kalman_norm as kn  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorpack.tfutils.tower import TowerContext  # noqa: E402

from kalman_norm import data as datasets  # noqa: E402
from kalman_norm.diagnostics import format_report, prior_report  # noqa: E402
from kalman_norm.models.resnet_cifar import resnet_cifar  # noqa: E402

# ---- configuration ------------------------------------------------------------------------
DEPTH_N = 5              # ResNet-32
GROUP_SIZE = 2           # samples per normalization
TRAIN_BATCH = 128
LARGE_BATCH = 512        # the "large batch" whose statistics stand in for the population
MODES = ('input', 'output')
# -------------------------------------------------------------------------------------------


def load_images(data, seed):
    rng = np.random.RandomState(seed)
    if data is None:
        images = rng.randint(0, 256, size=(4096, 32, 32, 3)).astype(np.uint8)
        labels = rng.randint(0, 10, size=4096).astype(np.int32)
        mean, std = np.full(3, 127.5, np.float32), np.full(3, 73.9, np.float32)
        return images, labels, mean, std, 'uniform random images'
    ds = datasets.load_dataset('cifar10', data)
    return ds.train_images, ds.train_labels, ds.channel_mean, ds.channel_std, datasets.describe(ds)


def run_mode(mode, images, labels, mean, std, args):
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(args.seed)
        x = tf.compat.v1.placeholder(tf.uint8, [None, 32, 32, 3])
        y = tf.compat.v1.placeholder(tf.int32, [None])
        image = (tf.cast(x, tf.float32) - mean) / std
        with TowerContext('', is_training=True), \
                kn.norm_scope('bkn', group_size=GROUP_SIZE, propagate=mode, prior_method=args.prior,
                              process_noise=True):   # R on, as results/prior_diagnostic.md was measured
            logits = resnet_cifar(image, DEPTH_N)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        step = tf.compat.v1.train.MomentumOptimizer(0.05, 0.9).minimize(loss)
        rng = np.random.RandomState(args.seed)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(args.train_steps):
                idx = rng.randint(0, len(images), TRAIN_BATCH)
                sess.run(step, {x: images[idx], y: labels[idx]})
            idx = rng.randint(0, len(images), LARGE_BATCH)
            return prior_report(sess, {x: images[idx], y: labels[idx]})


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', help='CIFAR-10 dir or .tar.gz (default: random images)')
    p.add_argument('--train-steps', type=int, default=0, help='SGD steps with micro-batches before measuring')
    p.add_argument('--prior', default='analytic', choices=['analytic', 'mc'])
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', help='also write the report as Markdown here')
    args = p.parse_args()
    images, labels, mean, std, source = load_images(args.data, args.seed)
    text = ['# KN prior quality per layer\n',
            'ResNet-%d, BKN in groups of %d, %s prior, after %d training steps (batch %d); one batch of %d '
            'from %s. Errors vs the statistics of that whole batch: mean error in large-batch stds, '
            'variance error as |log(var_est / var_large)|.\n'
            % (6 * DEPTH_N + 2, GROUP_SIZE, args.prior, args.train_steps, TRAIN_BATCH, LARGE_BATCH, source)]
    for mode in MODES:
        rows = prior_report_rows = run_mode(mode, images, labels, mean, std, args)
        text.append(format_report(prior_report_rows, "## propagate='%s'" % mode) + '\n')
        print(text[-1], flush=True)
        del rows
    if args.out:
        with open(args.out, 'w') as f:
            f.write('\n'.join(text))


if __name__ == '__main__':
    main()
