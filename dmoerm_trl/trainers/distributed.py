"""DeepSpeed and multi-process helpers for the DMoERM trainers.

Two things live here:

* :func:`validate_deepspeed_config` checks a DeepSpeed setup the way a real launch would build it: an accelerate
  config YAML is turned into launch environment variables by accelerate's own launcher code, a
  :class:`~accelerate.utils.DeepSpeedPlugin` is built from them, the ``"auto"`` values are filled by transformers'
  ``HfTrainerDeepSpeedConfig`` from ``TrainingArguments``, and the result is parsed by DeepSpeed's own
  ``DeepSpeedConfig`` (which rejects misspelled ZeRO keys). A plain DeepSpeed JSON file works too.
* :func:`cast_trainable_parameters_for_deepspeed` applies the bf16 + ZeRO-3 dtype rule: ZeRO-3 all-gathers parameters
  into buffers of the first parameter's dtype, so a bf16 run whose trainable LoRA/head/aggregator weights are fp32
  fails inside DeepSpeed. Every trainable parameter is cast to bf16 before the Trainer hands the model to DeepSpeed.

Example:
    >>> from dmoerm_trl.trainers.distributed import validate_deepspeed_config
    >>> config = validate_deepspeed_config("accelerate_configs/deepspeed_zero3_cpu.yaml")  # doctest: +SKIP
    >>> config["zero_optimization"]["stage"]  # doctest: +SKIP
    3
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def _patched_environ(env: dict[str, str]):
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def deepspeed_plugin_from_accelerate_config(path: str | os.PathLike):
    """Build the :class:`~accelerate.utils.DeepSpeedPlugin` that ``accelerate launch --config_file path`` would build.

    Returns ``(plugin, mixed_precision)``. Raises ``ValueError`` naming the file when it is not a DeepSpeed config.
    """
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    path = str(path)
    if not os.path.isfile(path):
        raise ValueError(f"DeepSpeed/accelerate config {path!r} does not exist")
    args = launch_command_parser().parse_args(["--config_file", path, "--main_process_port", "0", "train.py"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if not getattr(args, "use_deepspeed", False):
        raise ValueError(f"{path}: not a DeepSpeed config (distributed_type must be DEEPSPEED)")
    # the same bookkeeping as accelerate.commands.launch.launch_command before it calls the DeepSpeed launcher
    fields = list(defaults.deepspeed_config.keys()) if defaults else []
    if mp_from_config:
        fields.append("mixed_precision")
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    launch_env = {key: value for key, value in env.items() if key.startswith("ACCELERATE_")}
    with _patched_environ(launch_env):
        plugin = DeepSpeedPlugin()
    return plugin, launch_env.get("ACCELERATE_MIXED_PRECISION", "no")


def validate_deepspeed_config(
    path: str | os.PathLike,
    per_device_train_batch_size: int = 2,
    gradient_accumulation_steps: int | None = None,
    learning_rate: float = 5e-5,
    hidden_size: int = 64,
    num_training_steps: int = 10,
) -> dict[str, Any]:
    """Fill and parse a DeepSpeed setup exactly as a training run would; return the final DeepSpeed config dict.

    ``path`` is an accelerate config YAML (``distributed_type: DEEPSPEED``) or a DeepSpeed JSON file. Raises
    ``ValueError`` (with the file name) on anything DeepSpeed, accelerate or transformers would reject at launch.
    """
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import PretrainedConfig, TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    path = str(path)
    if path.endswith((".yaml", ".yml")):
        plugin, mixed_precision = deepspeed_plugin_from_accelerate_config(path)
        raw = copy.deepcopy(plugin.deepspeed_config)
        gas = plugin.gradient_accumulation_steps
    else:
        import json

        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read the DeepSpeed JSON config: {err}") from err
        mixed_precision = "bf16" if raw.get("bf16", {}).get("enabled") is True else "no"
        gas = raw.get("gradient_accumulation_steps", 1)
    if gradient_accumulation_steps is None:
        gradient_accumulation_steps = gas if isinstance(gas, int) else 1
    raw.pop("steps_per_print", None)  # accelerate sets it to inf to silence DeepSpeed; not a user value

    args = TrainingArguments(
        output_dir=os.path.join(os.path.dirname(os.path.abspath(path)), ".ds-validate-unused"),
        per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate,
        bf16=mixed_precision == "bf16",
        use_cpu=True,
        report_to="none",
    )
    try:
        hf_config = HfTrainerDeepSpeedConfig(raw)
        hf_config.trainer_config_process(args)

        class _Model:  # trainer_config_finalize only reads config.hidden_size
            config = PretrainedConfig(hidden_size=hidden_size)

        hf_config.trainer_config_finalize(args, _Model(), num_training_steps)
        filled = copy.deepcopy(hf_config.config)
        if mixed_precision == "bf16":
            filled.setdefault("bf16", {})["enabled"] = True
        DeepSpeedConfig(copy.deepcopy(filled))
    except Exception as err:  # pydantic ValidationError, AssertionError, ValueError from the three libraries
        raise ValueError(f"{path}: invalid DeepSpeed configuration: {err}") from err
    finally:
        unset_hf_deepspeed_config()
    return filled


def deepspeed_zero_stage(args) -> int | None:
    """The ZeRO stage of a ``TrainingArguments`` (``None`` when DeepSpeed is not used)."""
    plugin = getattr(args, "deepspeed_plugin", None)
    if plugin is not None:
        return int(plugin.zero_stage)
    hf_config = getattr(args, "hf_deepspeed_config", None)
    if hf_config is not None:
        return int(hf_config.get_value("zero_optimization.stage", 0))
    return None


def cast_trainable_parameters_for_deepspeed(model, args) -> int:
    """bf16 + ZeRO-3: cast every trainable parameter to bf16 (DeepSpeed fails on mixed-dtype trainable parameters).

    Returns the number of parameters cast (0 when the rule does not apply).
    """
    import torch

    if not getattr(args, "bf16", False) or deepspeed_zero_stage(args) != 3:
        return 0
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.bfloat16:
            param.data = param.data.to(torch.bfloat16)
            cast += 1
    return cast
