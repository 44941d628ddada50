"""What a run reports: the evaluation towers of ``--eval-stats`` (option A, moving averages; option
B, online batch statistics), the test batches they share, PreciseBN's evaluation of the final
checkpoint (``val-error-precise``), and the one-line summary of a run."""
import os

import numpy as np
import tensorflow as tf
from tensorpack.utils import logger

from .. import runtime
from ..norms import norms_where
from ..precise_bn import PRECISE_SEED, precise_evaluation
from .options import OptionError
from .rundir import atomic_write_json, read_stats

__all__ = ['EMA_NORMS', 'PRECISE_TAG', 'eval_tags', 'whole_groups_of', 'eval_batch_size', 'test_batches',
           'precise_result', 'record_precise', 'result_head', 'summarize']

#: norms with moving averages, for which --eval-stats chooses between options A and B (registry rows)
EMA_NORMS = norms_where('moving_averages')
PRECISE_TAG = 'val-error-precise'


def eval_tags(o):
    """[(inference tower name, summary name)] for the --eval-stats choice."""
    if o['norm'] not in EMA_NORMS:
        return [('InferenceTower', 'val-error')]
    modes = {'both': ['moving', 'batch'], 'all': ['moving', 'batch'], 'precise': ['moving']}.get(
        o['eval_stats'], [o['eval_stats']])
    return [('InferenceTower' + m.capitalize(), 'val-error-' + m) for m in modes]


def whole_groups_of(o):
    """With batch statistics a partial last test batch must still be whole groups, else it is
    dropped; the moving statistics are then evaluated on the same images, so that the two compare."""
    return o['batch'] if any(tag.endswith('batch') for _, tag in eval_tags(o)) else 1


def eval_batch_size(o, target=256):
    """About ``target`` (fewer, larger batches are faster on CPU), a multiple of --batch so that
    test batches normalised with batch statistics hold whole groups."""
    g = o['batch']
    return g * max(1, -(-target // g))


def test_batches(task, o, data):
    """A fresh dataflow of the evaluation set, as every evaluation of the run batches it."""
    return data.test(task.eval_batch_size(o), whole_groups_of(o))


def precise_result(task, o, data, checkpoint, batches):
    """PreciseBN's evaluation of ``checkpoint`` (:func:`kalman_norm.precise_bn.precise_evaluation`):
    ``batches`` training batches of the tower's size in a fixed order, then the evaluation set of
    the epochs' inference runners (the same images, in the same batches)."""
    if data.train_batches is None:
        raise OptionError('--eval-stats %s: this task provides no training batches for PreciseBN' % o['eval_stats'])
    mean, std = np.asarray(data.channel_mean, np.float32), np.asarray(data.channel_std, np.float32)

    def build_logits(images):
        return task.build_logits(o, (tf.cast(images, tf.float32) - mean) / std, data.num_classes)

    def restore(sess):
        tf.compat.v1.train.Saver().restore(sess, checkpoint)

    def train_images():
        flow, produced = data.train_batches(PRECISE_SEED), 0
        flow.reset_state()
        while True:              # as many epochs of the flow as ``batches`` needs
            for images, _ in flow:
                if produced == batches:
                    return
                produced += 1
                yield images

    test = test_batches(task, o, data)
    test.reset_state()
    return precise_evaluation(build_logits, o['spec'], restore, train_images(), test,
                              runtime.session_config(o['threads']))


def record_precise(task, o, data, step):
    """PreciseBN's error of the final checkpoint into stats.json's last epoch (once)."""
    stats = read_stats(o['logdir'])
    if not stats or PRECISE_TAG in stats[-1]:
        return
    logger.info('PreciseBN: recomputing the moving statistics over %d training batches' % o['precise_batches'])
    result = precise_result(task, o, data, os.path.join(o['logdir'], 'model-%d' % step), o['precise_batches'])
    stats[-1].update({PRECISE_TAG: result['error'], 'precise_batches': result['batches'],
                      'precise_images': result['images']})
    atomic_write_json(os.path.join(o['logdir'], 'stats.json'), stats)
    logger.info('PreciseBN: %s %.4f on %d images' % (PRECISE_TAG, result['error'], result['images']))


def result_head(task, o, stats):
    return '%s %s norm=%s batch=%d gpus=%d epochs=%d' % (
        task.describe_input(o).dataset, task.model_name(o), o['norm'], o['batch'], o['gpus'],
        stats[-1]['epoch_num'] if stats else 0)


def summarize(task, o, status=None):
    """One line: best and last validation error per eval option, or the divergence."""
    stats = read_stats(o['logdir'])
    head = result_head(task, o, stats)
    if status and status.get('status') == 'diverged':
        return 'DIVERGED %s: %s (no result: the run is recorded as diverged)' % (head, status.get('message'))
    parts = []
    for _, tag in eval_tags(o):
        series = [(s['epoch_num'], s[tag]) for s in stats if tag in s]
        if not series:
            continue
        best = min(series, key=lambda t: t[1])
        parts.append('%s best %.2f%% (epoch %d) last %.2f%%' % (tag, 100 * best[1], best[0], 100 * series[-1][1]))
    precise = [s for s in stats if PRECISE_TAG in s]
    if precise:
        parts.append('%s %.2f%% (epoch %d, %d batches)' % (PRECISE_TAG, 100 * precise[-1][PRECISE_TAG],
                                                           precise[-1]['epoch_num'], precise[-1]['precise_batches']))
    return 'FINAL %s: %s' % (head, '; '.join(parts) if parts else 'no validation yet')
