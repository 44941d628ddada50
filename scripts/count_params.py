#!/usr/bin/env python
"""Table 2 of the KN paper: trainable parameters of the ImageNet models with BN, GN and KN.

Builds ResNet-50, ResNet-101 and Inception-v2 (BN-Inception) at 1000 classes under each norm
(graphs only: nothing runs) and counts their trainable parameters, next to the paper's numbers
(in millions, two decimals; "match" compares at those two decimals).  The counts do not depend
on the image size, so a small one keeps the graphs cheap.

    python scripts/count_params.py                                # prints the table
    python scripts/count_params.py --out results/table2_params.md

Norms: BN (``bn``), GN (``gn``, 32 channel groups: every width of the three nets is a multiple
of 32), KN (``bkn`` with the paper's process noise R, ``process_noise=True``: one ``noise_rho``
per channel in every KN layer that receives a prior; the library's default has no R; the gain q
is fixed, so no q variable).  Exit status 1 if a count does not match the paper.  A second table
counts the same nets under the micro-batch field's norms (FIELD_NORMS), which the paper
does not have.  :func:`build_run` builds the net of a CIFAR-trainer config, with its norm or
another (the leaderboard's parameter column, scripts/study/efficiency.py, counts both).
"""
import argparse
import os
import platform
import sys
import time


import kalman_norm as kn  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tabulate import tabulate  # noqa: E402
from tensorpack.models.registry import disable_layer_logging  # noqa: E402
from tensorpack.tfutils.tower import TowerContext  # noqa: E402

from kalman_norm.models import get_model, model_names  # noqa: E402

#: The paper's Table 2 (millions of parameters, as printed).
PAPER_TABLE2 = {
    'ResNet-50': {'BN': 25.56, 'GN': 25.56, 'KN': 25.58},
    'ResNet-101': {'BN': 44.55, 'GN': 44.55, 'KN': 44.60},
    'Inception-v2': {'BN': 11.29, 'GN': 11.29, 'KN': 11.30},
}
ARCHITECTURES = {get_model(name).title: get_model(name).make for name in model_names('imagenet')}
#: Table 2's column -> (norm name, norm options).  KN as the paper counts it: a learned R per channel
#: (the layers' default has none).  The paper's learned q would add one scalar per KN layer, which
#: Table 2's two decimals cannot show; the counts here keep q fixed, as they were first made.
NORMS = {
    'BN': ('bn', {}),
    'GN': ('gn', {'channel_groups': 32}),
    'KN': ('bkn', {'process_noise': True}),
}
#: The micro-batch field beside KN, not in the paper: the same nets under each new norm.
#: WS standardises the conv kernels (no variable); FRN adds a learned τ per channel, EvoNorm a v per
#: channel (B0 also a moving variance, not trainable) in every norm layer an activation follows (not
#: before a residual sum: flow.norm(..., activation=False)); MABN centres its kernels (no variable).
FIELD_NORMS = {
    'BN+WS': ('bn', {'weight_standardization': True}),
    'GN+WS': ('gn', {'channel_groups': 32, 'weight_standardization': True}),
    'BKN+WS': ('bkn', {'weight_standardization': True}),
    # learned ε only where a map has one position (the layer's default): none at ImageNet's 224 px,
    # but the last stage's maps are 1x1 at 32 px; stated, so the count does not depend on the size
    'FRN+TLU': ('frn', {'learned_epsilon': False}),
    'EvoNorm-S0': ('evonorm_s0', {'channel_groups': 32}),
    'EvoNorm-B0': ('evonorm_b0', {}),
    'MABN': ('mabn', {'history_mode': 'per_device'}),
}
NUM_CLASSES = 1000


def count_trainable_parameters(graph):
    with graph.as_default():
        return sum(int(np.prod(v.shape.as_list())) for v in tf.compat.v1.trainable_variables())


def build(architecture, norm_column, image_size=64, batch=2, num_classes=NUM_CLASSES):
    """The training graph (forward only) of one table cell; returns the graph."""
    norm, options = dict(NORMS, **FIELD_NORMS)[norm_column]
    graph = tf.Graph()
    with graph.as_default(), TowerContext('', is_training=True), kn.norm_scope(norm, **options):
        ARCHITECTURES[architecture](tf.zeros([batch, image_size, image_size, 3]), num_classes)
    return graph


def build_run(options, spec=None):
    """The training graph (forward only) of the run that CIFAR-trainer ``options`` describe (its
    model, depth, classes, tower batch and norm, as ``kalman_norm.train.cifar.parse_options`` reads
    them from a config), under ``spec`` instead of the run's own norm when given; returns the graph."""
    from kalman_norm.train import cifar
    graph = tf.Graph()
    image = [options['tower_batch']] + list(cifar.TASK.describe_input(options).image_shape)
    with graph.as_default(), TowerContext('', is_training=True), (spec or options['spec']):
        cifar.TASK.build_logits(options, tf.zeros(image), cifar.TASK.describe_input(options).num_classes)
    return graph


def millions(count):
    """The count in millions as the paper prints it (two decimals)."""
    return round(count / 1e6, 2)


def matches(count, paper):
    return abs(millions(count) - paper) < 1e-9


def table(counts):
    rows = []
    for arch in ARCHITECTURES:
        for column in NORMS:
            count = counts[arch][column]
            paper = PAPER_TABLE2[arch][column]
            rows.append([arch, column, '{:,}'.format(count), '%.2fM' % millions(count), '%.2fM' % paper,
                         'yes' if matches(count, paper) else 'NO'])
    return tabulate(rows, headers=['architecture', 'norm', 'trainable parameters (ours)', 'ours',
                                   'paper (Table 2)', 'match'], tablefmt='github')


def field_table(counts):
    rows = []
    for arch in ARCHITECTURES:
        for column in FIELD_NORMS:
            count = counts[arch][column]
            rows.append([arch, column, '`%s`' % FIELD_NORMS[column][0], '{:,}'.format(count), '%.2fM' % millions(count),
                         '{:+,}'.format(count - counts[arch]['BN'])])
    return tabulate(rows, headers=['architecture', 'norm', 'name', 'trainable parameters', 'millions',
                                   'vs BN'], tablefmt='github')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--image-size', type=int, default=64,
                   help='side of the (zero) images the graphs are built on; counts do not depend on it '
                        '(default 64, at least 32)')
    p.add_argument('--out', help='write the table (markdown, with this command) to this file')
    args = p.parse_args(argv)
    if args.image_size < 32:
        p.error('--image-size must be at least 32 (the nets downsample by 32), got %d' % args.image_size)
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        p.error('--out: directory %s does not exist' % os.path.dirname(os.path.abspath(args.out)))
    return args


def main(argv=None):
    args = parse_args(argv)
    disable_layer_logging()         # tensorpack would log every layer's shapes
    start = time.time()
    counts = {arch: {} for arch in ARCHITECTURES}
    for arch in ARCHITECTURES:
        for column in list(NORMS) + list(FIELD_NORMS):
            counts[arch][column] = count_trainable_parameters(build(arch, column, args.image_size))
            print('%-12s %-10s %12s' % (arch, column, '{:,}'.format(counts[arch][column])), flush=True)
    text = table(counts)
    print()
    print(text)
    all_match = all(matches(counts[a][c], PAPER_TABLE2[a][c]) for a in ARCHITECTURES for c in NORMS)
    if args.out:
        command = 'python scripts/count_params.py' + ' '.join([''] + (argv if argv is not None else sys.argv[1:]))
        doc = '\n'.join([
            '# Table 2: parameters of the ImageNet models',
            '',
            'Made by `%s` (%.0f s, %s, TensorFlow %s). Trainable parameters at 1000 classes, counted '
            'from the built graphs (`kalman_norm/models/resnet_imagenet.py`, `inception_v2.py`); the '
            'paper prints millions with two decimals, and "match" compares at those two decimals.'
            % (command, time.time() - start, platform.python_version(), tf.__version__),
            '',
            text,
            '',
            'BN and GN have gamma and beta per channel; convs have no bias; the classifier has one. '
            'KN is `bkn` with the paper\'s process noise R (`process_noise=True`): the gain q is fixed '
            '(no variable), and every KN layer that receives a prior has a per-channel R (`noise_rho`). '
            'Only the first norm layer (on the image) has no prior: the prior flows through max pooling, '
            'concatenation and residual additions to every other one. KN minus BN, measured above: '
            + ', '.join('{:,} ({})'.format(counts[a]['KN'] - counts[a]['BN'], a) for a in ARCHITECTURES)
            + ' = the widths of all norm layers but the first.',
            '',
            'All nine match.' if all_match else '**Not all cells match the paper.**',
            '',
            '## The micro-batch field beside KN (not in the paper)',
            '',
            'The same nets under the micro-batch field\'s norms (`kalman_norm/norms.py`), counted the same way; '
            '"vs BN" is the difference from the BN row above. Options: '
            + '; '.join('%s `%s`%s' % (c, n, ''.join(', %s=%r' % kv for kv in sorted(o.items())))
                        for c, (n, o) in FIELD_NORMS.items()) + '.',
            '',
            field_table(counts),
            '',
            'Weight Standardization and MABN\'s weight centring transform the kernels inside the conv and '
            'add no variable; BKN here is the library recipe (no R, q fixed). FRN\'s τ and EvoNorm\'s v '
            'are one vector per norm layer.',
            ''])
        tmp = args.out + '.tmp'
        with open(tmp, 'w') as f:
            f.write(doc)
        os.replace(tmp, args.out)
        print('wrote', args.out)
    return 0 if all_match else 1


if __name__ == '__main__':
    sys.exit(main())
