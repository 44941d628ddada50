"""The trainers: ``core`` (options, log directory, towers, resume, divergence), ``classifier`` (the
tensorpack model), ``callbacks``, ``evaluation`` (evaluation towers, PreciseBN, the summary line),
``cifar`` and ``imagenet`` (what each data set adds), ``cluster`` (a cluster and its processes), ``distributed`` (the
synchronous step's graph builder and trainer), ``options`` (typed
options and configs), ``rundir`` (a run's directory) and ``command_line`` (the option tables,
checked before TensorFlow loads).  Importing this package imports none of them."""
