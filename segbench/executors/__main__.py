"""``python -m segbench.executors SPEC_JSON``: the worker process of one job (see :func:`worker.worker_main`)."""

import sys

from segbench.executors.worker import worker_main

sys.exit(worker_main(sys.argv[1:]))
