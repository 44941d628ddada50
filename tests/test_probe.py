"""kalman_norm.probe and its scripts: estimate quality of a trained run's norm layers, Fig. 5.

A tiny ResNet (n=1) on 8x8 random images; its "checkpoints" are initialised (and perturbed)
variables saved with tf.compat.v1.train.Saver into a run directory with a trainer-like
options.json.  No training, no /work/shared.
"""
import importlib.util
import json
import os

import kalman_norm  # noqa: F401
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import expit

from kalman_norm import probe
from kalman_norm.train import cifar

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
SHAPE = (8, 8, 3)
MEAN, STD = np.array([120.0, 110.0, 100.0], np.float32), np.array([60.0, 55.0, 50.0], np.float32)
LAYERS = ['bn0', 'res1.0/bn1', 'res1.0/bn2', 'res2.0/bn1', 'res2.0/bn2', 'res3.0/bn1', 'res3.0/bn2']


def _images(count, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (count,) + SHAPE).astype(np.uint8)


def _options(logdir, norm='bkn', batch=2, **extra):
    o = dict(cifar.DEFAULTS)
    o.update(norm=norm, batch=batch, depth=1, model='resnet', dataset='cifar10', epochs=2,
             steps_per_epoch=5, logdir=str(logdir), norm_options={}, model_options={})
    if norm in ('bkn', 'gkn'):
        o['gain'] = 0.1
    o.update(extra)
    return o


def make_run(logdir, steps=(5, 10), seed=0, stats=True, **options):
    """A run directory like the trainer's: options.json, stats.json, model-<step> checkpoints
    whose variables are initialised, then perturbed differently at each step (EMA, γ, β, q, R),
    with the global step at the checkpoint's step (Batch Renorm's clip follows it)."""
    os.makedirs(logdir, exist_ok=True)
    o = _options(logdir, **options)
    spec = cifar.make_spec(o)
    with open(os.path.join(logdir, 'options.json'), 'w') as f:
        json.dump(dict(o, spec=repr(spec)), f, default=str)
    p = probe.build_probe(o, spec, 10, MEAN, STD, SHAPE)
    rng = np.random.RandomState(seed)
    with tf.compat.v1.Session(graph=p.graph) as sess, p.graph.as_default():
        sess.run(tf.compat.v1.global_variables_initializer())
        saver = tf.compat.v1.train.Saver()
        for step in steps:
            for v in tf.compat.v1.global_variables():
                name, shape = v.op.name, v.shape.as_list()
                if name.endswith('mean/EMA') or name.endswith('/beta'):
                    v.load(rng.normal(0, 0.3, shape), sess)
                elif name.endswith('variance/EMA') or name.endswith('/gamma'):
                    v.load(rng.uniform(0.5, 2.0, shape), sess)
                elif name.endswith('gain_logit'):
                    v.load(rng.normal(-1.0, 0.5), sess)
                elif name.endswith('noise_rho'):
                    v.load(rng.normal(-2.0, 0.5, shape), sess)
                elif name == 'global_step':
                    v.load(step, sess)
            saver.save(sess, os.path.join(logdir, 'model'), global_step=step)
    if stats:
        with open(os.path.join(logdir, 'stats.json'), 'w') as f:
            json.dump([dict(epoch_num=i + 1, global_step=s) for i, s in enumerate(steps)], f)
    return o, spec


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'scripts', name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def kn_run(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp('kn_run'))
    o, spec = make_run(logdir, norm='bkn', gain='learned', norm_options={'process_noise': True})
    return logdir, o, spec


@pytest.fixture(scope='module')
def bn_run(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp('bn_run'))
    o, spec = make_run(logdir, norm='bn', seed=1)
    return logdir, o, spec


@pytest.fixture(scope='module')
def measured(kn_run, bn_run):
    """Both runs measured on 8 images into their default LOGDIR/estimate_quality.json."""
    logs = []
    results = [probe.measure_run(run[0], _images(8), 10, MEAN, STD, log=logs.append) for run in (kn_run, bn_run)]
    return results, logs


# ----------------------------------------------------------------------------------------------
# the measures against NumPy

def _np_group_moments(x, g):
    grouped = x.reshape((-1, g) + x.shape[1:]).astype(np.float64)      # [G, g, H, W, C]
    return grouped.mean(axis=(1, 2, 3)), grouped.var(axis=(1, 2, 3))


def _np_errors(m, v, ref_m, ref_v, eps=1e-5):
    me = np.abs(m - ref_m) / np.sqrt(ref_v + eps)
    lr = np.log((v + eps) / (ref_v + eps))
    ve = np.abs(lr)
    return dict(mean_err_mean=me.mean(), mean_err_median=np.median(me), var_err_mean=ve.mean(),
                var_err_median=np.median(ve), var_log_ratio_mean=lr.mean())


def test_measures_match_numpy_from_the_layer_inputs(kn_run):
    """Group statistics, reference, all four estimates' errors, guard rate, q and R, recomputed in
    NumPy from the raw layer inputs and the fetched prior / posterior / EMA / q / R."""
    logdir, o, spec = kn_run
    step, prefix = probe.list_checkpoints(logdir)[-1]
    p = probe.build_probe(o, spec, 10, MEAN, STD, SHAPE)
    images = _images(16)
    with tf.compat.v1.Session(graph=p.graph) as sess:
        probe.restore(sess, p, prefix)
        with p.graph.as_default():
            ema_before = sess.run([l.moving_var for l in p.layers])
        recs = probe.collect(sess, p, images, chunk_images=4)        # 4 chunks of 2 groups
        raw = sess.run([l.input for l in p.layers], {p.images: images})
        ema_after = sess.run([l.moving_var for l in p.layers])
    assert [r['name'] for r in recs] == LAYERS
    for before, after in zip(ema_before, ema_after):                # nothing was updated
        np.testing.assert_array_equal(before, after)
    # q, R and the moving averages are the checkpoint's
    stored = {k: tf.train.load_variable(prefix, k) for k, _ in tf.train.list_variables(prefix)}
    rec = recs[2]
    assert rec['name'] == 'res1.0/bn2'
    assert float(rec['gain']) == pytest.approx(expit(stored['res1.0/bn2/gain_logit']), rel=1e-5)
    np.testing.assert_allclose(rec['process_noise'], np.logaddexp(0, stored['res1.0/bn2/noise_rho']), rtol=1e-5)
    np.testing.assert_allclose(rec['moving_var'], stored['res1.0/bn2/variance/EMA'])
    for rec, x in zip(recs, raw):
        gm, gv = _np_group_moments(x, 2)
        np.testing.assert_allclose(rec['group_mean'], gm, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rec['group_var'], gv, rtol=1e-3, atol=1e-5)
        ref_m, ref_v = x.astype(np.float64).mean((0, 1, 2)), x.astype(np.float64).var((0, 1, 2))
        pm, pv = probe.population_moments(rec['group_mean'], rec['group_var'])
        np.testing.assert_allclose(pm, ref_m, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(pv, ref_v, rtol=1e-3, atol=1e-5)
        got = probe.layer_measures(rec)
        for est in ('group', 'posterior', 'moving', 'prior'):
            if rec[est + '_mean'] is None:
                assert got[est] is None
                continue
            want = _np_errors(rec[est + '_mean'].astype(np.float64), rec[est + '_var'].astype(np.float64), ref_m, ref_v)
            for k, v in want.items():
                assert got[est][k] == pytest.approx(v, rel=2e-3, abs=1e-4), (rec['name'], est, k)
        if rec['name'] == 'bn0':                # first KN layer: no prior; posterior = group stats
            assert rec['prior_mean'] is None and got['guard_trip_rate'] is None and got['gain'] is None
            np.testing.assert_allclose(rec['posterior_var'], rec['group_var'], rtol=1e-6)
            continue
        q, r = float(rec['gain']), rec['process_noise']
        assert got['gain'] == pytest.approx(q) and got['process_noise']['mean'] == pytest.approx(r.mean())
        assert got['guard_trip_rate'] == pytest.approx(1.0 - rec['trusted'].mean())
        # Eq. 7 with the pooled term, from the fetched prior (which includes R): the posterior
        # of every trusted group, the group's own statistics for the others.
        trusted = rec['trusted'][:, 0]
        post_m = (1 - q) * rec['prior_mean'] + q * rec['group_mean']
        post_v = (1 - q) * rec['prior_var'] + q * rec['group_var'] \
            + q * (1 - q) * (rec['group_mean'] - rec['prior_mean']) ** 2
        np.testing.assert_allclose(rec['posterior_mean'][trusted], post_m[trusted], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rec['posterior_var'][trusted], post_v[trusted], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(rec['posterior_var'][~trusted], rec['group_var'][~trusted], rtol=1e-6)


def test_group_error_shrinks_as_the_group_grows_and_is_zero_at_n(bn_run):
    logdir, o, _ = bn_run
    prefix = probe.list_checkpoints(logdir)[-1][1]
    images = _images(32, seed=3)
    errors = {}
    for g in (1, 4, 32):
        oo = dict(o, batch=g)
        p = probe.build_probe(oo, cifar.make_spec(oo), 10, MEAN, STD, SHAPE)
        with tf.compat.v1.Session(graph=p.graph) as sess:
            probe.restore(sess, p, prefix)
            layers = [probe.layer_measures(r) for r in probe.collect(sess, p, images)]
        avg = probe.average_over_layers(layers)
        errors[g] = (avg['group']['mean_err_mean'], avg['group']['var_err_mean'])
        assert avg['prior'] is None and avg['posterior'] is None and avg['moving']['layers'] == 7
    assert errors[1][0] > errors[4][0] > errors[32][0]
    assert errors[1][1] > errors[4][1] > errors[32][1]
    assert errors[32][0] == pytest.approx(0.0, abs=1e-5) and errors[32][1] == pytest.approx(0.0, abs=1e-4)


def test_batch_renorm_clip_rates_match_numpy_at_each_checkpoints_step(tmp_path, bn_run):
    """A BRN run: r = σ_B/σ and d = (µ_B - µ)/σ per group and channel, from the layer's raw input
    and the checkpoint's moving averages, clipped at the warm-up's r_max, d_max of the checkpoint's
    global step; reported per layer, averaged, and as a column of the summary (BRN runs only)."""
    logdir = str(tmp_path / 'brn')
    o, spec = make_run(logdir, steps=(5, 10), norm='brn', norm_options={'warmup': (0, 20, 10)})
    p = probe.build_probe(o, spec, 10, MEAN, STD, SHAPE)
    images = _images(16)
    eps = probe.EPSILON
    for (step, prefix), (r_max, d_max) in zip(probe.list_checkpoints(logdir), [(1.5, 2.5), (2.0, 5.0)]):
        with tf.compat.v1.Session(graph=p.graph) as sess:
            probe.restore(sess, p, prefix)
            recs = probe.collect(sess, p, images, chunk_images=4)
            raw = sess.run([l.input for l in p.layers], {p.images: images})
        rates = []
        for rec, x in zip(recs, raw):
            got = probe.layer_measures(rec)['renorm']
            assert (got['r_max'], got['d_max']) == (pytest.approx(r_max), pytest.approx(d_max))
            gm, gv = _np_group_moments(x, 2)
            m = tf.train.load_variable(prefix, rec['name'] + '/mean/EMA').astype(np.float64)
            s = np.sqrt(tf.train.load_variable(prefix, rec['name'] + '/variance/EMA').astype(np.float64) + eps)
            r, d = np.sqrt(gv + eps) / s, (gm - m) / s
            r_out, d_out = (r > r_max) | (r < 1 / r_max), np.abs(d) > d_max
            assert got['r_clipped'] == pytest.approx(r_out.mean(), abs=1e-3)
            assert got['d_clipped'] == pytest.approx(d_out.mean(), abs=1e-3)
            assert got['clipped'] == pytest.approx((r_out | d_out).mean(), abs=1e-3)
            rates.append(got['clipped'])
        assert 0.0 < np.mean(rates) < 1.0
    result = probe.measure_run(logdir, _images(8), 10, MEAN, STD, log=lambda *a: None)
    for c in result['checkpoints']:
        assert c['average']['renorm_clipped'] == pytest.approx(np.mean([l['renorm']['clipped'] for l in c['layers']]))
    assert 'r/d clipped' in probe.format_summary(result)
    # other norms: no clip, no column
    bn = probe.measure_run(bn_run[0], _images(8), 10, MEAN, STD, out_path=str(tmp_path / 'bn.json'),
                           log=lambda *a: None)
    assert all(l['renorm'] is None for l in bn['checkpoints'][0]['layers'])
    assert bn['checkpoints'][0]['average']['renorm_clipped'] is None
    assert 'r/d clipped' not in probe.format_summary(bn)
    plot = _load_script('plot_estimates')
    for run, said in ((logdir, True), (str(tmp_path / 'bn.json'), False)):
        md = str(tmp_path / 'estimates.md')
        plot.main([run, '--out', str(tmp_path / 'estimates.png'), '--markdown', md])
        assert ('r/d clipped (Batch Renorm)' in open(md).read()) == said


# ----------------------------------------------------------------------------------------------
# a run: json, skipping, bad input

def test_measure_run_writes_every_checkpoint_and_layer(kn_run, measured):
    logdir = kn_run[0]
    result, logs = measured[0][0], measured[1]
    out = os.path.join(logdir, 'estimate_quality.json')
    with open(out) as f:
        stored = json.load(f)
    assert stored == json.loads(json.dumps(result))
    assert [(c['step'], c['epoch'], c['checkpoint']) for c in stored['checkpoints']] == \
        [(5, 1, 'model-5'), (10, 2, 'model-10')]
    assert stored['settings'] == dict(images=8, seed=0, group_size=2, split='train')
    assert logs[:2] == ['measured model-5 (step 5)', 'measured model-10 (step 10)']
    for c in stored['checkpoints']:
        assert [l['layer'] for l in c['layers']] == LAYERS
        assert c['average']['prior']['layers'] == 6 and c['average']['posterior']['layers'] == 7
        assert 0.0 <= c['average']['guard_trip_rate'] <= 1.0 and 0.0 < c['average']['gain'] < 1.0
        for key in ('mean_err_mean', 'var_err_median'):
            layers = [l['posterior'][key] for l in c['layers']]
            assert c['average']['posterior'][key] == pytest.approx(np.mean(layers))
    assert stored['checkpoints'][0]['average'] != stored['checkpoints'][1]['average']
    text = probe.format_summary(result)
    assert 'res3.0/bn2' in text and 'posterior' in text
    # again: nothing to do, the file is kept; other settings are refused before any work
    mtime = os.path.getmtime(out)
    probe.measure_run(logdir, _images(8), 10, MEAN, STD, log=logs.append)
    assert os.path.getmtime(out) == mtime and 'already measured' in logs[-1]
    with pytest.raises(probe.ProbeError, match='--redo'):
        probe.measure_run(logdir, _images(8), 10, MEAN, STD, seed=1)
    assert json.load(open(out)) == stored


@pytest.mark.parametrize('source', ['moving', 'calibrated'])
def test_measure_run_with_other_prior_sources(source, tmp_path):
    """The KN study's prior_source rows are measured as any KN run: the prior reported is the one
    Eq. 7 weighs (the moving averages, or the calibrated prediction), in the layers that have one."""
    logdir = str(tmp_path / source)
    make_run(logdir, steps=(5,), norm='bkn', norm_options={'prior_source': source})
    result = probe.measure_run(logdir, _images(8), 10, MEAN, STD, log=lambda *a: None)
    (c,) = result['checkpoints']
    assert [l['layer'] for l in c['layers']] == LAYERS and c['average']['prior']['layers'] == 6
    assert all(np.isfinite(c['average'][k]['mean_err_mean']) for k in ('prior', 'posterior', 'moving'))


def test_bn_run_reports_group_and_moving_only(measured):
    result = measured[0][1]
    for c in result['checkpoints']:
        for layer in c['layers']:
            assert layer['prior'] is None and layer['posterior'] is None and layer['guard_trip_rate'] is None
            assert layer['group'] is not None and layer['moving'] is not None
    assert result['noise_param'] is None and result['run']['norm'] == 'bn'


def test_a_run_recorded_before_the_kn_recipes_is_rebuilt_with_the_defaults_of_its_time(tmp_path):
    """options.json without 'kn_recipe' holds only the KN options given: the layers then learned R
    and handed on the input estimate.  A run recorded since holds every KN option."""
    o = _options(tmp_path, norm_options={'guard_ratio': 50.0})
    with open(tmp_path / 'options.json', 'w') as f:
        json.dump({k: v for k, v in o.items() if k != 'kn_recipe'}, f)
    assert probe.load_run(str(tmp_path))[1].options == dict(gain=0.1, guard_ratio=50.0, process_noise=True,
                                                            propagate='input')
    recorded = dict(process_noise=False, pooled_variance=True, guard_ratio=100.0, propagate='output')
    with open(tmp_path / 'options.json', 'w') as f:
        json.dump(dict(o, kn_recipe='library', norm_options=recorded), f)
    assert probe.load_run(str(tmp_path))[1].options == dict(recorded, gain=0.1)


@pytest.mark.parametrize('case, message', [
    ('no_dir', 'not a directory'),
    ('no_options', 'no options.json'),
    ('bad_json', 'not valid JSON'),
    ('auto_gain', 'gain it trained with'),
    ('no_checkpoint', 'no checkpoint'),
    ('odd_images', 'multiple of'),
    ('other_model', 'does not fit'),
    ('bad_option', 'does not describe a norm'),
])
def test_bad_input_fails_with_one_line_before_any_work(kn_run, tmp_path, case, message):
    logdir = str(tmp_path / 'run')
    images = _images(8)
    if case != 'no_dir':
        os.makedirs(logdir)
    if case == 'bad_json':
        open(os.path.join(logdir, 'options.json'), 'w').write('{not json')
    if case in ('auto_gain', 'no_checkpoint', 'odd_images', 'other_model'):
        o = _options(logdir, gain='auto' if case == 'auto_gain' else 0.1, depth=2 if case == 'other_model' else 1)
        json.dump(o, open(os.path.join(logdir, 'options.json'), 'w'))
    if case == 'bad_option':
        json.dump(_options(logdir, norm_options={'guard_ratio': 'high'}), open(os.path.join(logdir, 'options.json'), 'w'))
    if case in ('odd_images', 'other_model'):
        src = kn_run[0]
        for name in os.listdir(src):
            if name.startswith('model-10'):
                with open(os.path.join(src, name), 'rb') as a, open(os.path.join(logdir, name), 'wb') as b:
                    b.write(a.read())
    if case == 'odd_images':
        images = _images(7)
    with pytest.raises(probe.ProbeError, match=message) as err:
        probe.measure_run(logdir, images, 10, MEAN, STD, log=lambda *a: None)
    assert '\n' not in str(err.value)
    assert not os.path.exists(os.path.join(logdir, 'estimate_quality.json'))


# ----------------------------------------------------------------------------------------------
# Fig. 5 and the plots

def test_variance_gap_and_fig5_plot(kn_run, bn_run, tmp_path):
    fig5 = _load_script('fig5_variance_gap')
    images = _images(10)                                     # 5 test batches of 2
    gaps = []
    for (logdir, _, _), used in ((bn_run, 'group'), (kn_run, 'posterior')):
        options, spec, rec = probe.probe_checkpoint(logdir, images, 10, MEAN, STD)
        assert rec['name'] == 'res3.0/bn2' and rec['checkpoint'].endswith('model-10')   # last layer, last step
        gap = probe.variance_gap(rec)
        assert gap['normalises_with'] == used and gap['gap'].shape == (64, 5)
        want = np.abs(rec[used + '_var'].astype(np.float64) - rec['moving_var']).T
        np.testing.assert_allclose(gap['gap'], want, rtol=1e-6)
        np.testing.assert_allclose(gap['raw_gap'], np.abs(rec['group_var'].astype(np.float64) - rec['moving_var']).T,
                                   rtol=1e-6)
        assert gap['mean_gap'] == pytest.approx(want.mean())
        assert gap['relative_gap'] == pytest.approx(want.mean() / rec['moving_var'].mean())
        gaps.append((fig5.run_label(logdir, options), gap))
    out = str(tmp_path / 'fig5.png')
    lines = fig5.plot_variance_gaps(gaps, out)
    assert os.path.getsize(out) > 10000
    assert len(lines) == 2 and 'bkn@2' in lines[1] and 'raw group variance' in lines[1]
    assert 'raw group' not in lines[0] and '%.4g' % gaps[0][1]['mean_gap'] in lines[0]
    text = fig5.markdown(lines, out, 5, 'python scripts/fig5_variance_gap.py ARGS')
    assert '![Fig. 5](fig5.png)' in text and '* ' + lines[1] in text and '5 batches' in text
    assert '```\npython scripts/fig5_variance_gap.py ARGS\n```' in text


def test_fig5_bad_input_fails_before_any_work(kn_run, tmp_path):
    fig5 = _load_script('fig5_variance_gap')
    for argv in (['--logdir', str(tmp_path), '--out', str(tmp_path / 'a.png')],            # no options.json
                 ['--logdir', kn_run[0], '--out', str(tmp_path / 'no' / 'a.png')],
                 ['--logdir', kn_run[0], '--out', str(tmp_path / 'a.png'), '--batches', '0']):
        with pytest.raises(SystemExit) as err:
            fig5.main(argv)
        assert err.value.code == 2
    assert os.listdir(str(tmp_path)) == []
    with pytest.raises(probe.ProbeError, match='no normalisation layer'):
        probe.probe_checkpoint(kn_run[0], _images(2), 10, MEAN, STD, layer='res9/bn1')


def test_plot_estimates_writes_one_figure_for_several_runs(kn_run, bn_run, measured, tmp_path):
    plot = _load_script('plot_estimates')
    out = str(tmp_path / 'est.png')
    md = str(tmp_path / 'est.md')
    plot.main([kn_run[0], bn_run[0], '--out', out, '--markdown', md])
    assert os.path.getsize(out) > 10000
    text = open(md).read()
    assert '![estimates](est.png)' in text and text.count('\n## ') == 2
    assert text.count('mean err: group') == 4          # per run: the checkpoints' and the layers' table
    assert text.count('Budget: not recorded here') == 2                      # log dirs, not records
    assert 'python scripts/plot_estimates.py %s %s --out %s --markdown %s' % (kn_run[0], bn_run[0], out, md) in text
    with pytest.raises(SystemExit):
        plot.main([str(tmp_path), '--out', str(tmp_path / 'x.png')])       # no estimate_quality.json
    assert not os.path.exists(str(tmp_path / 'x.png'))


def test_plot_estimates_states_the_budget_of_a_run_record(kn_run, measured, tmp_path):
    """A run record (results/runs/...) carries its config and machine: the Markdown states both."""
    plot = _load_script('plot_estimates')
    record = tmp_path / 'record'
    record.mkdir()
    with open(os.path.join(kn_run[0], 'estimate_quality.json')) as f:
        (record / 'estimate_quality.json').write_text(f.read())
    (record / 'config.toml').write_text('model = "resnet"\ndepth = 3\nnorm = "bkn"\nbatch = 2\nepochs = 10\n')
    (record / 'options.json').write_text('{}')
    (record / 'run.json').write_text(json.dumps({'machine': {'cores': 2, 'gpu': 'none'}}))
    md = str(tmp_path / 'est.md')
    plot.main([str(record), '--out', str(tmp_path / 'est.png'), '--markdown', md])
    assert ('Budget: ResNet-20, 10 epochs (schedule short), 128 samples per step, CIFAR10; machine: 2 CPU '
            'cores, no GPU') in open(md).read()


def test_plot_estimates_draws_each_layer_of_a_learned_gain_only():
    plot = _load_script('plot_estimates')

    def checkpoints(gains_per_checkpoint):
        return [{'layers': [{'layer': 'bn0', 'gain': None}] +
                 [{'layer': 'bn%d' % (i + 1), 'gain': g} for i, g in enumerate(gains)]}
                for gains in gains_per_checkpoint]
    learned = checkpoints([[0.1, 0.1, 0.1], [0.12, 0.09, 0.05], [0.2, 0.08, 0.02]])
    assert plot.learned_gains(learned) == [[0.1, 0.12, 0.2], [0.1, 0.09, 0.08], [0.1, 0.05, 0.02]]
    assert plot.learned_gains(checkpoints([[0.1, 0.1], [0.1, 0.1]])) == []      # a fixed q: the mean says it
    assert plot.learned_gains([{'layers': [{'layer': 'bn0', 'gain': None}]}]) == []     # BN


def test_estimate_quality_cli_rejects_bad_input_before_loading_data(kn_run, tmp_path, capsys):
    script = _load_script('estimate_quality')
    for argv, message in (([kn_run[0], '--images', '7'], 'multiple of the run'),
                          ([kn_run[0], '--images', '0'], 'must be positive'),
                          ([str(tmp_path)], 'no options.json'),
                          ([kn_run[0], '--data', str(tmp_path / 'nowhere')], 'does not exist')):
        with pytest.raises(SystemExit) as err:
            script.main(argv)
        assert err.value.code == 2
        assert message in capsys.readouterr().err
    assert os.listdir(str(tmp_path)) == []


def test_errors_leave_out_unusable_groups_and_count_them():
    ref_m, ref_v = np.array([0.0, 1.0]), np.array([1.0, 4.0])
    m = np.array([[1.0, 1.0], [np.nan, 0.0], [0.0, 3.0]])
    v = np.array([[np.e, 4.0], [1.0, 1.0], [1.0, -1.0]])
    got = probe.estimate_errors(m, v, ref_m, ref_v, epsilon=0.0)
    assert got['unusable'] == pytest.approx(2 / 3)
    assert got['mean_err_mean'] == pytest.approx(0.5) and got['var_err_mean'] == pytest.approx(0.5)
    assert got['mean_err_median'] == pytest.approx(0.5) and got['var_err_median'] == pytest.approx(0.5)
    assert np.isnan(probe.estimate_errors(m[1:2], v[1:2], ref_m, ref_v)['mean_err_mean'])
    moving = probe.estimate_errors(ref_m, ref_v * np.e ** 2, ref_m, ref_v, epsilon=0.0)   # [C] estimates
    assert moving['mean_err_mean'] == 0.0 and moving['var_err_median'] == pytest.approx(2.0)
