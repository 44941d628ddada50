"""How well does each normalisation layer of a trained run estimate its population statistics?

KN's claim is that its posterior estimates a layer's statistics better than the micro-batch does.
This module measures it on a trained run (a ``kalman_norm.train.cifar`` log directory): it rebuilds the
run's model under the run's norm spec in a fresh graph, restores a checkpoint, and feeds N
images (say 1024 training images, fixed seed, no augmentation) as micro-batch groups of the run's
group size, with training-mode statistics and nothing updated (no optimizer; the moving averages
are not assigned).  For every normalisation layer it then compares, per channel, four estimates
of the layer's input statistics with the *reference*: the statistics of that layer's input over
all N images, with the same weights, in the same forward pass.

  (a) ``group``:     the g-sample statistics of each micro-batch group (what BN normalises with);
  (b) ``prior``:     KN's prediction µ̂_{k|k-1}, Σ̂_{k|k-1} = AΣ̂A^T + R (Eq. 7, lines 1 and 3), KN
                     layers that receive a prior only;
  (c) ``posterior``: KN's update (Eq. 7, lines 2 and 4), what a KN layer normalises with (for the
                     first KN layer, which has no prior, the group statistics);
  (d) ``moving``:    the moving averages ``mean/EMA``, ``variance/EMA`` (layers that have them).

Batch Renorm layers also report how often their corrections r = σ_B/σ and d = (µ_B - µ)/σ (group
against moving statistics) fall outside the clip [1/r_max, r_max], [-d_max, d_max] at the
checkpoint's step (:func:`renorm_clipping`): where neither is clipped, the layer trains with
exactly its moving statistics.

Errors, over channels c and groups b (the moving averages are the same for every group):
  * mean error      |m_{b,c} - m_ref,c| / sd_ref,c       (in units of the reference std)
  * variance error  |log(v_{b,c} / v_ref,c)|               (multiplicative: log 2 = off by 2x)
each summarised by its mean and its median.  Also per KN layer: the guard's trip rate (the
fraction of groups whose prior was rejected), the gain q and the process noise R.

The reference needs no extra pass: every group holds g samples of the same size, so the
statistics over all N images follow exactly from the groups' statistics (the law of total
variance, :func:`population_moments`).  Note that with training-mode statistics the input of
layer k depends on how the layers below normalised, i.e. on the group; the reference is over
the very inputs the groups saw.  And the posterior of layer k depends on the group's images
through the whole chain of priors below it: that is what is measured.
"""
import collections
import glob
import inspect
import json
import os
import re

import kalman_norm  # noqa: F401  (sets up the TF/tensorpack stack first)
import numpy as np
import tensorflow as tf
from tensorpack.tfutils.common import get_global_step_var
from tensorpack.tfutils.tower import TowerContext

from .flow import default_data_format
from .layers import MicroBatchRenorm, renorm_clip_schedule
from .layers._common import Layout
from .layers.kalman import kn_diagnostics
from .models import get_model, model_names
from .norms import get_norm, norms_where
from .provenance import atomic_write_json
from .spec import NormSpec

__all__ = ['ProbeError', 'ESTIMATES', 'load_run', 'list_checkpoints', 'epoch_of_steps', 'build_probe',
           'check_checkpoint', 'restore', 'collect', 'population_moments', 'estimate_errors',
           'layer_measures', 'renorm_clipping', 'has_renorm_clipping', 'average_over_layers',
           'pick_images', 'measure_run', 'ERROR_STATS']

#: The estimates compared with the reference, in the order (a)-(d).
ESTIMATES = ('group', 'prior', 'posterior', 'moving')
#: The error summaries kept per estimate; ``var_log_ratio_mean`` is the signed mean of
#: log(v / v_ref), the direction of a variance bias (> 0: the estimate is too large).
ERROR_STATS = ('mean_err_mean', 'mean_err_median', 'var_err_mean', 'var_err_median', 'var_log_ratio_mean')
#: Norms whose layers keep moving averages (registry rows)
_EMA_KINDS = norms_where('moving_averages')
EPSILON = 1e-5


class ProbeError(ValueError):
    """A bad run directory, checkpoint or option; the message says what is wrong."""


# ----------------------------------------------------------------------------------------------
# the run: options, checkpoints, epochs

#: The KN layers' defaults before this package's recipes (``--kn-recipe``): a KN run recorded then
#: (options.json without 'kn_recipe') lists only the norm options it was given, and the layers
#: filled in these (R learned, the input hand-on).  Later runs record every KN option.
PRE_RECIPE_KN_DEFAULTS = {'process_noise': True, 'propagate': 'input'}


def load_run(logdir):
    """The run's options (``LOGDIR/options.json`` over the trainer's defaults) and its NormSpec."""
    from .train import cifar
    path = os.path.join(logdir, 'options.json')
    if not os.path.isdir(logdir):
        raise ProbeError('%s is not a directory: pass the log directory of a training run' % logdir)
    if not os.path.isfile(path):
        raise ProbeError('%s has no options.json: pass the log directory of a kalman_norm.train.cifar '
                         'training run' % logdir)
    try:
        with open(path) as f:
            raw = json.load(f)
    except ValueError as e:
        raise ProbeError('%s is not valid JSON: %s' % (path, e))
    if not isinstance(raw, dict):
        raise ProbeError('%s must hold a JSON object of options, got %s' % (path, type(raw).__name__))
    o = dict(cifar.DEFAULTS)
    o.update({k: v for k, v in raw.items() if k != 'spec'})   # 'spec' is a repr; rebuilt below
    o['norm_options'] = dict(o.get('norm_options') or {})
    o['model_options'] = dict(o.get('model_options') or {})
    try:
        kalman = get_norm(o['norm']).kalman
    except ValueError as e:
        raise ProbeError('%s: %s' % (path, e))
    if kalman and 'kn_recipe' not in raw:
        o['norm_options'] = dict(PRE_RECIPE_KN_DEFAULTS, **o['norm_options'])
    if kalman and o['gain'] in ('auto', None) and 'gain' not in o['norm_options']:
        raise ProbeError("%s: a KN run's options must hold the gain it trained with (a number or "
                         "'learned'; the trainer records the resolved value), got %r" % (path, o['gain']))
    if o['model'] not in model_names('cifar'):
        raise ProbeError('%s: model must be one of %s, got %r' % (path, ', '.join(model_names('cifar')), o['model']))
    try:
        if o.get('steps_per_epoch_estimate') is None:      # BRN's warm-up needs it; older runs lack it
            o['steps_per_epoch_estimate'] = o.get('steps_per_epoch') or 50000 // o['total_batch']
        spec = cifar.make_spec(o)
    except (ValueError, TypeError, KeyError) as e:
        raise ProbeError('%s does not describe a norm this code can build: %s' % (path, e))
    return o, spec


def list_checkpoints(logdir):
    """[(step, checkpoint prefix)] of the ``model-<step>.index`` files in ``logdir``, by step."""
    found = []
    for index in glob.glob(os.path.join(logdir, 'model-*.index')):
        m = re.match(r'model-(\d+)\.index$', os.path.basename(index))
        if m:
            found.append((int(m.group(1)), index[:-len('.index')]))
    return sorted(found)


def epoch_of_steps(logdir, options):
    """A function step -> epoch: from the run's stats.json (tensorpack records ``global_step`` and
    ``epoch_num`` per epoch), else from ``steps_per_epoch`` if the run fixed it, else None."""
    table = {}
    path = os.path.join(logdir, 'stats.json')
    if os.path.isfile(path):
        try:
            with open(path) as f:
                for entry in json.load(f):
                    if 'global_step' in entry and 'epoch_num' in entry:
                        table[int(entry['global_step'])] = int(entry['epoch_num'])
        except (ValueError, TypeError):
            table = {}
    per_epoch = options.get('steps_per_epoch')

    def epoch(step):
        if step in table:
            return table[step]
        if per_epoch:
            return step / float(per_epoch)
        return None
    return epoch


def pick_images(images, count, seed):
    """``count`` distinct images in a random order fixed by ``seed`` (consecutive ones form groups)."""
    if count > len(images):
        raise ProbeError('asked for %d images but the split holds only %d' % (count, len(images)))
    return images[np.random.RandomState(seed).choice(len(images), count, replace=False)]


# ----------------------------------------------------------------------------------------------
# the graph

#: One probed normalisation layer: its name and tensors.  [G, C] per micro-batch group:
#: group_mean/var, prior_mean/var (with R), posterior_mean/var, trusted [G, 1]; moving_mean/var [C]
#: (variables); gain [] and process_noise [C] (the layer's tensor: R, or r where R = r ⊙ AΣ̂Aᵀ, see
#: :func:`noise_param`); renorm_rmax, renorm_dmax [] (a Batch Renorm layer's clip at the
#: checkpoint's global step); input (the layer's input).  None where the layer has no such thing.
ProbedLayer = collections.namedtuple(
    'ProbedLayer', ['name', 'kind', 'group_mean', 'group_var', 'prior_mean', 'prior_var',
                    'posterior_mean', 'posterior_var', 'trusted', 'moving_mean', 'moving_var',
                    'gain', 'process_noise', 'renorm_rmax', 'renorm_dmax', 'input'])
#: the fields that are the same for every group (fetched once, not concatenated over chunks)
_PER_LAYER_FIELDS = ('moving_mean', 'moving_var', 'gain', 'process_noise', 'renorm_rmax', 'renorm_dmax')
#: what :func:`collect` fetches (not the layer's input, which is large; tests fetch it)
_TENSOR_FIELDS = ProbedLayer._fields[2:-1]


class _RecordingSpec(NormSpec):
    """The run's NormSpec, recording every normalisation layer it builds (a :class:`ProbedLayer`).

    Layers with moving averages are built with ``ema_update='skip'`` so that nothing the probe
    runs can change them, whatever the run's option was."""

    def __init__(self, spec):
        NormSpec.__init__(self, spec.kind, group_size=spec.group_size, prior_method=spec.prior_method,
                          prior_samples=spec.prior_samples, **spec.options)
        self.layers = []
        self.relative_noise = noise_param(spec) == 'relative'

    def __call__(self, name, x, **overrides):
        if self.kind in _EMA_KINDS:
            overrides['ema_update'] = 'skip'
        outer = tf.compat.v1.get_variable_scope().name
        scope = '%s/%s' % (outer, name) if outer else name
        before = len(kn_diagnostics())
        out = NormSpec.__call__(self, name, x, **overrides)
        new = kn_diagnostics()[before:]
        record = new[0] if new else None

        data_format = overrides.get('data_format', self.options.get('data_format')) or default_data_format()
        layout = Layout(x, data_format)
        with tf.name_scope(name + '_probe'):
            _, group_mean, group_var = layout.group_moments(tf.cast(x, tf.float32), self.group_size)
        fields = dict(name=scope, kind=self.kind, group_mean=group_mean, group_var=group_var,
                      prior_mean=None, prior_var=None, posterior_mean=None, posterior_var=None,
                      trusted=None, moving_mean=None, moving_var=None, gain=None, process_noise=None,
                      renorm_rmax=None, renorm_dmax=None, input=x)
        if self.kind == 'brn':
            with tf.name_scope(name + '_probe'):
                fields['renorm_rmax'], fields['renorm_dmax'] = renorm_clip_schedule(
                    **renorm_clip_options(dict(self.options, **overrides)))
        posterior = getattr(out, 'posterior', None)
        if posterior is not None:
            fields.update(posterior_mean=posterior.mean, posterior_var=posterior.var)
        if record is not None:
            prior_var = record.prior_var
            if record.process_noise is not None:                 # Σ̂_{k|k-1} = AΣ̂A^T + R
                prior_var = prior_var * (1.0 + record.process_noise) if self.relative_noise \
                    else prior_var + record.process_noise
            fields.update(prior_mean=record.prior_mean, prior_var=prior_var, trusted=record.trusted,
                          gain=record.gain, process_noise=record.process_noise)
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
        fields.update(moving_mean=variables.get(scope + '/mean/EMA'),
                      moving_var=variables.get(scope + '/variance/EMA'))
        self.layers.append(ProbedLayer(**fields))
        return out


def renorm_clip_options(options):
    """rmax, dmax and warmup of a Batch Renorm layer built with ``options``: those given, else the
    layer's defaults."""
    params = inspect.signature(MicroBatchRenorm).parameters
    return {k: options.get(k, params[k].default) for k in ('rmax', 'dmax', 'warmup')}


def noise_param(spec):
    """How a KN spec's ``process_noise`` tensor enters the prediction: 'relative' (R = r ⊙ AΣ̂Aᵀ, the
    tensor is r) or 'softplus' (R added, the tensor is R) — the spec's option, else the layer's
    default; 'softplus' for layers without the option (the first version: R added).  None if not KN."""
    from .layers import BatchKalmanNorm, GroupKalmanNorm
    layer = {'bkn': BatchKalmanNorm, 'gkn': GroupKalmanNorm}.get(spec.kind)
    if layer is None:
        return None
    if 'noise_param' in spec.options:
        return spec.options['noise_param']
    param = inspect.signature(layer).parameters.get('noise_param')
    return 'softplus' if param is None else param.default


Probe = collections.namedtuple('Probe', ['graph', 'images', 'layers', 'group_size', 'spec'])


def _logits(options, image, num_classes):
    return get_model(options['model']).build(image, num_classes, options)


def build_probe(options, spec, num_classes, channel_mean, channel_std, image_shape=(32, 32, 3), seed=0):
    """A fresh graph of the run's model with every normalisation layer probed.

    Inputs are uint8 images, normalised in the graph as the trainer does:
    (x - channel_mean) / channel_std.  Variables are named as in the trainer's first tower."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)          # the Monte-Carlo prior samples: repeatable
        images = tf.compat.v1.placeholder(tf.uint8, [None] + list(image_shape), name='input')
        recording = _RecordingSpec(spec)
        with TowerContext('', is_training=True):
            get_global_step_var()       # at the root scope, as the trainer creates it
            image = (tf.cast(images, tf.float32) - np.asarray(channel_mean, np.float32)) \
                / np.asarray(channel_std, np.float32)
            with recording:
                _logits(options, image, num_classes)
    if not recording.layers:
        raise ProbeError('The model has no normalisation layer to probe (norm %r)' % spec.kind)
    return Probe(graph, images, recording.layers, spec.group_size, spec)


def check_checkpoint(probe, prefix):
    """Raise ProbeError unless the checkpoint holds every variable of the graph, with its shape."""
    try:
        stored = dict(tf.train.list_variables(prefix))
    except Exception as e:  # not found / corrupt: TF raises several kinds
        raise ProbeError('cannot read checkpoint %s: %s' % (prefix, str(e).splitlines()[0]))
    with probe.graph.as_default():
        wanted = {v.op.name: v.shape.as_list() for v in tf.compat.v1.global_variables()}
    missing = sorted(k for k in wanted if k not in stored)
    wrong = sorted(k for k in wanted if k in stored and list(stored[k]) != wanted[k])
    if missing or wrong:
        raise ProbeError('checkpoint %s does not fit the model of options.json: %s%s' % (
            prefix, ('missing %s' % ', '.join(missing[:5]) + (' ...' if len(missing) > 5 else '')) if missing else '',
            ('; shape differs for %s' % ', '.join(wrong[:5])) if wrong else ''))


def restore(sess, probe, prefix):
    with probe.graph.as_default():
        tf.compat.v1.train.Saver(tf.compat.v1.global_variables()).restore(sess, prefix)


def collect(sess, probe, images, chunk_images=256, layers=None):
    """Feed ``images`` (uint8 [N, H, W, 3], N a multiple of the group size) in chunks of whole
    groups; returns one dict per probed layer: name, kind, and NumPy arrays of its tensor fields,
    [G, C] ones concatenated over all N / g groups (None where the layer has none)."""
    g = probe.group_size
    if len(images) == 0 or len(images) % g:
        raise ProbeError('%d images do not split into whole groups of %d' % (len(images), g))
    chunk = g * max(1, chunk_images // g)
    chosen = [l for l in probe.layers if layers is None or l.name in layers]
    fetches = [{f: getattr(l, f) for f in _TENSOR_FIELDS if getattr(l, f) is not None} for l in chosen]
    parts = []
    for start in range(0, len(images), chunk):
        parts.append(sess.run(fetches, {probe.images: images[start:start + chunk]}))
    out = []
    for i, layer in enumerate(chosen):
        rec = dict(name=layer.name, kind=layer.kind)
        for f in _TENSOR_FIELDS:
            if f not in fetches[i]:
                rec[f] = None
            elif f in _PER_LAYER_FIELDS:
                rec[f] = np.asarray(parts[0][i][f])          # the same in every chunk
            else:
                rec[f] = np.concatenate([np.reshape(p[i][f], (-1,) + np.shape(p[i][f])[-1:]) for p in parts])
        out.append(rec)
    return out


# ----------------------------------------------------------------------------------------------
# the measures (NumPy only)

def population_moments(group_mean, group_var):
    """Mean and (biased) variance over all samples, per channel, from the moments [G, C] of G
    groups of equal size: the mean of the means, and the mean of the variances plus the
    variance of the means (law of total variance)."""
    group_mean = np.asarray(group_mean, np.float64)
    mean = group_mean.mean(0)
    return mean, np.asarray(group_var, np.float64).mean(0) + np.square(group_mean - mean).mean(0)


def estimate_errors(mean, var, ref_mean, ref_var, epsilon=EPSILON):
    """Mean and median over groups and channels of |m - m_ref| / sd_ref and |log(v / v_ref)|, and
    the mean of the signed log(v / v_ref).
    ``mean``/``var`` are [G, C] or [C]; ``epsilon`` (the layers' default) keeps dead channels
    (zero variance) finite.  Groups with a non-finite or negative estimate (a prior the layer
    rejects) are left out and counted: ``unusable`` is their fraction (NaN errors if all are)."""
    mean = np.atleast_2d(np.asarray(mean, np.float64))
    var = np.atleast_2d(np.asarray(var, np.float64))
    usable = np.all(np.isfinite(mean) & np.isfinite(var) & (var >= 0), axis=1)
    out = dict(unusable=float(1.0 - usable.mean()))
    if not usable.any():
        return dict(out, **{k: float('nan') for k in ERROR_STATS})
    mean_err = np.abs(mean[usable] - ref_mean) / np.sqrt(ref_var + epsilon)
    log_ratio = np.log((var[usable] + epsilon) / (ref_var + epsilon))
    var_err = np.abs(log_ratio)
    return dict(out, mean_err_mean=float(np.mean(mean_err)), mean_err_median=float(np.median(mean_err)),
                var_err_mean=float(np.mean(var_err)), var_err_median=float(np.median(var_err)),
                var_log_ratio_mean=float(np.mean(log_ratio)))


def layer_measures(rec):
    """The measures of one layer from :func:`collect`'s arrays (a JSON-ready dict)."""
    ref_mean, ref_var = population_moments(rec['group_mean'], rec['group_var'])
    groups, channels = np.shape(rec['group_mean'])
    out = dict(layer=rec['name'], kind=rec['kind'], groups=int(groups), channels=int(channels),
               ref_std_mean=float(np.mean(np.sqrt(ref_var))))
    for est in ESTIMATES:
        m, v = rec.get(est + '_mean'), rec.get(est + '_var')
        out[est] = None if m is None else estimate_errors(m, v, ref_mean, ref_var)
    out['guard_trip_rate'] = None if rec.get('trusted') is None else \
        float(1.0 - np.mean(np.asarray(rec['trusted'], np.float64)))
    out['gain'] = None if rec.get('gain') is None else float(rec['gain'])
    noise = rec.get('process_noise')
    out['process_noise'] = None if noise is None else dict(
        mean=float(np.mean(noise)), min=float(np.min(noise)), max=float(np.max(noise)))
    out['renorm'] = None if rec.get('renorm_rmax') is None else renorm_clipping(rec)
    return out


def renorm_clipping(rec, epsilon=EPSILON):
    """A Batch Renorm layer's corrections per group and channel, r = σ_B / σ and d = (µ_B - µ) / σ
    (σ_B, µ_B the group's, σ, µ the moving statistics; σ = sqrt(v + epsilon) as in the layer), and the
    fractions outside the clip at the checkpoint's step: r outside [1/r_max, r_max], |d| > d_max,
    either.  Where neither is clipped the training output γ (r (x - µ_B) / σ_B + d) + β is exactly
    γ (x - µ) / σ + β: the layer trains with its moving statistics, the function it is evaluated
    with when the test uses them."""
    r_max, d_max = float(rec['renorm_rmax']), float(rec['renorm_dmax'])
    moving_std = np.sqrt(np.asarray(rec['moving_var'], np.float64) + epsilon)
    r = np.sqrt(np.asarray(rec['group_var'], np.float64) + epsilon) / moving_std
    d = (np.asarray(rec['group_mean'], np.float64) - np.asarray(rec['moving_mean'], np.float64)) / moving_std
    r_clipped = (r > r_max) | (r < 1.0 / r_max)
    d_clipped = np.abs(d) > d_max
    return dict(r_max=r_max, d_max=d_max, r_clipped=float(r_clipped.mean()), d_clipped=float(d_clipped.mean()),
                clipped=float((r_clipped | d_clipped).mean()))


def average_over_layers(layers):
    """Each measure averaged over the layers that have it (and how many do)."""
    avg = {}
    for est in ESTIMATES:
        have = [l[est] for l in layers if l[est] is not None]
        avg[est] = None if not have else dict({s: float(np.mean([h[s] for h in have])) for s in ERROR_STATS},
                                              layers=len(have))
    for key in ('guard_trip_rate', 'gain'):
        have = [l[key] for l in layers if l[key] is not None]
        avg[key] = float(np.mean(have)) if have else None
    have = [l['process_noise']['mean'] for l in layers if l['process_noise'] is not None]
    avg['process_noise'] = float(np.mean(have)) if have else None
    have = [l['renorm']['clipped'] for l in layers if l.get('renorm') is not None]
    avg['renorm_clipped'] = float(np.mean(have)) if have else None
    return avg


# ----------------------------------------------------------------------------------------------
# one run

def settings_of(images_count, seed, group_size, split='train'):
    return dict(images=int(images_count), seed=int(seed), group_size=int(group_size), split=split)


def measure_run(logdir, images, num_classes, channel_mean, channel_std, checkpoints=None, seed=0,
                chunk_images=256, out_path=None, redo=False, log=print):
    """Measure the checkpoints of a run on ``images`` (uint8, already picked); writes the JSON
    after every checkpoint (atomically) and returns its content.

    ``checkpoints``: [(step, prefix)], default every checkpoint of ``logdir``.  Results already in
    ``out_path`` for the same settings are kept and their checkpoints skipped (unless ``redo``);
    a file measured with other settings is an error unless ``redo``."""
    options, spec = load_run(logdir)
    checkpoints = list_checkpoints(logdir) if checkpoints is None else checkpoints
    if not checkpoints:
        raise ProbeError('%s holds no checkpoint (model-<step>.index)' % logdir)
    g = spec.group_size
    if len(images) == 0 or len(images) % g:
        raise ProbeError('--images (%d) must be a positive multiple of the run\'s group size %d'
                         % (len(images), g))
    out_path = out_path or os.path.join(logdir, 'estimate_quality.json')
    settings = settings_of(len(images), seed, g)
    result = dict(logdir=os.path.abspath(logdir), spec=repr(spec), noise_param=noise_param(spec),
                  run=dict((k, options.get(k)) for k in ('norm', 'batch', 'model', 'depth', 'dataset',
                                                          'gain', 'prior', 'epochs')),
                  settings=settings, checkpoints=[])
    if os.path.exists(out_path) and not redo:
        try:
            with open(out_path) as f:
                old = json.load(f)
        except ValueError as e:
            raise ProbeError('%s exists but is not valid JSON (%s); pass --redo to replace it' % (out_path, e))
        if old.get('settings') != settings:
            raise ProbeError('%s was measured with %s, not %s: pass --redo to replace it or --out '
                             'to write elsewhere' % (out_path, old.get('settings'), settings))
        result['checkpoints'] = list(old.get('checkpoints', []))
    done = {c['step'] for c in result['checkpoints']}
    todo = [(s, p) for s, p in checkpoints if s not in done]

    if not todo:
        log('%s: every checkpoint already measured with these settings' % out_path)
        return result
    probe = build_probe(options, spec, num_classes, channel_mean, channel_std, images.shape[1:], seed)
    for _, prefix in todo:
        check_checkpoint(probe, prefix)             # every one, before the first heavy run
    epoch = epoch_of_steps(logdir, options)
    with tf.compat.v1.Session(graph=probe.graph) as sess:
        for step, prefix in todo:
            restore(sess, probe, prefix)
            layers = [layer_measures(r) for r in collect(sess, probe, images, chunk_images)]
            result['checkpoints'].append(dict(step=step, epoch=epoch(step), checkpoint=os.path.basename(prefix),
                                              layers=layers, average=average_over_layers(layers)))
            result['checkpoints'].sort(key=lambda c: c['step'])
            atomic_write_json(out_path, result, sort_keys=False)
            log('measured %s (step %d)' % (os.path.basename(prefix), step))
    return result


def has_renorm_clipping(result):
    """Whether a measured run reports Batch Renorm's clip rate (older files and other norms do not)."""
    return any(c['average'].get('renorm_clipped') is not None for c in result['checkpoints'])


def format_summary(result):
    """Tabulate: per checkpoint the layer-averaged mean errors, then per layer the last checkpoint."""
    from tabulate import tabulate

    def cell(d, key):
        return '' if d is None else d[key]

    def opt(v):
        return '' if v is None else v

    renorm = has_renorm_clipping(result)
    rows = []
    for c in result['checkpoints']:
        a = c['average']
        rows.append([c['epoch'] if c['epoch'] is not None else '', c['step']]
                    + [cell(a[e], 'mean_err_mean') for e in ESTIMATES]
                    + [cell(a[e], 'var_err_mean') for e in ESTIMATES]
                    + [opt(a['guard_trip_rate']), opt(a['gain']), opt(a['process_noise'])]
                    + ([opt(a.get('renorm_clipped'))] if renorm else []))
    heads = (['epoch', 'step'] + ['mean err: %s' % e for e in ESTIMATES]
             + ['|log var|: %s' % e for e in ESTIMATES] + ['guard trips', 'q', 'R']
             + (['r/d clipped'] if renorm else []))
    text = ['%s — %s, %d images in groups of %d; errors vs the statistics of all images '
            '(means over groups and channels, then over layers)' % (
                result['logdir'], result['spec'], result['settings']['images'], result['settings']['group_size']),
            tabulate(rows, heads, floatfmt='.3f', tablefmt='github')]
    if result['checkpoints']:
        last = result['checkpoints'][-1]
        rows = [[l['layer']] + [cell(l[e], 'mean_err_mean') for e in ESTIMATES]
                + [cell(l[e], 'var_err_mean') for e in ESTIMATES]
                + [opt(l['guard_trip_rate']), opt(l['gain']),
                   '' if l['process_noise'] is None else l['process_noise']['mean']]
                + ([cell(l.get('renorm'), 'clipped')] if renorm else [])
                for l in last['layers']]
        text += ['', 'per layer, %s:' % last['checkpoint'],
                 tabulate(rows, ['layer'] + heads[2:], floatfmt='.3f', tablefmt='github')]
    return '\n'.join(text)


# ----------------------------------------------------------------------------------------------
# the paper's Fig. 5

def probe_checkpoint(logdir, images, num_classes, channel_mean, channel_std, checkpoint=None,
                     layer=None, chunk_images=256):
    """Run one checkpoint (default: the last) of a run on ``images``; returns (options, spec,
    collected arrays of ``layer`` — default: the last normalisation layer of the model)."""
    options, spec = load_run(logdir)
    found = list_checkpoints(logdir)
    if checkpoint is None:
        if not found:
            raise ProbeError('%s holds no checkpoint (model-<step>.index)' % logdir)
        checkpoint = found[-1][1]
    probe = build_probe(options, spec, num_classes, channel_mean, channel_std, images.shape[1:])
    names = [l.name for l in probe.layers]
    layer = names[-1] if layer is None else layer
    if layer not in names:
        raise ProbeError('%s has no normalisation layer %r; its layers: %s' % (logdir, layer, ', '.join(names)))
    check_checkpoint(probe, checkpoint)
    with tf.compat.v1.Session(graph=probe.graph) as sess:
        restore(sess, probe, checkpoint)
        rec = collect(sess, probe, images, chunk_images, layers=[layer])[0]
    rec['checkpoint'] = checkpoint
    return options, spec, rec


def variance_gap(rec):
    """Fig. 5's map for one layer, from :func:`collect`'s arrays over test batches of one group each:
    |batch variance - moving variance| per channel (rows) and test batch (columns).

    "Batch variance" is the variance the layer normalises with when run online on the test batch
    (option B): a BN layer's group variance; a KN layer's posterior variance (Eq. 7).  The gap of
    the raw group variance is returned as well (``raw_gap``), for KN the micro-batch's own share.
    Summaries: the mean over the map, and that mean relative to the mean moving variance."""
    if rec.get('moving_var') is None:
        raise ProbeError('layer %s (norm %s) has no moving variance: Fig. 5 needs a norm with moving '
                         'averages (bn, bkn, brn)' % (rec['name'], rec['kind']))
    moving = np.asarray(rec['moving_var'], np.float64)
    used = rec['posterior_var'] if rec.get('posterior_var') is not None else rec['group_var']
    gap = np.abs(np.asarray(used, np.float64) - moving).T
    raw = np.abs(np.asarray(rec['group_var'], np.float64) - moving).T
    scale = float(np.mean(moving))
    return dict(layer=rec['name'], kind=rec['kind'], checkpoint=rec.get('checkpoint'), gap=gap, raw_gap=raw, moving_var=moving,
                normalises_with='posterior' if rec.get('posterior_var') is not None else 'group',
                mean_gap=float(gap.mean()), relative_gap=float(gap.mean()) / scale,
                raw_mean_gap=float(raw.mean()), raw_relative_gap=float(raw.mean()) / scale)
