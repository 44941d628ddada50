"""One task of the small cluster that tests/test_distributed.py starts (a helper, not a test).

    python tests/_dist_worker.py --cluster ps=127.0.0.1:P --cluster worker=127.0.0.1:A,127.0.0.1:B \\
        --task worker:0 --mode ps --towers 2 --steps 2 --out DIR

A ps task serves until killed.  A worker trains :func:`tiny_cost` (two conv + BKN layers, groups
of 2) with plain SGD on its own fake data, and writes DIR/worker<i>.npz with, for every step k:
  * ``w<k>:<var>``: the weights its towers read before step k (and after the last step),
  * ``ema<k>:<var>``: the shared moving averages at the same times,
  * ``in<k>:tower<t>:image`` / ``:label``: the samples tower t trained on in step k,
  * ``in<k>:tower<t>:norm1_mean``: the first KN layer's group means in that step,
  * ``sync_step<k>``: the number of updates applied to the shared weights, read at the same times,
  * ``devices``: JSON {variable: device} of the trainable and the shared variables.
Variable names have '/' replaced by '.'.  ``--restore CKPT`` starts from a checkpoint (read by
the chief); the chief saves one in DIR/checkpoints at the end.
"""
import argparse
import json
import os
import sys
import time

import kalman_norm as kn
import numpy as np
import tensorflow as tf
from kalman_norm import flow as F
from tensorpack import ModelDesc, QueueInput, TrainConfig, launch_train_with_config
from tensorpack.callbacks import Callback, ModelSaver
from tensorpack.tfutils.sessinit import SaverRestore
from tensorpack.dataflow import DataFromList
from tensorpack.utils import logger

tfv1 = tf.compat.v1

LEARNING_RATE = 0.1
TOWER_BATCH = 4          # two normalisation groups of 2 per tower
GROUP_SIZE = 2
IMAGE_SHAPE = (4, 4, 3)
CLASSES = 3


def tiny_cost(image, label):
    """conv - BKN - relu - conv - BKN (prior from the first) - relu - pool - fc; mean cross-entropy."""
    tf.identity(image, name='seen_image')
    tf.identity(label, name='seen_label')
    with kn.norm_scope('bkn', group_size=GROUP_SIZE):
        x = F.conv2d('conv1', image, 4, 3)
        x = F.norm('norm1', x)
        tf.identity(x.posterior.mean, name='norm1_mean')   # [groups, channels]: batch statistics
        x = F.relu(x)
        x = F.conv2d('conv2', x, 4, 3)
        x = F.relu(F.norm('norm2', x))
        logits = F.fully_connected('fc', F.global_avg_pool(x), CLASSES)
    xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=label, logits=logits)
    return tf.reduce_mean(xent, name='cost')


def worker_data(worker, towers):
    """One datapoint (a tower's batch) per tower; each worker's images have their own offset."""
    rng = np.random.RandomState(1000 + worker)
    return [[(rng.randn(TOWER_BATCH, *IMAGE_SHAPE) + 3.0 * worker).astype(np.float32),
             rng.randint(0, CLASSES, TOWER_BATCH).astype(np.int32)] for _ in range(towers)]


class TinyModel(ModelDesc):
    def inputs(self):
        return [tf.TensorSpec((TOWER_BATCH,) + IMAGE_SHAPE, tf.float32, 'image'),
                tf.TensorSpec((TOWER_BATCH,), tf.int32, 'label')]

    def build_graph(self, image, label):
        return tiny_cost(image, label)

    def optimizer(self):
        return tfv1.train.GradientDescentOptimizer(LEARNING_RATE)


class SlowRestore(SaverRestore):
    """Restores a checkpoint RESTORE_DELAY seconds late: widens the window in which a worker
    that did not wait for the chief's restore would read the chief's fresh initial weights."""
    RESTORE_DELAY = 3.0

    def _run_init(self, sess):
        time.sleep(self.RESTORE_DELAY)
        super(SlowRestore, self)._run_init(sess)


def _key(name):
    return name.replace('/', '.')


class Recorder(Callback):
    """Records what each step read and computed, and writes it at the end of training."""
    _chief_only = False

    def __init__(self, path, towers):
        self.path, self.towers, self.arrays, self.step = path, towers, {}, 0

    def _setup_graph(self):
        g = tfv1.get_default_graph()
        self._weights = {_key(v.op.name.replace('replica/', '')): v for v in tfv1.trainable_variables()}
        self._emas = {_key(v.op.name): v for v in tfv1.global_variables() if v.op.name.endswith('/EMA')}
        self._sync_step = [v for v in tfv1.global_variables() if v.op.name == 'sync/step'][0]
        self.arrays['devices'] = np.array(json.dumps(
            {v.op.name: v.device for v in tfv1.trainable_variables() + tfv1.global_variables()}))
        self._seen = {'tower%d:%s' % (t, what): g.get_tensor_by_name('tower%d/%s:0' % (t, what))
                      for t in range(self.towers) for what in ('seen_image', 'seen_label', 'norm1_mean')}

    def _snapshot(self):
        weights, emas, self.arrays['sync_step%d' % self.step] = self.trainer.sess.run(
            [self._weights, self._emas, self._sync_step])
        self.arrays.update({'w%d:%s' % (self.step, k): v for k, v in weights.items()})
        self.arrays.update({'ema%d:%s' % (self.step, k): v for k, v in emas.items()})

    def _before_train(self):
        self._snapshot()

    def _before_run(self, _):
        return tfv1.train.SessionRunArgs(fetches=self._seen)

    def _after_run(self, _, run_values):
        for k, v in run_values.results.items():
            self.arrays['in%d:%s' % (self.step, k.replace('seen_', ''))] = v

    def _trigger_step(self):
        self.step += 1
        self._snapshot()

    def _after_train(self):
        np.savez(self.path, **self.arrays)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--cluster', action='append')
    p.add_argument('--task')
    p.add_argument('--mode', default='ps')
    p.add_argument('--towers', type=int, default=1)
    p.add_argument('--steps', type=int, default=2)
    p.add_argument('--out', required=True)
    p.add_argument('--restore', help='checkpoint the chief starts from')
    p.add_argument('--starting-epoch', type=int, default=1, help='a non-chief follows the chief\'s instead')
    a = p.parse_args(argv)
    from kalman_norm.train.distributed import make_distributed_trainer, parse_cluster
    cluster, job, index = parse_cluster(a.cluster, a.task, env={})
    logger.set_logger_dir(os.path.join(a.out, 'log-%s%d' % (job, index)), action='d')
    trainer = make_distributed_trainer(cluster, job, index, gpus_per_worker=a.towers, mode=a.mode)
    config = TrainConfig(
        model=TinyModel(), data=QueueInput(DataFromList(worker_data(index, a.towers), shuffle=False)),
        callbacks=[Recorder(os.path.join(a.out, 'worker%d.npz' % index), a.towers),
                   ModelSaver(checkpoint_dir=os.path.join(a.out, 'checkpoints'))],   # chief-only
        session_init=SlowRestore(a.restore) if a.restore else None,
        monitors=[], steps_per_epoch=a.steps, starting_epoch=a.starting_epoch, max_epoch=1)
    launch_train_with_config(config, trainer)
    print('worker %d done' % index, flush=True)
    sys.stdout.flush()
    os._exit(0)   # do not wait for the gRPC server's threads: the test stops the cluster


if __name__ == '__main__':
    main()
