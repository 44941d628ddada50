"""How good are KN's priors?  Per KN layer, compare with the statistics of a large batch.

Every KN layer with a prior records a :class:`~kalman_norm.layers.KNDiagnostic` in its graph
(:func:`diagnostic_records`): its prior ``[G, C]``, the observed micro-batch statistics
``[G, C]``, and the statistics of the whole tower batch ``[C]``.  Feed a large tower batch (say
512 samples) in groups of the training size: the tower statistics are then a good stand-in
for the population, and :func:`prior_report` tells, per layer, how far the prior and the
micro-batch statistics each are from them.  This is what decides between the two hand-on
modes (``propagate='input'``, the paper's, and ``'output'``) or between priors in general.

For a trained run, :mod:`kalman_norm.probe` (``scripts/estimate_quality.py``) measures more: per
checkpoint, every norm layer's group statistics, prior, posterior and moving averages against the
statistics of N images, with the same two errors.

Two errors, averaged over groups and channels:
  * mean error:      |µ_est - µ_large| / σ_large          (in units of the large-batch std)
  * variance error:  |log(σ²_est / σ²_large)|              (0 when equal; log 2 = off by 2×)
"""
import collections

import numpy as np

from .layers.kalman import kn_diagnostics

__all__ = ['prior_report', 'format_report', 'diagnostic_records']


def diagnostic_records(graph=None, tower_prefix=None):
    recs = list(kn_diagnostics(graph))
    if tower_prefix is not None:
        recs = [r for r in recs if r.layer.startswith(tower_prefix)]
    return recs


def _errors(mean, var, ref_mean, ref_var, eps=1e-5):
    std = np.sqrt(ref_var + eps)
    mean_err = np.abs(mean - ref_mean) / std
    var_err = np.abs(np.log((var + eps) / (ref_var + eps)))
    return float(np.mean(mean_err)), float(np.mean(var_err))


def prior_report(sess, feed_dict=None, records=None):
    """Run the recorded tensors once; returns a list of dicts, one per KN layer with a prior."""
    records = diagnostic_records() if records is None else records
    if not records:
        raise ValueError('No KN layer with a prior in this graph: build the model under '
                         "norm_scope('bkn') or ('gkn') in a training (or eval_stats='batch') tower")
    # only the tensor fields: q and R are None where a layer has none
    fields = ('prior_mean', 'prior_var', 'group_mean', 'group_var', 'tower_mean', 'tower_var', 'trusted')
    fetched = sess.run([{f: getattr(r, f) for f in fields} for r in records], feed_dict=feed_dict)
    rows = []
    for rec, val in zip(records, fetched):
        val = collections.namedtuple('Fetched', fields)(**val)
        prior_mean_err, prior_var_err = _errors(val.prior_mean, val.prior_var, val.tower_mean, val.tower_var)
        group_mean_err, group_var_err = _errors(val.group_mean, val.group_var, val.tower_mean, val.tower_var)
        rows.append(dict(layer=rec.layer, prior_mean_err=prior_mean_err, prior_var_err=prior_var_err,
                         batch_mean_err=group_mean_err, batch_var_err=group_var_err,
                         trusted=float(np.mean(val.trusted))))
    return rows


def format_report(rows, title=None):
    from tabulate import tabulate
    table = [[r['layer'], r['prior_mean_err'], r['prior_var_err'], r['batch_mean_err'], r['batch_var_err'],
              r['trusted']] for r in rows]
    mean = ['(mean)'] + [float(np.mean([t[i] for t in table])) for i in range(1, 6)]
    text = tabulate(table + [mean], headers=['layer', 'prior: mean err', 'prior: |log var ratio|',
                                             'micro-batch: mean err', 'micro-batch: |log var ratio|',
                                             'prior trusted'],
                    floatfmt='.3f', tablefmt='github')
    return (title + '\n\n' + text) if title else text
