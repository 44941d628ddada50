"""Norm-agnostic models: the normalization is chosen by the enclosing ``kalman_norm.norm_scope``.

Installed as ``kalman_norm.models``; each module registers its architectures (:mod:`.registry`).
"""
from .registry import Model, get_model, model_names, register_model  # noqa: F401
from . import resnet_cifar, inception_cifar, resnet_imagenet, inception_v2  # noqa: F401,E402  (register)
