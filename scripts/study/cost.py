"""The run-time estimate of ``--dry-run``: measured minutes per epoch from the records, else the
measured fallbacks of cost.toml (next to this module)."""
import glob
import os

from .records import load_record, record_trainer
from .schema import DEFAULT_DEPTH, _is_number, _load_toml, is_imagenet, load_config

#: the fallbacks' file (a repository's; measured numbers with their sources)
COST_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cost.toml')
_COST = _load_toml(COST_CONFIG)

#: minutes per epoch of ResNet-20, BN at 64 groups of 2 (cost.toml says which run measured it)
BASE_MINUTES_PER_EPOCH = _COST['base_minutes_per_epoch']
#: each norm's step time relative to BN's
NORM_COST = dict(_COST['norm_cost'])
#: the small Inception net's cost relative to ResNet-20's
INCEPTION_COST = _COST['inception_cost']


def _cost_key(config):
    """What sets the minutes of an epoch, trainer first (a CIFAR record never estimates an ImageNet
    run): CIFAR: model, depth, norm.  ImageNet: the architecture at its image size, and the steps
    and samples per step, which only a step cap fixes (an epoch is the --data folder, unknown here)."""
    norm = config.get('norm', 'bn')
    if norm in ('bkn', 'gkn') and config.get('prior') == 'mc':
        norm += '-mc'
    if is_imagenet(config):
        return ('imagenet', config['arch'], config['image_size'], config.get('steps_per_epoch'),
                config['total_batch'], norm)
    return ('cifar', config.get('model', 'resnet'), config.get('depth', DEFAULT_DEPTH), norm)


def minutes_per_epoch(root, profile, config):
    """(minutes, source): the fastest of this profile's records of the same trainer, model and norm
    (wall minutes / epochs, see :func:`_cost_key`); else the fastest of the records of the same model
    with other norms, each scaled by the norms' relative step time (:data:`NORM_COST`); else, for
    CIFAR, the documented default model.  Minutes per epoch hardly depend on the number of epochs; a
    CIFAR config with --steps-per-epoch is scaled by its share of an epoch.  An ImageNet config has
    no measured base: without a record of its model, minutes is None."""
    key = _cost_key(config)
    same, scaled = [], []
    for run in glob.glob(os.path.join(root, 'results', 'runs', profile, '*', 'seed*', 'run.json')):
        d = os.path.dirname(run)
        rec = load_record(d)
        cfg = os.path.join(d, 'config.toml')
        if not rec or not rec['stats'] or not os.path.isfile(cfg):
            continue
        # run.json's minutes add up every attempt; a run launched by hand has only the trainer's
        # own clock (the last process's minutes: right unless it was resumed)
        minutes = rec['run'].get('wall_minutes')
        if not _is_number(minutes):
            minutes = rec['stats'][-1].get('wall_minutes')
        if not _is_number(minutes):
            continue
        per_epoch = minutes / rec['stats'][-1]['epoch_num']
        rec_key = _cost_key(load_config(cfg, record_trainer(rec)))
        if rec_key == key:
            same.append(per_epoch)
        elif rec_key[:-1] == key[:-1]:
            # the same model with another norm: its minutes times the ratio of the two norms'
            # step times, so a new row of a measured model does not fall back to the default
            scaled.append(per_epoch * NORM_COST.get(key[-1], 1.0) / NORM_COST.get(rec_key[-1], 1.0))
    # the fastest record: a shared machine (two runs side by side, tests beside them) only ever
    # slows a run down, and most records were made on one, so their median overstates a run
    # on its own (the dry run's promise)
    if same:
        return float(min(same)), 'measured (fastest of %d records)' % len(same)
    if scaled:
        return (float(min(scaled)),
                'scaled from %d records of the model with other norms' % len(scaled))
    if is_imagenet(config):
        return None, 'no estimate (no record of this model yet)'
    _, model, depth, norm = key
    base = BASE_MINUTES_PER_EPOCH * (INCEPTION_COST if model == 'inception' else depth / 3.0)
    batch_scale = 1.0
    steps = config.get('steps_per_epoch')
    if steps:
        batch_scale = min(1.0, steps / (50000.0 / config.get('total_batch', 128)))
    return base * NORM_COST.get(norm, 1.0) * batch_scale, 'default estimate'
