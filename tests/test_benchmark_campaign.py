"""scripts/benchmark_campaign.py reads tensorpack's epoch time as the trainer logs it."""
import importlib.util
import os

spec = importlib.util.spec_from_file_location(
    'benchmark_campaign', os.path.join(os.path.dirname(__file__), '..', 'scripts', 'benchmark_campaign.py'))
campaign = importlib.util.module_from_spec(spec)
spec.loader.exec_module(campaign)


def test_humanized_durations():
    assert campaign.seconds('55.2 seconds') == 55.2
    assert campaign.seconds('1 minute 49 seconds') == 109.0
    assert campaign.seconds('2 hours 3 minutes 4 seconds') == 7384.0


def test_epoch_time_is_read_from_the_log(tmp_path):
    (tmp_path / 'log.log').write_text(
        '[1207 20:16:18 @base.py:282] Epoch 1 (global_step 60) finished, time:1 minute 2.5 seconds.\n')
    assert campaign.train_seconds(str(tmp_path)) == 62.5
