"""A test plugin model that writes down which process started its job process (imported by job processes)."""

from __future__ import annotations

import json
import os

import psutil
from torch import nn

from segbench.registry import register_model


@register_model("parent_probe", family="probe", divisor=1, source="tests")
def parent_probe(*, in_channels: int, out_channels: int) -> nn.Module:
    """A one-layer network; built in a job process, it appends that process's parent command line to a file."""
    path = os.environ.get("SEGBENCH_TEST_PROBE")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            parent = psutil.Process(os.getppid())
            handle.write(json.dumps({"pid": os.getpid(), "parent": parent.cmdline()}) + "\n")
    return nn.Conv3d(in_channels, out_channels, 3, padding=1)
