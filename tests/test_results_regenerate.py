"""results/ is what the records say: regenerating every report from the committed records leaves
results/ and the READMEs' generated blocks byte-identical, and the numbers the READMEs quote
by hand are checked against the records here."""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: every table results/ holds a report of (the ImageNet check runs its own trainer: one command
#: still reports both, since a report needs no --data)
TABLES = ['kn_study', 'fig4', 'table7', 'table8', 'largebatch', 'imagenet_check', 'budget', 'microbatch_lr',
          'microbatch']
DOCS = ['README.md', os.path.join('results', 'README.md')]


def _png_text(path):
    from PIL import Image
    with Image.open(path) as im:
        return dict(im.text)


@pytest.fixture(scope='module')
def regenerated(tmp_path_factory):
    """A copy of configs/, results/, scripts/ and the READMEs where every report was rewritten.
    The library is the installed one (the copy has no kalman_norm/), so only the reports move."""
    root = str(tmp_path_factory.mktemp('regen') / 'repo')
    for d in ('configs', 'results', 'scripts'):
        shutil.copytree(os.path.join(REPO, d), os.path.join(root, d),
                        ignore=shutil.ignore_patterns('__pycache__'))
    for doc in DOCS:
        shutil.copy(os.path.join(REPO, doc), os.path.join(root, doc))
    env = dict(os.environ, OMP_NUM_THREADS='1', TF_CPP_MIN_LOG_LEVEL='2')
    out = subprocess.run([sys.executable, os.path.join(root, 'scripts', 'reproduce.py')] + TABLES
                         + ['--report-only'], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return root


def test_markdown_and_readme_blocks_regenerate_byte_identical(regenerated):
    names = [os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, 'results', '*.md'))] + DOCS
    assert len(names) > len(TABLES)
    differ = []
    for name in names:
        with open(os.path.join(REPO, name), 'rb') as f, open(os.path.join(regenerated, name), 'rb') as g:
            if f.read() != g.read():
                differ.append(name)
    assert not differ, ('%s differ from what the records give: run `python scripts/reproduce.py %s '
                        '--report-only` and commit' % (', '.join(differ), ' '.join(TABLES)))


def _has_records(table):
    """Whether any row of ``table`` has a record under results/runs (any profile)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    with open(os.path.join(REPO, 'configs', 'tables', table + '.toml'), 'rb') as f:
        rows = [r['row'] for r in tomllib.load(f)['rows']]
    return any(glob.glob(os.path.join(REPO, 'results', 'runs', '*', row, 'seed*', 'run.json')) for row in rows)


def test_figures_regenerate_from_the_same_numbers(regenerated):
    """Each PNG names the numbers it draws (sha256 in its Description): that must match.  The
    pixels are compared byte for byte when this matplotlib is the one that drew the committed file
    (its Software tag): another version may rasterise text differently from the same numbers."""
    pngs = sorted(glob.glob(os.path.join(REPO, 'results', '*.png')))
    # the figures reproduce.py draws (plot_curves names its numbers); the others come from other scripts
    reported = [p for p in pngs if 'Description' in _png_text(os.path.join(regenerated, 'results',
                                                                          os.path.basename(p)))]
    # a table with no record yet draws no figure (its report says "not run yet"); once it has one,
    # its figure is required
    recorded = [t for t in TABLES if _has_records(t)]
    assert {os.path.basename(p) for p in reported} >= {t + '.png' for t in recorded}
    for t in set(TABLES) - set(recorded):
        assert not os.path.exists(os.path.join(regenerated, 'results', t + '.png')), t
    for p in reported:
        new = os.path.join(regenerated, 'results', os.path.basename(p))
        old_text, new_text = _png_text(p), _png_text(new)
        assert old_text.get('Description') == new_text['Description'], os.path.basename(p)
        if old_text.get('Software') == new_text.get('Software'):
            with open(p, 'rb') as f, open(new, 'rb') as g:
                assert f.read() == g.read(), os.path.basename(p)


def test_readmes_carry_generated_claim_blocks():
    for doc in DOCS:
        with open(os.path.join(REPO, doc)) as f:
            text = f.read()
        block = text[text.index('<!-- reproduce: claims '):text.index('<!-- /reproduce -->')]
        assert 'verdict (Holm-adjusted p < 0.05)' in block and '95% CI' in block, doc
    with open(os.path.join(REPO, 'results', 'README.md')) as f:
        text = f.read()
    # the status of the paper's claims is the tables' verdicts only, never a hand-written word
    section = text[text.index("## The paper's CIFAR claims"):text.index('## Figures')]
    for word in ('**partial**', 'beyond the spread', 'within the spread', 'ordering holds'):
        assert word not in section


def _minutes(row, seed):
    with open(os.path.join(REPO, 'results', 'runs', 'cpu', row, 'seed%d' % seed, 'run.json')) as f:
        return json.load(f)['wall_minutes']


def test_quick_start_time_is_the_records():
    # README's quick start: "Training took 11–12 minutes ... (bkn_q03/*, bn_b128/seed2, seed3)"
    with open(os.path.join(REPO, 'README.md')) as f:
        text = f.read()
    assert 'Training took 11–12 minutes on this 2-core CPU' in text
    minutes = [_minutes('bkn_q03', 1), _minutes('bkn_q03', 2), _minutes('bn_b128', 2), _minutes('bn_b128', 3)]
    assert 11 <= min(minutes) and max(minutes) <= 12


def test_kn_study_prose_matches_its_records():
    """The sentences of the KN study's discussion that quote a record: bkn_q0 seed 1 collapsed in
    epoch 2 before the learning rate peaked and ended at 21.6%; four runs of output-hand-on variants
    collapsed (bkn_q0 s1, bkn_calibrated s2, bkn_calibrated_q03 s1 and s2), none of bkn_output."""
    sys.path.insert(0, os.path.join(REPO, 'scripts'))
    import study
    with open(os.path.join(REPO, 'configs', 'tables', 'kn_study.toml')) as f:
        text = ' '.join(f.read().split())
    assert "its record's `lr` for epoch 2 is 0.06; 0.1 is reached in epoch 3" in text
    assert 'and ended at 21.6%' in text
    stats = study.load_record(study.record_dir(REPO, 'cpu', 'bkn_q0', 1))['stats']
    lr = {s['epoch_num']: s['lr'] for s in stats}
    assert round(lr[2], 2) == 0.06 and round(lr[3], 2) == 0.1 and max(lr.values()) == lr[3]
    assert stats[1]['train_error'] > 0.85 > stats[0]['train_error']
    assert round(100 * (1 - stats[-1]['val-error-moving']), 1) == 21.6

    def collapsed(row, seed):
        # a collapse: the training error jumps by over 20 points from one epoch to the next
        errors = [s['train_error'] for s in study.load_record(study.record_dir(REPO, 'cpu', row, seed))['stats']]
        return any(b - a > 0.2 for a, b in zip(errors, errors[1:]))
    assert [(r, s) for r in ('bkn_q0', 'bkn_calibrated', 'bkn_calibrated_q03') for s in (1, 2) if collapsed(r, s)] == [
        ('bkn_q0', 1), ('bkn_calibrated', 2), ('bkn_calibrated_q03', 1), ('bkn_calibrated_q03', 2)]
    outputs = sorted(glob.glob(os.path.join(REPO, 'results', 'runs', 'cpu', 'bkn_output', 'seed*')))
    assert outputs and not any(collapsed('bkn_output', int(d.rsplit('seed', 1)[1])) for d in outputs)
