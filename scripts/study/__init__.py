"""The study behind ``scripts/reproduce.py``, one module per job: :mod:`.schema` (table files and row
configs), :mod:`.records` (runs on disk, run.json, records and their numbers), :mod:`.stats` (the
claims' tests and verdicts), :mod:`.render` (the Markdown), :mod:`.efficiency` (a table's cost
columns: step time, folding, parameters) and :mod:`.cost` (the dry run's estimate).  Everything is
re-exported here: ``import study; study.load_table(...)``.

Layout (relative to a *root*, the repository by default)::

    configs/tables/<table>.toml             a table: title, claim, seeds, [[rows]], [[claims]], [[figures]]
    configs/<profile>/<table>/<row>.toml    one trainer config per row (profile: cpu or paper)
    train_log/<profile>/<row>/seed<S>/      the trainer's log dir of one (row, seed); run.json at launch
    results/runs/<profile>/<row>/seed<S>/   the run's record: stats.json, options.json, run.json,
                                            status.json (if the trainer wrote one), config.toml
    results/<table>.md, .png                the table and its curves (profile cpu; -paper for paper)
"""
from .schema import *    # noqa: F401,F403
from .records import *   # noqa: F401,F403
from .stats import *     # noqa: F401,F403
from .render import *    # noqa: F401,F403
from .efficiency import *  # noqa: F401,F403
from .cost import *      # noqa: F401,F403
