"""Fake installed plugin distributions: a module plus ``NAME-0.1.dist-info`` in a folder put on sys.path.

The ``plugins`` fixture (tests/conftest.py) yields a :class:`PluginInstaller`;
``plugins.add(distribution, {entry_point_name: "module:object"}, module=..., source=...)`` installs one, discovered
for real by importlib.metadata. Plugin modules never import segbench, as a real plugin need not.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from segbench import registry

TOY_MODULE = """
import torch.nn as nn

def build(*, in_channels, out_channels, hidden=4):
    return nn.Sequential(nn.Conv3d(in_channels, hidden, 3, padding=1), nn.ReLU(), nn.Conv3d(hidden, out_channels, 1))

build.segbench_divisor = 8
build.segbench_family = "toy"

def plain(*, in_channels, out_channels):
    return nn.Conv3d(in_channels, out_channels, 1)

def fails(*, in_channels, out_channels):
    raise ValueError("no GPU kernels for this layer")

def not_a_module(*, in_channels, out_channels):
    return "a string"

bad_divisor = lambda **kwargs: None
bad_divisor.segbench_divisor = 0

NOT_CALLABLE = 42
"""


class PluginInstaller:
    """Writes fake installed distributions into one sys.path folder and refreshes the registry's plugin cache."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules: list[str] = []

    def add(self, distribution: str, entry_points: dict[str, str], *, module: str, source: str = TOY_MODULE) -> None:
        folder = self.root / distribution
        folder.mkdir(exist_ok=True)
        (folder / f"{module}.py").write_text(textwrap.dedent(source))
        info = folder / f"{distribution.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
        lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{lines}")
        sys.path.insert(0, str(folder))
        self.modules.append(module)
        registry.refresh_plugins()
