"""The tensorpack model every run trains (tensorpack's ModelDesc): normalised uint8 images -> the
task's model under the run's norm -> cross-entropy + weight decay on conv/FC kernels; and its dry
build, which checks the model and norm options before the data loads."""
import numpy as np
import tensorflow as tf
from tensorpack import ModelDesc
from tensorpack.models.regularize import regularize_cost
from tensorpack.tfutils.common import get_global_step_var
from tensorpack.tfutils.summary import add_moving_summary
from tensorpack.tfutils.tower import TowerContext, get_current_tower_context

from .evaluation import EMA_NORMS
from .options import OptionError

__all__ = ['ClassifierModel', 'weight_decay_cost', 'check_graph']


class ClassifierModel(ModelDesc):
    """Normalised uint8 images -> the task's model under the chosen norm -> cross-entropy + L2.

    Inference towers whose name contains ``Batch`` evaluate with online batch statistics
    (option B); the others with moving averages (option A).
    """

    def __init__(self, task, options, channel_mean, channel_std, num_classes):
        self.task, self.o = task, options
        self.mean = np.asarray(channel_mean, np.float32)
        self.std = np.asarray(channel_std, np.float32)
        self.num_classes = num_classes

    def inputs(self):
        return [tf.TensorSpec([None] + list(self.task.describe_input(self.o).image_shape), tf.uint8, 'input'),
                tf.TensorSpec([None], tf.int32, 'label')]

    def build_graph(self, image, label):
        ctx = get_current_tower_context()
        # The global step at the root scope: otherwise the first layer asking for it (BRN's
        # warm-up) would create it inside its own variable scope.
        get_global_step_var()
        if ctx.is_training:
            # training batches are always whole towers (the dataflow drops a remainder): say so to
            # the graph, so that layers with per-group state (MABN's histories) see their groups
            image.set_shape([self.o['tower_batch']] + image.shape.as_list()[1:])
        image = (tf.cast(image, tf.float32) - self.mean) / self.std
        spec = self.o['spec']
        if not ctx.is_training and self.o['norm'] in EMA_NORMS:
            spec = spec.replace(eval_stats='batch' if 'Batch' in ctx.name else 'moving')
        with spec:
            logits = self.task.build_logits(self.o, image, self.num_classes)
        xent = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=label, logits=logits),
                              name='xentropy')
        wrong = tf.cast(tf.logical_not(tf.compat.v1.nn.in_top_k(logits, label, 1)), tf.float32, name='wrong')
        if not ctx.is_training:
            tf.reduce_all(tf.math.is_finite(logits), name='logits_finite')     # for FiniteLogits
            return xent
        wd = weight_decay_cost(self.o['weight_decay'])
        train_error = tf.reduce_mean(wrong, name='train_error')
        cost = tf.add(xent, wd, name='cost')
        add_moving_summary(xent, wd, cost, train_error)
        return cost

    def optimizer(self):
        lr = tf.compat.v1.get_variable('learning_rate', initializer=float(self.o['lr']), trainable=False)
        tf.compat.v1.summary.scalar('lr', lr)
        return tf.compat.v1.train.MomentumOptimizer(lr, self.o['momentum'], use_nesterov=self.o['nesterov'])


def weight_decay_cost(weight_decay):
    """``weight_decay`` x the L2 of the conv and FC kernels (variables named ``.../W``) only, not
    gamma/beta or KN's q and R, as the authors do; tensorpack's regularize_cost takes a replicated
    tower's own kernels.  The rate multiplies the sum (not each term), as the trainer always did."""
    return tf.multiply(weight_decay, regularize_cost(r'/W$', tf.nn.l2_loss), name='weight_decay')


def check_graph(task, o):
    """Build one training tower on placeholders in a throw-away graph: any model or norm option
    that cannot work fails here, in a second, before the data loads."""
    tower, shown = o['tower_batch'], task.describe_input(o)
    model = ClassifierModel(task, o, np.zeros(3), np.ones(3), shown.num_classes)
    graph = tf.Graph()
    try:
        with graph.as_default(), TowerContext('', is_training=True):
            image = tf.compat.v1.placeholder(tf.uint8, [tower] + list(shown.image_shape))
            label = tf.compat.v1.placeholder(tf.int32, [tower])
            model.build_graph(image, label)
    except (TypeError, ValueError, KeyError, AssertionError, tf.errors.OpError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OptionError('the model cannot be built with these options (%s, --model-option %s, '
                          '--norm-option %s): %s' % (task.model_name(o), o['model_options'],
                                                     o['norm_options'], text))
