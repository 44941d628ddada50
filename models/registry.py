"""The model registry: one row per architecture, read by both trainers, the probe and the scripts.

A new model is one file in ``models/`` whose builder ``builder(image, num_classes=..., **options)``
is registered with :func:`register_model` at its end, and one import in ``models/__init__.py``.
"""
from dataclasses import dataclass, field
from typing import Callable, Mapping

from kalman_norm.registry import Registry

__all__ = ['Model', 'register_model', 'get_model', 'model_names']

FAMILIES = ('cifar', 'imagenet')


@dataclass(frozen=True)
class Model:
    """One architecture.

    Attributes:
        name: the trainer's choice (``--model`` of the CIFAR trainer, ``--arch`` of ImageNet's).
        builder: ``builder(image, num_classes=..., **arguments)`` -> logits, norm-agnostic (the
            norm comes from the enclosing ``norm_scope``).
        family: the trainer that offers it, 'cifar' (32×32 inputs) or 'imagenet'.
        display: the name in log directories and result lines; ``{depth}`` is replaced by the
            depth that ``trainer_arguments`` sets (ResNet-CIFAR: 6n+2).
        title: the name in tables, as the papers write it (``ResNet-50``).
        fixed: builder arguments the row fixes (ResNet-101: ``depth=101``).
        trainer_arguments: builder argument -> the trainer option that sets it (ResNet-CIFAR's
            ``n`` from ``--depth``).  Every other builder argument may come from ``--model-option``.
        smallest: arguments of the cheapest instance that still has every kind of block, which
            the tests parametrised over this registry build (ResNet-8, a quarter-width Inception).
    """
    name: str
    builder: Callable
    family: str
    display: str
    title: str
    fixed: Mapping = field(default_factory=dict)
    trainer_arguments: Mapping = field(default_factory=dict)
    smallest: Mapping = field(default_factory=dict)

    def arguments(self, options):
        """The builder's keyword arguments for trainer ``options`` (fixed, trainer-set, --model-option)."""
        kwargs = dict(self.fixed)
        kwargs.update({arg: options[opt] for arg, opt in self.trainer_arguments.items()})
        kwargs.update(options.get('model_options') or {})
        return kwargs

    def build(self, image, num_classes, options):
        """Logits for trainer ``options`` (``{}``: the row's defaults)."""
        return self.builder(image, num_classes=num_classes, **self.arguments(options))

    def make(self, image, num_classes, **arguments):
        """Logits with the row's fixed arguments and ``arguments``."""
        return self.builder(image, num_classes=num_classes, **dict(self.fixed, **arguments))

    def display_name(self, options):
        if 'n' in self.trainer_arguments:
            return self.display.format(depth=6 * options[self.trainer_arguments['n']] + 2)
        return self.display


_REGISTRY = Registry('model', Model)


def register_model(model):
    if not isinstance(model, Model):
        raise TypeError('register_model takes a Model, got %r' % (model,))
    if model.family not in FAMILIES:
        raise ValueError('A model family is one of %s, got %r' % (FAMILIES, model.family))
    return _REGISTRY.register(model)


def get_model(name):
    return _REGISTRY.get(name)


def model_names(family=None):
    return tuple(n for n in _REGISTRY.names() if family is None or _REGISTRY.get(n).family == family)
