"""nnU-Net's VRAM heuristic next to segbench's exact training-step estimate, for nnU-Net's own plain U-Net.

nnU-Net's planner accepts a 3d_fullres patch when its U-Net's summed feature-map elements (one sample) stay under a
reference value (560 M for 8 GB at batch 2). This script plans the ``ct_abdomen`` fingerprint of
tests/planner_datasets.py with the default preset, builds the very network the plan describes
(dynamic-network-architectures' PlainConvUNet, without deep supervision, since segbench's loss takes one output)
and prints segbench's FakeTensor estimate of one training step at the planned patch and batch size, with nnU-Net's
SGD, for fp32, bf16 and fp16. Needs ``pip install --no-deps dynamic-network-architectures einops``; CPU, seconds.

    python benchmarks/plans_reference_vs_estimate.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import math  # noqa: E402
import pydoc  # noqa: E402

from planner_datasets import FINGERPRINTS  # noqa: E402

from segbench.memory import training_step_memory  # noqa: E402
from segbench.plans import DatasetFingerprint, get_preset, plan_experiment, plans_to_json  # noqa: E402
from segbench.registry import register_model  # noqa: E402


def main() -> None:
    channels, n_labels, doc = FINGERPRINTS["ct_abdomen"]
    plan = plan_experiment(DatasetFingerprint.from_json(doc), get_preset("nnunet"), dataset_name="Dataset600_ct",
                           channel_names=channels, num_classes=n_labels, num_training=len(doc["spacings"]))  # fmt: skip
    config = plan.configurations["3d_fullres"]
    arch = plans_to_json(plan)["configurations"]["3d_fullres"]["architecture"]
    kwargs = dict(arch["arch_kwargs"])
    for key in arch["_kw_requires_import"]:
        if kwargs[key] is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    network = pydoc.locate(arch["network_class_name"])
    divisor = math.lcm(*config.topology.divisible_by)

    @register_model("nnunet_plain_from_plan", family="nnunet", divisor=int(divisor), source="dynamic-network-arch")
    def build(*, in_channels: int, out_channels: int):
        return network(input_channels=in_channels, num_classes=out_channels, deep_supervision=False, **kwargs)

    print(f"plan: patch {list(config.patch_size)}, batch {config.batch_size}, {config.topology.n_stages} stages")
    print(f"nnU-Net: {config.estimate:,} feature-map elements per sample; accepted while <= {config.reference:,.0f} "
          f"(reference for {plan.preset.reference_gb:g} GB at batch {plan.preset.reference_batch_3d})")  # fmt: skip
    print(
        f"nnU-Net's implied memory at batch {config.batch_size}: "
        f"{config.estimate * config.batch_size / 2 / config.reference * plan.preset.gpu_memory_gb:.2f} GB"
    )
    for precision in ("fp32", "bf16", "fp16"):
        memory = training_step_memory("nnunet_plain_from_plan", in_channels=len(channels), out_channels=n_labels,
                                      patch_size=config.patch_size, batch_size=config.batch_size,
                                      precision=precision, memory_format="contiguous", optimizer="sgd",
                                      fake=True)  # fmt: skip
        print(
            f"segbench {precision}: peak {memory.peak_mb:,.0f} MiB (activations {memory.activations_mb:,.0f}, "
            f"temporaries {memory.temporaries_mb:,.0f}, weights+grads+momentum "
            f"{memory.parameters_mb + memory.gradients_mb + memory.optimizer_mb:,.0f})"
        )


if __name__ == "__main__":
    main()
