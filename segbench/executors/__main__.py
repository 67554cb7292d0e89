"""``python -m segbench.executors SPEC_JSON [SYS_PATH_JSON]``: the worker process of one job (see
:func:`worker.worker_main`); ``python -m segbench.executors --zygote FD``: the job launcher of :mod:`.zygote`."""

import sys

from segbench.executors.worker import worker_main

if sys.argv[1:2] == ["--zygote"]:
    from segbench.executors.zygote import zygote_main

    sys.exit(zygote_main(sys.argv[2:], run=worker_main))
sys.exit(worker_main(sys.argv[1:]))
