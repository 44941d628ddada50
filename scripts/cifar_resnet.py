#!/usr/bin/env python
"""Train a CIFAR ResNet (or the paper's small Inception net) with any normalization.

    python scripts/cifar_resnet.py --norm bkn --batch 2 --data ../shared/data/cifar10-jpeg.tar.gz

--batch is the number of samples per normalization (the paper's per-GPU batch); a step holds
--total-batch samples (default 128) split over --gpus towers.  See --help and configs/*.toml.
"""
import sys

from kalman_norm.train.command_line import CIFAR, check_command_line

if __name__ == '__main__':
    check_command_line(CIFAR, sys.argv[1:])      # a bad option fails here, before TensorFlow loads
    from kalman_norm.train.cifar import main
    main()
