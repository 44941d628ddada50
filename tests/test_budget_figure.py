"""The budget figure: final accuracy per row's records against its epochs, a line per series."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'scripts'))
import plot_curves  # noqa: E402


def _record(root, row, seed, epochs, error):
    d = os.path.join(root, 'results', 'runs', 'cpu', row, 'seed%d' % seed)
    os.makedirs(d)
    stats = [{'epoch_num': e, 'val-error-moving': error + 0.01 * (epochs - e)} for e in range(1, epochs + 1)]
    for name, content in (('stats.json', stats), ('run.json', {}), ('options.json', {}),
                          ('status.json', {'status': 'finished'})):
        with open(os.path.join(d, name), 'w') as f:
            json.dump(content, f)


def test_final_accuracies_and_the_figure(tmp_path):
    root = str(tmp_path)
    _record(root, 'a10', 1, 10, 0.25)
    _record(root, 'a10', 2, 10, 0.23)
    _record(root, 'a30', 1, 30, 0.20)
    assert plot_curves.final_accuracies(root, 'cpu', 'a10') == (10, [75.0, 77.0])
    assert plot_curves.final_accuracies(root, 'cpu', 'a10', seeds=[2]) == (10, [77.0])
    assert plot_curves.final_accuracies(root, 'cpu', 'missing') == (None, [])
    out = str(tmp_path / 'f.png')
    assert plot_curves.plot_budget(root, 'cpu', {'A': ['a10', 'a30', 'missing']}, out, title='t') == out
    from PIL import Image
    with Image.open(out) as im:
        first = im.text['Description']
    plot_curves.plot_budget(root, 'cpu', {'A': ['a10', 'a30']}, out, title='t')
    with Image.open(out) as im:
        assert im.text['Description'] == first            # the numbers drawn name the figure
    assert plot_curves.plot_budget(root, 'cpu', {'B': ['missing']}, str(tmp_path / 'g.png')) is None
    assert not os.path.exists(str(tmp_path / 'g.png'))
    with pytest.raises(Exception):
        plot_curves.plot_budget(root, 'cpu', {'A': ['a10']}, str(tmp_path / 'nodir' / 'h.png'))
