"""One entry point for every normalization, by name, so that models are written once.

    with kn.norm_scope('bkn', group_size=2, gain='learned'):
        logits = model(image)          # every F.norm(...) inside is a BKN layer

A :class:`NormSpec` names the method and its options and validates them up front.  Inside its
scope, :func:`kalman_norm.flow.norm` builds that layer, :func:`kalman_norm.flow.conv2d` applies
weight normalization for ``'wn'``, and the flow ops propagate KN's prior for ``'bkn'``/``'gkn'``.
:data:`KN_RECIPES` names KN's recipes (this package's defaults, the authors' code, the paper)::

    with kn.norm_scope('bkn', group_size=2, **kn.KN_RECIPES['paper']):
        logits = model(image)
"""
import inspect
import threading
from types import MappingProxyType

from .norms import get_norm, norm_names
from .transition import METHODS

__all__ = ['NORMS', 'KN_RECIPES', 'SPEC_OPTIONS', 'NormSpec', 'norm_scope', 'current_norm']

#: the built-in norms' names (the registry, :mod:`kalman_norm.norms`, may hold more)
NORMS = norm_names()

#: KN's recipes by name, each the keyword arguments of :class:`NormSpec` for 'bkn' or 'gkn': the
#: prior method, and the options of Eq. 7 that the paper, the authors' code and this package set
#: differently (read-only; ``dict(KN_RECIPES[name])`` for a copy).  The trainer's ``--kn-recipe``
#: takes its values from here.
#:
#: * 'library': the defaults; they beat BN at 2 samples per normalisation (results/kn_study.md).
#: * 'authors': the authors' public CIFAR code (configs/cpu/kn_study/bkn_authors.toml).
#: * 'paper': the paper's text: MC prior, learned q and R, Eq. 7's variance as written, no guard.
KN_RECIPES = MappingProxyType({
    'library': MappingProxyType(dict(prior_method='analytic', prior_samples=1, gain=0.1, process_noise=False,
                                     pooled_variance=True, guard_ratio=100.0, propagate='output')),
    'authors': MappingProxyType(dict(prior_method='mc', prior_samples=1, gain=0.1, process_noise=False,
                                     pooled_variance=True, guard_ratio=100.0, propagate='input')),
    'paper': MappingProxyType(dict(prior_method='mc', prior_samples=1, gain='learned', process_noise=True,
                                   pooled_variance=False, guard_ratio=None, propagate='input')),
})

#: options of the spec itself, not of the layer (applied by the flow ops)
SPEC_OPTIONS = ('weight_standardization',)

_state = threading.local()


def _check_spec_options(norm, options):
    ws = options.get('weight_standardization', False)
    if not isinstance(ws, bool):
        raise ValueError('weight_standardization must be True or False, got %r' % (ws,))
    if ws and norm.weight_norm:
        raise ValueError("weight_standardization does not apply to %r: its kernels are weight-normalised "
                         "already" % norm.name)


def _active_specs():
    """This thread's open norm scopes, innermost last."""
    if not hasattr(_state, 'specs'):
        _state.specs = []
    return _state.specs


class NormSpec(object):
    """A normalization method and its options.

    Args:
        kind: one of :data:`NORMS`.
        group_size: samples per normalization (micro-batch group) for the batch-statistics
            norms ('bn', 'bkn', 'gkn', 'brn'); None = the whole tower batch.  Ignored (allowed, so
            that one command line serves every norm) by the batch-independent ones.
        prior_method: 'bkn'/'gkn' only: how the prior is predicted, 'analytic' (default: the
            many-samples limit of 'mc', with no sampling noise) or 'mc' (the paper's Monte-Carlo
            prediction; see :mod:`kalman_norm.transition`).
        prior_samples: 'mc' only: sampled feature maps per group (the authors use 1).
        weight_standardization: standardise every conv kernel per output channel over its fan-in
            before the conv (Qiao et al. 2019; :func:`kalman_norm.layers.weight_standardize`);
            composes with every norm but 'wn' (GN+WS is the paper's pairing; KN's prior is
            predicted through the standardised kernel).  Dense layers are left as they are.  Kept
            among the options (a config's ``norm_options``), so the spec's repr and records show it.
        **options: keyword arguments of the layer (see its docstring), checked here: unknown
            names against the layer's signature, values by the layer's ``check_*_options``
            function (so a bad value fails now, with one line, not while a model is built).

    A KN recipe of :data:`KN_RECIPES` is a set of these keywords:
    ``NormSpec('bkn', group_size=2, **KN_RECIPES['authors'])``.
    """

    def __init__(self, kind, group_size=None, prior_method='analytic', prior_samples=1, **options):
        norm = get_norm(kind)
        if group_size is not None and (not isinstance(group_size, int) or isinstance(group_size, bool)
                                       or group_size < 1):
            raise ValueError('group_size must be a positive integer or None, got %r' % (group_size,))
        if prior_method not in METHODS:
            raise ValueError('Unknown prior method %r; choose one of %s' % (prior_method, METHODS))
        if not isinstance(prior_samples, int) or isinstance(prior_samples, bool) or prior_samples < 1:
            raise ValueError('prior_samples must be a positive integer, got %r' % (prior_samples,))
        accepted = set(inspect.signature(norm.layer).parameters) - {'x', 'prior', 'group_size'}
        accepted |= set(SPEC_OPTIONS)
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ValueError('Option(s) %s do not apply to %r; it accepts: %s'
                             % (', '.join(unknown), kind, ', '.join(sorted(accepted)) or 'none'))
        _check_spec_options(norm, options)
        norm.check_options(**{k: v for k, v in options.items() if k not in SPEC_OPTIONS})
        self.kind, self.norm, self.group_size = kind, norm, group_size
        self.prior_method, self.prior_samples = prior_method, prior_samples
        self.options = dict(options)

    @property
    def propagates(self):
        """Whether the flow ops predict priors (KN methods)."""
        return self.norm.kalman

    @property
    def weight_norm(self):
        return self.norm.weight_norm

    @property
    def weight_standardization(self):
        """Whether ``flow.conv2d`` standardises its kernels (the spec's option)."""
        return bool(self.options.get('weight_standardization', False))

    def __call__(self, name, x, **overrides):
        kwargs = {k: v for k, v in self.options.items() if k not in SPEC_OPTIONS}
        if self.norm.group_size:
            kwargs['group_size'] = self.group_size
        # a call's gamma_init or gamma_initializer (one value under two names) replaces the spec's
        for given, alias in (('gamma_init', 'gamma_initializer'), ('gamma_initializer', 'gamma_init')):
            if given in overrides:
                kwargs.pop(alias, None)
        kwargs.update(overrides)
        return self.norm.layer(name, x, **kwargs)

    def replace(self, **changes):
        """A copy with some options changed (e.g. ``spec.replace(eval_stats='batch')``)."""
        kw = dict(group_size=self.group_size, prior_method=self.prior_method,
                  prior_samples=self.prior_samples, **self.options)
        kw.update(changes)
        return NormSpec(self.kind, **kw)

    def __enter__(self):
        _active_specs().append(self)
        return self

    def __exit__(self, *exc):
        _active_specs().pop()
        return False

    def __repr__(self):
        opts = ''.join(', %s=%r' % kv for kv in sorted(self.options.items()))
        extra = ', prior_method=%r' % self.prior_method if self.propagates else ''
        if self.propagates and self.prior_method == 'mc':
            extra += ', prior_samples=%d' % self.prior_samples
        return 'NormSpec(%r, group_size=%r%s%s)' % (self.kind, self.group_size, extra, opts)


def norm_scope(kind, **options):
    """Context manager selecting the normalization of :func:`kalman_norm.flow.norm` calls."""
    if isinstance(kind, NormSpec):
        if options:
            kind = kind.replace(**options)
        return kind
    return NormSpec(kind, **options)


def current_norm(required=True):
    """The innermost active :class:`NormSpec` (None if there is none and not ``required``)."""
    stack = _active_specs()
    if stack:
        return stack[-1]
    if required:
        raise RuntimeError('kalman_norm.flow.norm() was called outside a norm scope; wrap the model '
                           "in `with kalman_norm.norm_scope('bn'):` (or another norm name)")
    return None
