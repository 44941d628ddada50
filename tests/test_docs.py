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
