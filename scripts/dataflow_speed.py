#!/usr/bin/env python
"""Throughput of the CIFAR training dataflow alone (shuffle + pad-4 crop + flip, uint8 batches).

    python scripts/dataflow_speed.py --data /work/shared/data/cifar10-jpeg.tar.gz --num-proc 1
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import kalman_norm  # noqa: E402,F401  (before tensorpack)
from kalman_norm.datasets import DataError, describe, get_dataflow, load_dataset  # noqa: E402

# ---- config (overridable from the command line)
DATASET = "cifar10"
BATCH = 128
NUM_PROC = 1        # 0: augmentation in this process; >= 1: MultiProcessRunnerZMQ workers
STEPS = 200
WARMUP = 20
SEED = None


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


if __name__ == "__main__":
    main()
