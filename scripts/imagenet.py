#!/usr/bin/env python
"""Train ResNet-50/101 or Inception-v2 on ILSVRC-12 with any normalization (the paper's Tables 1, 4, 5).

    python scripts/imagenet.py --arch resnet50 --norm bkn --batch 4 --gpus 8 --data /path/to/ilsvrc12
    python scripts/imagenet.py --config configs/imagenet/table4_resnet50_bkn_b4.toml --data ...
    python scripts/imagenet.py ... --cluster ps=h0:2222 --cluster worker=h1:2222,h2:2222 --task worker:0

--batch is the number of samples per normalization per GPU; --total-batch the samples of one step
over all GPUs and workers.  See --help and README.md ("Training on a cluster").
"""
import sys

from kalman_norm.train.command_line import IMAGENET, check_command_line

if __name__ == '__main__':
    check_command_line(IMAGENET, sys.argv[1:])      # a bad option fails here, before TensorFlow loads
    from kalman_norm.train.imagenet import main
    main()
