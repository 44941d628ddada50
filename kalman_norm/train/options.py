"""Typed trainer options: defaults < presets < TOML config < command line, checked before any heavy work.

Each trainer declares its options once as a list of :class:`Opt`; from that list come the
command line (argparse), the keys a TOML config may hold, the type and range checks, and which
options define a run's identity (see :mod:`kalman_norm.train.rundir`).  Values from a config file
arrive with TOML's types and values from the command line with argparse's; both go through the
same checks, so ``--norm-option process_noise=False`` and ``process_noise = false`` mean the same
boolean on every Python the package supports.

A *preset* is a set of values that one option's choice gives other options (the trainer's
``--kn-recipe paper`` sets the gain, the prior and KN's norm options): it replaces their defaults
and yields to anything the config file or the command line gives (see :func:`resolve`).
"""
import argparse
import json
import math
import os

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser, as a package (a dependency on 3.10)
    import tomli as tomllib

__all__ = ['OptionError', 'Opt', 'build_parser', 'load_config', 'read_config', 'dump_toml', 'parse_scalar',
           'resolve', 'flag']


class OptionError(ValueError):
    """A bad command-line or config option; the message says what to pass."""


def flag(key):
    return '--' + key.replace('_', '-')


class Opt(object):
    """One option.

    Args:
        key: the option's name (``snake_case``; the flag is ``--kebab-case``).
        default: its value when neither config nor command line sets it.
        kind: 'int', 'float', 'bool', 'str', 'path', 'choice', 'table' (a TOML table / repeated
            KEY=VALUE flag), 'list' (of strings: a TOML array / repeated flag) or 'any' (checked by
            the trainer).
        help: one line for ``--help``.
        choices: for 'choice'.
        minimum, maximum: inclusive bounds for numbers; ``above`` an exclusive lower bound.
        nullable: None is allowed (e.g. "take the schedule's value").
        identity: whether the option changes what a run computes.  A log directory belongs to
            one identity; options that only say where things are (data path, logdir, worker
            processes) are not part of it.
        short: an extra short flag, e.g. '-n'.
    """

    def __init__(self, key, default, kind, help, choices=None, minimum=None, maximum=None, above=None,
                 nullable=False, identity=True, short=None):
        self.key, self.default, self.kind, self.help = key, default, kind, help
        self.choices, self.minimum, self.maximum, self.above = choices, minimum, maximum, above
        self.nullable, self.identity, self.short = nullable, identity, short

    def check(self, value):
        """The value converted to the option's type; OptionError naming the flag if it is wrong."""
        name = flag(self.key)
        if value is None:
            if self.nullable:
                return None
            raise OptionError('%s needs a value' % name)
        if self.kind == 'int':
            if isinstance(value, bool) or not isinstance(value, int):
                raise OptionError('%s must be an integer, got %r' % (name, value))
        elif self.kind == 'float':
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise OptionError('%s must be a number, got %r' % (name, value))
            value = float(value)
            if not math.isfinite(value):
                raise OptionError('%s must be a finite number, got %r' % (name, value))
        elif self.kind == 'bool':
            if not isinstance(value, bool):
                raise OptionError('%s must be true or false, got %r' % (name, value))
        elif self.kind in ('str', 'path'):
            if not isinstance(value, str) or not value:
                raise OptionError('%s must be %s, got %r' % (name, 'a path' if self.kind == 'path' else 'a string', value))
        elif self.kind == 'choice':
            if value not in self.choices:
                raise OptionError('%s must be one of %s, got %r' % (name, ', '.join(map(str, self.choices)), value))
        elif self.kind == 'list':
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise OptionError('%s must be a list of strings, got %r' % (name, value))
            return list(value)
        elif self.kind == 'table':
            if not isinstance(value, dict):
                raise OptionError('%s must be a table ([%s] section), got %r' % (self.key, self.key, value))
            return dict(value)
        if self.kind in ('int', 'float'):
            if self.minimum is not None and value < self.minimum:
                raise OptionError('%s must be >= %s, got %r' % (name, self.minimum, value))
            if self.maximum is not None and value > self.maximum:
                raise OptionError('%s must be <= %s, got %r' % (name, self.maximum, value))
            if self.above is not None and not value > self.above:
                raise OptionError('%s must be > %s, got %r' % (name, self.above, value))
        return value


def parse_scalar(text):
    """A value typed on the command line: a TOML scalar ('100', '0.5', 'true', '"input"'), with
    Python's spellings of booleans and None accepted too ('False', 'None'); else the bare string."""
    lowered = text.strip().lower()
    if lowered in ('true', 'false'):
        return lowered == 'true'
    if lowered in ('none', 'null'):
        return None
    try:
        return tomllib.loads('v = %s' % text)['v']
    except Exception:
        return text


def _bool_flag(text):
    value = parse_scalar(text)
    if not isinstance(value, bool):
        raise argparse.ArgumentTypeError('expected true or false, got %r' % text)
    return value


def build_parser(prog, description, opts):
    """argparse for ``opts``; unset flags stay absent so that config values are not overridden."""
    p = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', help='TOML file with any of these options (the command line wins)')
    for o in opts:
        names = ([o.short] if o.short else []) + [flag(o.key)]
        default = '' if o.default in (None, {}, []) else ' (default %s)' % (o.default,)
        if o.kind == 'table':
            p.add_argument(flag(o.key).rstrip('s'), dest=o.key, action='append', metavar='KEY=VALUE',
                           help=o.help + '; repeatable')
        elif o.kind == 'list':
            p.add_argument(*names, dest=o.key, action='append', help=o.help + '; repeatable')
        elif o.kind == 'int':
            p.add_argument(*names, dest=o.key, type=int, help=o.help + default)
        elif o.kind == 'float':
            p.add_argument(*names, dest=o.key, type=float, help=o.help + default)
        elif o.kind == 'bool':
            # a bare flag means true (--fake-data), and an explicit value is accepted too (--fake-data false)
            p.add_argument(*names, dest=o.key, type=_bool_flag, nargs='?', const=True, metavar='true|false',
                           help=o.help + default)
        elif o.kind == 'choice' and all(isinstance(c, str) for c in o.choices):
            p.add_argument(*names, dest=o.key, choices=o.choices, help=o.help + default)
        else:
            p.add_argument(*names, dest=o.key, help=o.help + default)
    return p


def _merged(under, over):
    """``over`` on top of ``under``: tables merge key by key (recursively), anything else replaces."""
    out = dict(under)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config(path, _chain=()):
    """The settings of a TOML config.  A config may name ``base = "<path relative to it>"`` and state
    only what differs: the base's settings (its own base's first) under this file's, tables merged
    key by key, scalars and arrays replaced.  A missing base, a base cycle or bad TOML is one
    OptionError line."""
    if not os.path.isfile(path):
        if _chain:
            raise OptionError('%s: base %s: no such file' % (_chain[-1], path))
        raise OptionError('--config %s: no such file' % path)
    real = os.path.realpath(path)
    if real in map(os.path.realpath, _chain):
        raise OptionError('%s: base cycle %s' % (_chain[0], ' -> '.join(list(_chain) + [path])))
    with open(path, 'rb') as f:
        try:
            conf = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise OptionError('--config %s is not valid TOML: %s' % (path, e))
    if 'base' not in conf:
        return conf
    base = conf.pop('base')
    if not isinstance(base, str) or not base:
        raise OptionError('%s: base must be a path to another config, got %r' % (path, base))
    base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
    return _merged(read_config(base_path, tuple(_chain) + (path,)), conf)


def _toml_key(k):
    # a bare key is letters, digits, '_' and '-'; any other is a quoted (basic) string
    return k if k and all(c.isascii() and (c.isalnum() or c in '_-') for c in k) else json.dumps(k)


def _toml_value(v):
    if isinstance(v, bool):
        return 'true' if v else 'false'
    if isinstance(v, (int, float)):
        return repr(v)          # Python's repr of a float (inf, nan, 1e-05) is TOML's spelling too
    if isinstance(v, str):
        return json.dumps(v)    # JSON's string escapes are a subset of TOML's basic strings'
    if isinstance(v, list):
        return '[%s]' % ', '.join(map(_toml_value, v))
    if isinstance(v, dict):     # a table inside an array: an inline table
        return '{%s}' % ', '.join('%s = %s' % (_toml_key(k), _toml_value(x)) for k, x in v.items())
    raise OptionError('cannot write %r as a TOML value' % (v,))


def dump_toml(settings, _prefix=''):
    """TOML text of a config's settings (scalars, arrays, nested tables), e.g. a config's resolved
    settings written where its ``base`` path would no longer resolve; ``read_config`` of it gives
    ``settings`` back."""
    lines = ['%s = %s' % (_toml_key(k), _toml_value(v)) for k, v in settings.items() if not isinstance(v, dict)]
    for k, v in settings.items():
        if isinstance(v, dict):
            name = _prefix + _toml_key(k)
            lines += ['', '[%s]' % name, dump_toml(v, name + '.').rstrip('\n')]
    return '\n'.join(lines).lstrip('\n') + '\n'


def load_config(path, opts):
    """The options of a TOML file (resolved through its ``base``, see :func:`read_config`), keys
    normalised to snake_case, unknown keys rejected."""
    conf = read_config(path)
    conf = {k.replace('-', '_'): v for k, v in conf.items()}
    known = {o.key for o in opts}
    unknown = sorted(set(conf) - known)
    if unknown:
        raise OptionError('%s: unknown option(s) %s; known: %s' % (path, ', '.join(unknown), ', '.join(sorted(known))))
    return conf


def _key_values(items, what):
    table = {}
    for item in items:
        if '=' not in item:
            raise OptionError('%s takes KEY=VALUE, got %r' % (what, item))
        k, v = item.split('=', 1)
        table[k.strip()] = parse_scalar(v.strip())
    return table


def resolve(argv, opts, prog, description, presets=None):
    """Defaults, overridden by presets, by the --config file, then by the command line; each value
    type- and range-checked by its :class:`Opt`.  Returns a plain dict (cross-option checks are
    the trainer's).

    ``presets``: None, or a function of the checked values -> {key: value} for options that nobody
    gave (a recipe chosen by another option).  A table's preset is merged under the entries the
    config or the command line gave, entry by entry.
    """
    args = vars(build_parser(prog, description, opts).parse_args(argv))
    by_key = {o.key: o for o in opts}
    values = {o.key: (type(o.default)(o.default) if isinstance(o.default, (dict, list)) else o.default)
              for o in opts}
    given = {}          # key -> True, or for a table the set of its entries given
    if 'config' in args:
        path = args.pop('config')
        conf = load_config(path, opts)
        for k, v in conf.items():
            if by_key[k].kind == 'table':
                try:
                    values[k].update(by_key[k].check(v))
                except OptionError as e:
                    raise OptionError('%s: %s' % (path, e))
                given.setdefault(k, set()).update(v)
            else:
                values[k] = v
                given[k] = True
    for k, v in args.items():
        if by_key[k].kind == 'table':
            entries = _key_values(v, flag(k).rstrip('s'))
            values[k].update(entries)
            given.setdefault(k, set()).update(entries)
        else:
            # strings from the command line for 'any' options are typed like TOML scalars
            values[k] = parse_scalar(v) if by_key[k].kind == 'any' and isinstance(v, str) else v
            given[k] = True
    _check_all(values, opts)
    if presets is not None:
        for k, v in presets(dict(values)).items():
            if by_key[k].kind == 'table':
                values[k].update({e: x for e, x in v.items() if e not in given.get(k, ())})
            elif k not in given:
                values[k] = v
        _check_all(values, opts)
    return values


def _check_all(values, opts):
    for o in opts:
        values[o.key] = o.check(values[o.key]) if o.kind != 'any' else values[o.key]
