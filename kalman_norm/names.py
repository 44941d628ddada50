"""The names the trainers' command lines offer as choices, declared apart from the objects they
name so that options are parsed and checked before TensorFlow loads (the registries that hold the
objects import it).  tests/test_command_line.py checks each list against its registry."""

#: kalman_norm.norms.norm_names(), in registry order
NORM_NAMES = ('bn', 'bkn', 'gn', 'gkn', 'brn', 'ln', 'wn', 'none', 'frn', 'evonorm_s0', 'evonorm_b0', 'mabn')

#: kalman_norm.transition.METHODS: how KN predicts its prior
PRIOR_METHODS = ('analytic', 'mc')

#: the keys of kalman_norm.spec.KN_RECIPES
KN_RECIPE_NAMES = ('library', 'authors', 'paper')

#: kalman_norm.models.model_names(family)
MODEL_NAMES = {'cifar': ('resnet', 'inception'), 'imagenet': ('resnet50', 'resnet101', 'inception_v2')}

#: kalman_norm.data.DATASETS: the CIFAR trainer's --dataset
DATASETS = ('cifar10', 'cifar100', 'svhn', 'folder')

#: the schedules of each trainer (cifar.SCHEDULE_RECIPES, imagenet.SCHEDULE_RECIPES)
SCHEDULES = {'cifar': ('paper', 'short'), 'imagenet': ('paper', 'short')}
