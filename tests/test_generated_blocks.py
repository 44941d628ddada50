"""The READMEs' generated blocks (scripts/study/render.py): a ``ranking`` block orders a table's rows
by their mean accuracy with the t-interval of each mean, rows with fewer than 2 seeds unranked; a
block of an unknown kind fails with one line."""
import numpy as np
import pytest
from scipy import stats as scipy_stats

from test_reproduce import TABLE, make_root, study, write_record


def test_mean_ci_is_the_t_interval():
    values = [77.65, 71.76, 74.1, 79.2]
    ci = study.mean_ci(values)
    half = scipy_stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / np.sqrt(4)
    assert ci['n'] == 4 and ci['mean'] == pytest.approx(np.mean(values))
    assert (ci['low'], ci['high']) == (pytest.approx(np.mean(values) - half), pytest.approx(np.mean(values) + half))
    assert study.mean_ci([80.0]) == {'mean': 80.0, 'low': None, 'high': None, 'n': 1}
    assert study.mean_ci([80.0, 80.0]) == {'mean': 80.0, 'low': 80.0, 'high': 80.0, 'n': 2}


def _cells(text, label):
    line = next(x for x in text.splitlines() if '| %s ' % label in x)
    return [c.strip() for c in line.strip().strip('|').split('|')]


def test_ranking_block_orders_rows_by_mean_and_leaves_one_seed_rows_unranked(tmp_path):
    root = make_root(tmp_path, TABLE.replace('cpu = 2', 'cpu = 3'))
    # BN: 2 seeds at 80 and 82 (moving); GN: 3 seeds at 84, 85, 86 -> GN first
    for seed, e in ((1, 0.20), (2, 0.18)):
        write_record(root, 'tiny_bn', seed, [0.5, e], batch_errors=[0.5, 0.3])
    for seed, e in ((1, 0.16), (2, 0.15), (3, 0.14)):
        write_record(root, 'tiny_gn', seed, [0.5, e])
    doc = tmp_path / 'doc.md'
    doc.write_text('before\n<!-- reproduce: ranking tiny -->\nstale\n<!-- /reproduce -->\nafter\n')
    assert study.rewrite_blocks(root, str(doc))
    text = doc.read_text()
    assert text.startswith('before\n<!-- reproduce: ranking tiny -->\n| rank') and text.endswith('<!-- /reproduce -->\nafter\n')
    assert 'stale' not in text and 'BN (bs=2), CIFAR-100' not in text          # a row not run here is left out
    gn, bn = _cells(text, 'GN (bs=2)'), _cells(text, 'BN (bs=2)')
    assert gn[0] == '1' and bn[0] == '2'
    low, high = scipy_stats.t.interval(0.95, 2, loc=85.0, scale=1.0 / np.sqrt(3))
    assert gn[2:5] == ['85.00', '[%.2f, %.2f]' % (low, high), '3']
    assert bn[2] == '81.00' and bn[4] == '2'
    assert not study.rewrite_blocks(root, str(doc))                          # a second pass changes nothing
    # with one seed, a row is listed after the ranked ones, without a rank or interval
    write_record(root, 'tiny_bn', 3, [0.5, 0.01], batch_errors=[0.5, 0.3])
    for seed in (2, 3):
        import shutil
        shutil.rmtree(study.record_dir(root, 'cpu', 'tiny_gn', seed))
    study.rewrite_blocks(root, str(doc))
    text = doc.read_text()
    assert _cells(text, 'BN (bs=2)')[0] == '1' and _cells(text, 'GN (bs=2)')[:5] == ['—', 'GN (bs=2)', '84.00', '—', '1']


@pytest.mark.parametrize('head', ['ranking', 'ranking tiny tiny', 'tables tiny'])
def test_a_block_of_another_form_fails_with_one_line(tmp_path, head):
    root = make_root(tmp_path)
    doc = tmp_path / 'doc.md'
    doc.write_text('<!-- reproduce: %s -->\n<!-- /reproduce -->\n' % head)
    with pytest.raises(study.StudyError, match='must be "claims SELECTOR ..." or "ranking TABLE"'):
        study.rewrite_blocks(root, str(doc))
