"""The package's import graph has no knots: flow.py and layers/ import everything at module
level (no import inside a function, which hid a flow <-> layers cycle), and the baseline layers
do not depend on the KN layers."""
import ast
import os

import kalman_norm

PACKAGE = os.path.dirname(kalman_norm.__file__)


def _module_files():
    files = [os.path.join(PACKAGE, 'flow.py'), os.path.join(PACKAGE, 'data_format.py')]
    layers = os.path.join(PACKAGE, 'layers')
    files += sorted(os.path.join(layers, f) for f in os.listdir(layers) if f.endswith('.py'))
    return files


def _imports_inside_functions(path):
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = []
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    found.append('%s:%d' % (os.path.relpath(path, PACKAGE), node.lineno))
    return found


def _imported_modules(path):
    """Relative module names imported at any level of ``path`` (e.g. '.kalman', '..flow')."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    return {'.' * node.level + (node.module or '') for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level}


def test_no_import_inside_a_function_in_flow_and_layers():
    assert len(_module_files()) >= 6
    found = [hit for path in _module_files() for hit in _imports_inside_functions(path)]
    assert found == [], 'imports inside function bodies: %s' % found


def test_baselines_do_not_import_the_kalman_layers():
    imported = _imported_modules(os.path.join(PACKAGE, 'layers', 'baselines.py'))
    assert not {'.kalman', '._kalman_parts', '.'} & imported, imported


def test_the_kalman_parts_sit_below_the_kalman_layers():
    # the gain, process noise and option checks are built by the layers, never the other way
    assert '.kalman' not in _imported_modules(os.path.join(PACKAGE, 'layers', '_kalman_parts.py'))
    assert '._kalman_parts' in _imported_modules(os.path.join(PACKAGE, 'layers', 'kalman.py'))


def test_layers_and_data_format_do_not_import_flow_or_spec():
    """flow.py and spec.py sit above the layers; the data-format default sits below both."""
    for path in _module_files()[1:]:
        imported = _imported_modules(path)
        assert not {'..flow', '..spec', '.flow', '.spec'} & imported, (path, imported)
    assert _imported_modules(os.path.join(PACKAGE, 'data_format.py')) == set()
