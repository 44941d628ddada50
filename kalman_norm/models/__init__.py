"""Norm-agnostic models: the normalization is chosen by the enclosing ``kalman_norm.norm_scope``."""
