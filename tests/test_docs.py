"""The READMEs' links and figures lead to files that are in the repository (a reader of a fresh
clone follows them; a renamed report or a figure not yet drawn would be a dead link)."""
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')


def relative_links(path):
    text = open(path).read()
    text = re.sub(r'```.*?```', '', text, flags=re.S)          # commands, not links
    targets = [t.split('#')[0] for t in LINK.findall(text)]
    return [t for t in targets if t and not re.match(r'[a-z]+:', t)]


@pytest.mark.parametrize('doc', ['README.md', 'results/README.md'])
def test_readme_links_and_figures_exist(doc):
    path = os.path.join(REPO, doc)
    links = relative_links(path)
    assert links, 'no links found in %s: the pattern is wrong' % doc
    missing = [t for t in links if not os.path.exists(os.path.join(os.path.dirname(path), t))]
    assert not missing, '%s links to files that do not exist: %s' % (doc, missing)


def other_measurements(path, header='| entry | what | budget | ours | paper |'):
    """[(linked files, 'ours' cell)] of results/README's table of measurements that are not runs
    of the study runner (its header: entry | what | budget | ours | paper), or of another table of
    it whose first column links the files and which has an 'ours' column."""
    text = open(path).read()
    start = text.index(header)
    ours = [c.strip() for c in header.strip().strip('|').split(' | ')].index('ours')
    rows = []
    for line in text[start:].split('\n\n')[0].splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip('|').split(' | ')]
        rows.append(([t for t in LINK.findall(cells[0])], cells[ours]))
    return rows


def test_every_number_in_the_other_measurements_is_in_its_files():
    """Those numbers are typed into the README, so each must appear in the script output the row
    links to: a re-measurement that changes a file then fails here until the sentence follows."""
    path = os.path.join(REPO, 'results', 'README.md')
    rows = other_measurements(path)
    assert len(rows) >= 7, 'the table was not found whole: %d rows' % len(rows)
    for links, ours in rows:
        assert links, 'a row without a linked file: %s' % ours[:60]
        source = ''.join(open(os.path.join(os.path.dirname(path), t)).read() for t in links)
        numbers = re.findall(r'\d[\d,]*(?:\.\d+)?', ours)
        missing = [n for n in numbers if n not in source and n.replace(',', '') not in source]
        assert not missing, 'results/README cites %s for %s, but they do not say %s' % (links, ours[:60], missing)


def test_every_number_of_the_earlier_runs_is_in_its_files():
    """The same for the table of earlier runs (before run records): its 'ours' cells quote the
    reports of those runs, and so does its budget's wall time."""
    path = os.path.join(REPO, 'results', 'README.md')
    rows = other_measurements(path, '| entry | budget | ours | paper |')
    assert len(rows) == 2, 'the table was not found whole: %d rows' % len(rows)
    text = open(path).read()
    for links, ours in rows:
        source = ''.join(open(os.path.join(os.path.dirname(path), t)).read() for t in links)
        numbers = re.findall(r'\d[\d,]*(?:\.\d+)?', ours)
        assert numbers and all(n in source for n in numbers), (links, ours)
    line = [l for l in text.splitlines() if l.startswith('| [cifar10_resnet20_bn128_short.md]')][0]
    minutes = re.search(r'(\d+) min', line).group(1)
    wall = re.search(r'wall time (\d+(?:\.\d+)?) min', open(os.path.join(REPO, 'results', 'cifar10_resnet20_bn128_short.md')).read())
    assert wall and round(float(wall.group(1))) == int(minutes)
