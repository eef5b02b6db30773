"""`qtool finetune`: quantization-aware training (quantize/finetune.py), registered on the app of cli_options.py."""

from __future__ import annotations

from typing import Annotated

import typer

from .cli_options import (
    BatchSizeOpt,
    DatasetConfigOpt,
    DatasetOpt,
    DeviceOpt,
    GroupSizeOpt,
    ModelArg,
    NumSamplesOpt,
    OutputOpt,
    OverwriteOpt,
    SchemeOpt,
    SeedOpt,
    SeqLenOpt,
    SplitOpt,
    StaticGroupsOpt,
    SymmetricOpt,
    TextColumnOpt,
    _calibration,
    app,
    console,
    single_recipe,
)
from .errors import handles_errors

InitOpt = Annotated[str, typer.Option(help="Starting point: rtn, gptq (on the same data) or a qtool checkpoint "
                                           "directory of the scheme to train.")]
StepsOpt = Annotated[int, typer.Option(help="Optimizer steps per decoder block (block output MSE), one batch each.")]
E2EStepsOpt = Annotated[int, typer.Option("--e2e-steps", help="Then steps of end-to-end KL distillation on the "
                                          "float model's logits (scales and zero points only).")]
LrOpt = Annotated[float, typer.Option(help="Adam learning rate of the float32 master weights and zero points, in "
                                           "quantization steps (the layer's mean scale) per step.")]
ScaleLrOpt = Annotated[float, typer.Option("--scale-lr", help="Adam learning rate of the scales, relative to the "
                                                            "layer's mean scale.")]
E2ELrOpt = Annotated[float, typer.Option("--e2e-lr", help="Learning rate of the scales in the end-to-end phase "
                                                          "(relative, as --scale-lr).")]


@app.command()
@handles_errors
def finetune(
    model: ModelArg,
    output: OutputOpt,
    scheme: SchemeOpt = None,
    group_size: GroupSizeOpt = None,
    symmetric: SymmetricOpt = None,
    init: InitOpt = "rtn",
    dataset: DatasetOpt = None,
    dataset_config: DatasetConfigOpt = None,
    split: SplitOpt = "train",
    text_column: TextColumnOpt = "text",
    num_samples: NumSamplesOpt = 128,
    seq_len: SeqLenOpt = 512,
    batch_size: BatchSizeOpt = 4,
    seed: SeedOpt = 0,
    steps: StepsOpt = 100,
    e2e_steps: E2EStepsOpt = 0,
    lr: LrOpt = 1e-3,
    scale_lr: ScaleLrOpt = 1e-3,
    e2e_lr: E2ELrOpt = 5e-4,
    static_groups: StaticGroupsOpt = None,
    device: DeviceOpt = "cpu",
    overwrite: OverwriteOpt = False,
) -> None:
    """Quantization-aware training of MODEL: fake quantization (STE, LSQ scales), block by block against the
    float model's block outputs, then optionally end to end on its logits; writes a qtool checkpoint.

    Example: qtool finetune models/smollm2 --scheme w3a16 --init gptq --dataset wiki.valid.tokens --steps 200 -o out/qat
    """
    from functools import partial

    from .finetune import FinetuneSettings, finetune_to_directory
    from .validation import check_positive

    check_positive(num_samples=num_samples, seq_len=seq_len, batch_size=batch_size)
    if dataset is None:
        raise ValueError("--dataset is required: finetune trains on text (a local file, folder or hub name)")
    chosen = None
    if scheme is not None or group_size is not None or symmetric is not None:
        if scheme is None:
            raise ValueError("--group-size and --symmetric/--asymmetric need --scheme")
        chosen = single_recipe("rtn", scheme, None, group_size, symmetric, {}).entries[0].scheme
    settings = FinetuneSettings(init=init, steps=steps, e2e_steps=e2e_steps, lr=lr, scale_lr=scale_lr,
                                e2e_lr=e2e_lr, static_groups=static_groups, seed=seed)
    data = partial(_calibration, dataset=dataset, dataset_config=dataset_config, split=split,
                   text_column=text_column, num_samples=num_samples, seq_len=seq_len, seed=seed, batch_size=batch_size)
    report = finetune_to_directory(model, output, chosen, settings, calibration=data, device=device,
                                   overwrite=overwrite)
    if report.blocks:
        before = sum(b["mse_init"] for b in report.blocks) / len(report.blocks)
        after = sum(b["mse_final"] for b in report.blocks) / len(report.blocks)
        console.print(f"mean block output MSE {before:.4g} -> {after:.4g}", highlight=False)
    console.print(f"wrote {output}", soft_wrap=True)
