"""Every use of another library's private API, in one place (tests/test_compat.py checks each against the installed
transformers / PEFT / openai and fails with the name of what changed).

- transformers ``Trainer``: the checkpoint hooks ``_save``, ``_load_from_checkpoint``, ``_load_best_model`` (a stage
  checkpoint holds only the stage's tensors) and ``_set_signature_columns_if_needed`` / ``_signature_columns`` (the
  columns a custom collator keeps) are overridden here, and only here ([`TrainerCheckpointHooks`],
  [`SignatureColumnsHook`]); the trainers implement the public-named methods these call.
- transformers' DeepSpeed integration: ``_hf_deepspeed_config_weak_ref`` (the live ZeRO-3 config that makes
  ``from_pretrained`` partition weights), detached for a while by [`without_zero3_init`].
- PEFT's ``LoraModel``: ``_create_and_replace``, ``_check_new_adapter_config``, ``_mark_only_adapters_as_trainable``
  (the one-pass adapter injection, ``models/dmoerm/_lora_injection.py``), checked by [`peft_lora_api_missing`].
- openai's client: ``client.post(..., cast_to=object)`` / ``client.get(...)``, the generic request that returns the raw
  JSON body (the labeling client, [`openai_post_json`], [`openai_get_json`]).

Example:
    >>> from dmoerm_trl._compat import peft_lora_api_missing
    >>> peft_lora_api_missing() is None  # the installed PEFT has what the one-pass injection calls
    True
"""

from __future__ import annotations

import contextlib
import inspect

# ------------------------------------------------------------------------------------------ transformers Trainer
TRAINER_HOOKS = {
    "_save": ["self", "output_dir", "state_dict"],
    "_load_from_checkpoint": ["self", "resume_from_checkpoint", "model"],
    "_load_best_model": ["self"],
    "_set_signature_columns_if_needed": ["self"],
}


def trainer_hooks_missing() -> str | None:
    """Why the installed ``transformers.Trainer`` lacks a private hook overridden here (``None`` when it has all)."""
    from transformers import Trainer

    for name, expected in TRAINER_HOOKS.items():
        method = getattr(Trainer, name, None)
        if not callable(method):
            return f"transformers' Trainer has no {name}()"
        parameters = list(inspect.signature(method).parameters)
        if parameters[: len(expected)] != expected:
            return f"transformers' Trainer.{name}{inspect.signature(method)} is not the known one ({expected})"
    return None


class TrainerCheckpointHooks:
    """Routes ``Trainer``'s private checkpoint hooks to the stage trainer's ``save_stage_checkpoint``,
    ``load_stage_checkpoint`` and ``load_best_stage_checkpoint`` (under DeepSpeed, best-model loading stays the
    Trainer's own)."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        self.save_stage_checkpoint(output_dir, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        self.load_stage_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        if self.is_deepspeed_enabled:
            return super()._load_best_model()
        return self.load_best_stage_checkpoint()


class SignatureColumnsHook:
    """Keeps the dataset columns named in ``signature_columns`` (what the trainer's collator reads) instead of the
    ones ``Trainer`` infers from the model's ``forward`` signature."""

    signature_columns: tuple[str, ...]

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(self.signature_columns)


@contextlib.contextmanager
def without_zero3_init():
    """Build models as plain modules even while a ZeRO-3 ``TrainingArguments`` is alive.

    Under a live ZeRO-3 config transformers partitions parameters while loading (``zero.Init``), which the DMoERM
    surgery (adapters, heads, loading finished stages) cannot work on. A plain model is partitioned by the DeepSpeed
    engine when the stage's Trainer starts instead.

    Example:
        >>> with without_zero3_init():
        ...     pass  # build models here
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


# --------------------------------------------------------------------------------------------------------- PEFT
PEFT_LORA_CREATE_AND_REPLACE = [
    "self",
    "lora_config",
    "adapter_name",
    "target",
    "target_name",
    "parent",
    "current_key",
]


def peft_lora_api_missing() -> str | None:
    """Why the installed PEFT lacks what the one-pass adapter injection calls (``None`` when it has it all)."""
    try:
        from peft.functional import cast_adapter_dtype  # noqa: F401
        from peft.tuners.lora import LoraLayer, LoraModel
    except ImportError as error:
        return f"peft has no {error.name or error}"
    needed = ("_create_and_replace", "_check_new_adapter_config", "_mark_only_adapters_as_trainable", "set_adapter")
    for name in needed:
        if not callable(getattr(LoraModel, name, None)):
            return f"peft's LoraModel has no {name}()"
    signature = inspect.signature(LoraModel._create_and_replace)
    if list(signature.parameters)[: len(PEFT_LORA_CREATE_AND_REPLACE)] != PEFT_LORA_CREATE_AND_REPLACE:
        return f"peft's LoraModel._create_and_replace{signature} is not the known one"
    if not callable(getattr(LoraLayer, "update_layer", None)):
        return "peft's LoraLayer has no update_layer()"
    return None


def peft_check_new_adapter_config(tuner, lora_config) -> None:
    """PEFT's own validation of a further adapter's config (what ``inject_adapter`` runs first)."""
    tuner._check_new_adapter_config(lora_config)


def peft_create_and_replace(tuner, lora_config, adapter_name: str, layer, target_name: str, parent, key: str) -> None:
    """Add ``adapter_name`` to one targeted layer, as ``inject_adapter`` does per matched module."""
    tuner._create_and_replace(lora_config, adapter_name, layer, target_name, parent, current_key=key)


def peft_mark_only_adapters_as_trainable(tuner, model) -> None:
    """What PEFT does after each injection: only adapter weights require grad."""
    tuner._mark_only_adapters_as_trainable(model)


# ------------------------------------------------------------------------------------------------------- openai
def openai_post_json(client, path: str, body: dict, timeout: float):
    """``client.post`` returning the raw JSON answer (an awaitable for ``AsyncOpenAI``): the client's generic
    request, with the same auth, base URL and status-error mapping as ``chat.completions.create``, without building
    typed response objects (less client CPU per request: docs/benchmarks.md, "labeling")."""
    return client.post(path, cast_to=object, body=body, options={"timeout": timeout})


def openai_get_json(client, path: str, timeout: float):
    """``client.get`` returning the raw JSON answer (an awaitable for ``AsyncOpenAI``)."""
    return client.get(path, cast_to=object, options={"timeout": timeout})
