"""Test plugin models whose forward pass ends their own process the hard way (imported by job processes).

They crash only inside a segbench job process (``python -m segbench.executors``), never in the test process: the
driver counts their FLOPs on the meta device and must survive them.
"""

from __future__ import annotations

import os
import signal
import sys

from torch import nn

from segbench.registry import register_model

CRASHING_MODELS = ("abort_net", "sigkill_net")


def _in_job_process() -> bool:
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return main_spec is not None and main_spec.name == "segbench.executors.__main__"


class _Crashing(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, crash) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.crash = crash

    def forward(self, x):
        if x.device.type != "meta" and _in_job_process():
            self.crash()
        return self.conv(x)


@register_model("sigkill_net", family="crash", divisor=1, source="tests")
def sigkill_net(*, in_channels: int, out_channels: int) -> nn.Module:
    """Kills its own process with SIGKILL in its first forward pass (what the kernel's OOM killer does)."""
    return _Crashing(in_channels, out_channels, lambda: os.kill(os.getpid(), signal.SIGKILL))


@register_model("abort_net", family="crash", divisor=1, source="tests")
def abort_net(*, in_channels: int, out_channels: int) -> nn.Module:
    """Calls ``os.abort()`` in its first forward pass (what a failing C++ assertion in an extension does)."""
    return _Crashing(in_channels, out_channels, os.abort)
