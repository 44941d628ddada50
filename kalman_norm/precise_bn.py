"""PreciseBN (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", Sect. 3): the moving
statistics recomputed with the final weights, as an equal-weight average over a set number of
training batches, instead of the EMA's exponentially weighted average over weights that kept
changing while it was accumulated.

How, for every norm with moving averages (registry trait ``moving_averages``): the model runs its
*training* forward (batch statistics, the layers' own group size and variance convention) on
``batches`` training batches of the tower's size, with the layers' EMA momentum set to 0, so that
after a batch each ``.../EMA`` variable holds exactly the value that batch would have folded into
the EMA.  Before every batch the checkpoint's moving state is put back, so each batch sees the final
state of training and the batches are independent draws.  What each row recomputes:

* ``bn``: ``mean/EMA`` = mean over batches of the batch's mean of group means; ``variance/EMA`` =
  mean of the mean group variances (unbiased per group, as training's EMA).  Where a group is the
  whole batch (``group_size`` None or the tower batch), the variance of the batch means over the
  batches is added: σ² = E[σ²_B] + Var[µ_B], the population variance (the paper's estimate).
  With micro-batch groups the target stays the per-group variance training normalised with.
* ``bkn``: the posterior mean and variance that its EMA tracks (Eq. 7's output), as ``bn``; the
  ``prior_offset``/``prior_log_ratio`` EMAs of ``prior_source='calibrated'`` averaged alike.
* ``brn``: ``mean/EMA`` as ``bn``; σ = mean of the batches' mean σ_B (``stddev/EMA``, Algorithm 1)
  and ``variance/EMA`` = σ² - ε from it, as the layer keeps them (``moving_stddev=False``: as ``bn``).
* ``evonorm_b0``: ``variance/EMA`` (its only moving statistic): mean of the group variances.
* ``mabn``: ``variance/EMA`` = mean of the groups' second moments χ_B of the current batch (the
  window of past steps, ``history``, is switched off with ``batch_stats_steps``: second moments
  average exactly, so no correction term).  Both ``history_mode`` values recompute the same.
"""
import inspect
import itertools

import numpy as np
import tensorflow as tf
from tensorpack.tfutils.common import get_global_step_var
from tensorpack.tfutils.tower import TowerContext

from .norms import get_norm

tf1 = tf.compat.v1

__all__ = ['DEFAULT_BATCHES', 'PRECISE_SEED', 'precise_spec', 'combine_batches', 'recompute_statistics',
           'evaluate_moving', 'precise_evaluation']

#: training batches (of the tower's size) averaged by default: 200 batches of 128 are 25,600
#: images, half an epoch of CIFAR's training set, forward only
DEFAULT_BATCHES = 200
#: the training data order and augmentation of the recomputation (fixed: re-evaluations repeat)
PRECISE_SEED = 20210101
#: larger than any run's step count: MABN normalises with the current batch's χ_B
_ALWAYS = 2 ** 62


def precise_spec(spec):
    """The spec of the recomputation: EMA momentum 0 (a variable then holds one batch's value)."""
    norm = get_norm(spec.kind)
    if not norm.moving_averages:
        raise ValueError('PreciseBN recomputes moving averages; %r keeps none (norms with them: %s)'
                         % (spec.kind, ', '.join(_moving_norms())))
    changes = dict(momentum=0.0, ema_update='collection')
    if 'batch_stats_steps' in inspect.signature(norm.layer).parameters:
        changes['batch_stats_steps'] = _ALWAYS
    return spec.replace(**changes)


def _moving_norms():
    from .norms import norms_where
    return norms_where('moving_averages')


def layer_epsilon(spec):
    """The ε of the spec's layer (its option, or the layer's default)."""
    if 'epsilon' in spec.options:
        return float(spec.options['epsilon'])
    return float(inspect.signature(spec.norm.layer).parameters['epsilon'].default)


def combine_batches(per_batch, one_group, epsilon):
    """{variable name: precise value} from {name: [value of batch 1, 2, ...]} (float64 sums).

    ``one_group``: each batch's statistics come from one group (the population correction of the
    variance applies); ``epsilon``: the layers' ε (BRN's ``variance/EMA`` = σ² - ε)."""
    out = {}
    for name, values in per_batch.items():
        out[name] = np.mean(np.asarray(values, np.float64), axis=0)
    for name in per_batch:
        if not name.endswith('/variance/EMA'):
            continue
        scope = name[:-len('variance/EMA')]
        if scope + 'stddev/EMA' in out:
            out[name] = np.maximum(np.square(out[scope + 'stddev/EMA']) - epsilon, 0.0)
        elif one_group and scope + 'mean/EMA' in out:
            # σ² = E[σ²_B] + Var[µ_B] over equal-sized batches (the population variance)
            out[name] = out[name] + np.var(np.asarray(per_batch[scope + 'mean/EMA'], np.float64), axis=0)
    return out


def recompute_statistics(build_logits, spec, restore, batches, session_config=None):
    """Precise moving statistics: {variable name: float64 value} over the ``.../EMA`` variables.

    Args:
        build_logits: ``build_logits(images uint8 placeholder) -> logits`` building the model
            (called inside a training tower and the spec's scope).
        spec: the run's NormSpec.
        restore: ``restore(sess)`` loads the final weights and moving state into the session.
        batches: an iterable of uint8 image batches (the tower's size; the training flow).
    """
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise ValueError('PreciseBN needs at least one training batch, got none')
    first = np.asarray(first)
    # one group per batch: the statistic is the batch's, and the population correction applies
    one_group = spec.group_size is None or spec.group_size >= len(first)
    graph = tf.Graph()
    with graph.as_default():
        # a static batch: MABN's per-device histories hold one row per group
        images = tf1.placeholder(tf.uint8, first.shape, name='images')
        with TowerContext('', is_training=True), precise_spec(spec):
            get_global_step_var()
            build_logits(images)
        updates = tf.group(*tf1.get_collection(tf1.GraphKeys.UPDATE_OPS))
        state = [v for v in tf1.global_variables() if not v.trainable and v.op.name != 'global_step']
        moving = [v for v in state if v.op.name.endswith('/EMA')]
        if not moving:
            raise ValueError('the model built under %r has no moving statistics to recompute' % (spec,))
        feeds = [tf1.placeholder(v.dtype.base_dtype, v.shape) for v in state]
        reset = tf.group(*[tf1.assign(v, p) for v, p in zip(state, feeds)])
        with tf1.Session(graph=graph, config=session_config) as sess:
            restore(sess)
            saved = sess.run(state)
            per_batch = {v.op.name: [] for v in moving}
            count = 0
            for batch in itertools.chain([first], batches):
                batch = np.asarray(batch)
                if batch.shape != first.shape:
                    raise ValueError('PreciseBN batches must all have the shape %s, got %s'
                                     % (first.shape, batch.shape))
                sess.run(reset, dict(zip(feeds, saved)))
                sess.run(updates, {images: batch})
                for v, value in zip(moving, sess.run(moving)):
                    per_batch[v.op.name].append(value)
                count += 1
    return combine_batches(per_batch, one_group, layer_epsilon(spec)), count


def evaluate_moving(build_logits, spec, restore, statistics, test_batches, session_config=None):
    """(errors, images) of the model with moving statistics, the ``.../EMA`` variables replaced
    by ``statistics`` (None: as restored), over ``test_batches`` of (images, labels)."""
    test_batches = iter(test_batches)
    first = next(test_batches, None)
    if first is None:
        return 0, 0
    graph = tf.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.uint8, [None] + list(np.asarray(first[0]).shape[1:]), name='images')
        with TowerContext('', is_training=False), spec.replace(eval_stats='moving'):
            get_global_step_var()
            logits = build_logits(images)
        by_name = {v.op.name: v for v in tf1.global_variables()}
        missing = sorted(set(statistics or {}) - set(by_name))
        if missing:
            raise ValueError('the inference graph has no variable(s) %s' % ', '.join(missing))
        with tf1.Session(graph=graph, config=session_config) as sess:
            restore(sess)
            for name, value in (statistics or {}).items():
                by_name[name].load(np.asarray(value, np.float32), sess)
            wrong = seen = 0
            for batch_images, batch_labels in itertools.chain([first], test_batches):
                pred = sess.run(logits, {images: batch_images}).argmax(1)
                wrong += int((pred != np.asarray(batch_labels)).sum())
                seen += len(batch_labels)
    return wrong, seen


def precise_evaluation(build_logits, spec, restore, train_batches, test_batches, session_config=None):
    """Recompute the statistics (:func:`recompute_statistics`), then evaluate with them.
    -> dict(error, images, batches, statistics)."""
    statistics, count = recompute_statistics(build_logits, spec, restore, train_batches, session_config)
    wrong, seen = evaluate_moving(build_logits, spec, restore, statistics, test_batches, session_config)
    if seen == 0:
        raise ValueError('PreciseBN evaluation got no test images')
    return dict(error=wrong / float(seen), images=seen, batches=count, statistics=statistics)
