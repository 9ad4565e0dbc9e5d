"""Files of a saved DMoERM (safetensors only).

```
my-dmoerm/
  config.json                      DMoERMConfig (model_type "dmoerm")
  dmoerm_heads.safetensors         router head, task heads, value heads, aggregators (metadata: the categories'
                                   order, and which tensors are statistics, not parameters)
  adapters/<name>/                 one standard PEFT LoRA folder per adapter (adapter_config.json +
                                   adapter_model.safetensors): router, <category>__task, <category>__<capability>
  base/                            only with save_base=True: the backbone (config.json + model.safetensors)
  category_bases/<category>/       only with task_mode="full": that category's fine-tuned base copy (model.safetensors)
  eval_results.json                evaluation metrics, when known (shown in the model card)
  README.md                        model card
```
Every file is written to a temporary name and renamed into place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from ...utils.io import atomic_save_safetensors, atomic_write_text

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _plain_key(peft_key: str) -> str:
    """The plain backbone's name of a PEFT-wrapped backbone's (non-LoRA) weight."""
    return peft_key.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _base_state_dict(backbone_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain backbone's state dict out of a PEFT-wrapped one (LoRA weights dropped, base_layer unwrapped)."""
    return {_plain_key(key): value for key, value in backbone_state.items() if ".lora_" not in key}


BACKBONE_PREFIXES = ("backbone.", "category_backbones.")
CATEGORY_BASES = "category_bases"


def _sub_state(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


HEADS_FILE = "dmoerm_heads.safetensors"
CATEGORIES_METADATA = "dmoerm_categories"
STATISTICS_METADATA = "dmoerm_statistics"


def categories_metadata(config) -> str:
    """The ordered ``[[category, [capability, ...]], ...]`` a heads file was saved with (its safetensors metadata):
    the order sets the router's classes and the order of the aggregator's inputs."""
    return json.dumps([[category, list(caps)] for category, caps in config.categories.items()])


def statistics_metadata(model, heads: dict) -> str:
    """The names of the tensors in ``heads`` that are not parameters of ``model`` (buffers: the aggregators'
    feature statistics and reward calibration), as JSON for the heads file's metadata (``dmoerm info`` counts the
    rest as parameters)."""
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return json.dumps(sorted(key for key in heads if key not in parameters))


def heads_statistics(handle) -> set[str]:
    """The statistics (not parameters) among the tensors of an open heads file (``safe_open``): as its metadata lists
    them; for a file saved before they were listed, the tensors named like a [`CapabilityAggregator`]'s buffers.

    Example:
        >>> from safetensors import safe_open
        >>> with safe_open("tests/fixtures/saved_dmoerm_v1/dmoerm_heads.safetensors", "pt") as handle:
        ...     sorted(heads_statistics(handle))[:2]
        ['aggregators.chitchat.feature_mean', 'aggregators.chitchat.feature_std']
    """
    listed = (handle.metadata() or {}).get(STATISTICS_METADATA)
    if listed is not None:
        return set(json.loads(listed))
    from .modeling_dmoerm import CapabilityAggregator

    buffers = {name for name, _ in CapabilityAggregator(1, 1, 1).named_buffers()}
    keys = handle.keys()  # a safe_open handle, not a dict
    return {key for key in keys if key.startswith("aggregators.") and key.rsplit(".", 1)[-1] in buffers}


def save_dmoerm(model, save_directory, state_dict=None, save_base: bool = False, final_directory=None) -> None:
    import copy

    from peft import get_peft_model_state_dict

    from ...hub import build_model_card
    from ._base_reference import reference_for_reader, reference_for_save

    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    if not save_base and not config.base_model_name_or_path:
        raise ValueError(
            "the backbone was not loaded from a hub id or path, so a saved model could not find it again; "
            "save with save_pretrained(path, save_base=True)"
        )
    saved_config = copy.deepcopy(config)
    saved_config.base_model_name_or_path, saved_config.base_model_revision = reference_for_save(
        config.base_model_name_or_path,
        getattr(config, "base_model_revision", None),
        final_directory or folder,
        warn=not save_base,
    )
    if saved_config.base_model_name_or_path is None and save_base:
        saved_config.base_model_name_or_path = "./base"
    hub_base = reference_for_reader(saved_config.base_model_name_or_path)
    state_dict = state_dict if state_dict is not None else model.state_dict()
    heads = {k: v for k, v in state_dict.items() if not k.startswith(BACKBONE_PREFIXES)}
    backbone_state = _sub_state(state_dict, "backbone.")
    metadata = {
        "format": "pt",
        CATEGORIES_METADATA: categories_metadata(config),
        STATISTICS_METADATA: statistics_metadata(model, heads),
    }
    atomic_save_safetensors(heads, folder / HEADS_FILE, metadata=metadata)

    for name in model.all_adapter_names():
        prefix, owner = model.adapter_owner(name)
        adapter_state = get_peft_model_state_dict(owner, state_dict=_sub_state(state_dict, prefix), adapter_name=name)
        adapter_dir = folder / "adapters" / name
        atomic_save_safetensors(adapter_state, adapter_dir / ADAPTER_WEIGHTS)
        peft_config = copy.copy(owner.peft_config[name])
        # PEFT reads this as a hub id or a path from the working directory: the hub id when there is one.
        peft_config.base_model_name_or_path = hub_base or config.base_model_name_or_path
        peft_config.revision = saved_config.base_model_revision if hub_base else None
        atomic_write_text(
            adapter_dir / "adapter_config.json", json.dumps(peft_config.to_dict(), indent=2, default=list)
        )

    if model.full_task_mode:
        for slug in model.category_backbones:
            category_state = _base_state_dict(_sub_state(state_dict, f"category_backbones.{slug}."))
            atomic_save_safetensors(category_state, folder / CATEGORY_BASES / slug / "model.safetensors")
    if save_base:
        base_dir = folder / "base"
        atomic_save_safetensors(_base_state_dict(backbone_state), base_dir / "model.safetensors")
        atomic_write_text(base_dir / "config.json", config.get_backbone_config().to_json_string())
    if model.model_card_metrics:
        atomic_write_text(folder / "eval_results.json", json.dumps(model.model_card_metrics, indent=2))
    atomic_write_text(folder / "config.json", saved_config.to_json_string())
    atomic_write_text(folder / "README.md", build_model_card(model, save_base=save_base, base_model=hub_base).content)


def _resolve_folder(name_or_path, hub_kwargs: dict) -> Path:
    if os.path.isdir(name_or_path):
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(name_or_path), **hub_kwargs))


# from_pretrained's own options: the DMoERM folder's hub options, the backbone's loading options, and what
# transformers' Auto classes and TRL pass along (adapter_kwargs: their PEFT lookup, unused here; subfolder: "";
# trust_remote_code: TRL's GRPO passes the policy's; unused: no downloaded code runs, the backbone loads without it).
_REPO_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies")
_AUTO_KWARGS = ("adapter_kwargs", "subfolder", "num_labels", "trust_remote_code")


def load_dmoerm(cls, name_or_path, config, base_model_name_or_path, kwargs: dict):
    from ._backbone import BACKBONE_KWARGS, check_load_kwargs, load_pretrained_backbone
    from ._base_reference import MissingBaseModelError, is_relative_reference, resolve_base
    from .configuration_dmoerm import DMoERMConfig

    check_load_kwargs(kwargs, "from_pretrained", BACKBONE_KWARGS + _REPO_KWARGS + _AUTO_KWARGS)
    num_labels = kwargs.pop("num_labels", 1)
    if num_labels != 1:
        raise ValueError(f"a DMoERM is a reward model with one output; got num_labels={num_labels}")
    if kwargs.get("subfolder"):
        raise ValueError("from_pretrained: subfolder= is not supported; pass the DMoERM folder itself")
    repo_kwargs = {k: kwargs[k] for k in _REPO_KWARGS if kwargs.get(k) is not None}
    base_kwargs = {k: kwargs[k] for k in BACKBONE_KWARGS if kwargs.get(k) is not None}
    # transformers' Auto classes fold attn_implementation= into the config they pass: hand it on to the backbone.
    folded = config._attn_implementation_internal if isinstance(config, DMoERMConfig) else None
    if folded is not None and "attn_implementation" not in base_kwargs:
        base_kwargs["attn_implementation"] = folded
    folder = _resolve_folder(name_or_path, repo_kwargs)
    if not (folder / HEADS_FILE).exists():
        raise FileNotFoundError(
            f"{folder} is not a saved DMoERM (no {HEADS_FILE}); save one with model.save_pretrained()"
        )
    if not isinstance(config, DMoERMConfig):
        config = DMoERMConfig.from_pretrained(folder)
    base_source, base_revision = resolve_base(folder, config, base_model_name_or_path)
    if not Path(base_source).is_dir():  # by hub id: the repo's credentials and cache, the base's own revision
        base_kwargs.update({k: v for k, v in repo_kwargs.items() if k in ("token", "cache_dir", "local_files_only")})
        if base_revision:
            base_kwargs["revision"] = base_revision
    try:
        base = load_pretrained_backbone(base_source, **base_kwargs)
    except OSError as err:
        raise MissingBaseModelError(
            f"{folder}: could not load its base model {base_source!r} ({str(err).splitlines()[0]}). Fix: make the "
            "hub id reachable (network, login, cache), or pass base_model_name_or_path=<folder of the base>"
        ) from err
    if is_relative_reference(config.base_model_name_or_path):
        config.base_model_name_or_path = base_source  # this model's base, wherever the model is saved next
        config.base_model_revision = None
    model = cls(config, backbone=base)
    model.config._attn_implementation = base.config._attn_implementation
    parameter = next(base.parameters())
    model.to(device=parameter.device, dtype=parameter.dtype)
    load_dmoerm_weights(model, folder)
    if not config.assistant_opener_ids:
        _prompt_boundary_from_saved_tokenizer(model, folder)
    if (folder / "eval_results.json").exists():
        model.model_card_metrics = json.loads((folder / "eval_results.json").read_text(encoding="utf-8"))
    model.eval()
    return model


def check_categories_metadata(config, path: Path) -> None:
    """Refuse heads saved for another order (or set) of categories and capabilities than ``config`` lists.

    The order of ``categories`` sets the router's classes and the order of each aggregator's inputs, so an edited
    order in ``config.json`` would change rewards and routing without any error. Heads files saved before this
    check (no metadata) load as before; other metadata keys and extra tensors are not this check's business.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        saved = (handle.metadata() or {}).get(CATEGORIES_METADATA)
    if saved is None:
        return
    saved_order = [(category, list(caps)) for category, caps in json.loads(saved)]
    config_order = [(category, list(caps)) for category, caps in config.categories.items()]
    if saved_order == config_order:
        return
    as_sets = {c: sorted(caps) for c, caps in saved_order} == {c: sorted(caps) for c, caps in config_order}
    what = (
        "lists the same categories and capabilities in another order; the order sets the router's classes and the "
        "aggregator's inputs, so restore the saved order in config.json (categories and category_order)"
        if as_sets
        else "lists other categories or capabilities; load the config.json saved with these heads"
    )
    raise ValueError(
        f"{path.parent}/config.json does not match {path.name}: the heads were saved for {dict(saved_order)}, "
        f"config.json {what} (it has {dict(config_order)})"
    )


def read_safetensors(path) -> dict:
    """``load_file(path)``, with a ``ValueError`` naming the file when it is truncated or corrupt."""
    from safetensors import SafetensorError

    try:
        return load_file(path)
    except SafetensorError as err:
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}): it is truncated or corrupt; copy or save it again"
        ) from None


def _prompt_boundary_from_saved_tokenizer(model, folder: Path) -> None:
    """A model saved before prompt-only routing (no ``assistant_opener_ids`` in its config): take the prompt boundary
    from the tokenizer saved in its folder (the training pipeline saves it there). Without one, the router reads the
    whole text and warns at its first use (see ``DMoERMRouter.prompt_mask``)."""
    import logging

    from ._prompt_boundary import PromptBoundaryError

    logger = logging.getLogger(__name__)
    if not any((folder / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")):
        return
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        opener = model.set_prompt_boundary(tokenizer)
    except (PromptBoundaryError, OSError, ValueError) as error:
        logger.warning(
            "%s: no prompt boundary from its saved tokenizer (%s); the router reads the whole text", folder, error
        )
        return
    logger.info(
        "%s was saved without a prompt boundary; routing on the prompt up to %r (token ids %s), from its saved "
        "tokenizer",
        folder,
        model.config.assistant_opener_text,
        opener,
    )


def load_dmoerm_weights(model, folder) -> None:
    from peft import set_peft_model_state_dict

    folder = Path(folder)
    heads = read_safetensors(folder / HEADS_FILE)  # first: a truncated file is named before its metadata is read
    check_categories_metadata(model.config, folder / HEADS_FILE)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(BACKBONE_PREFIXES)}
    # Models saved before the aggregators stored feature/reward statistics load with the identity ones (as before).
    optional = {f"aggregators.{name}" for name, _ in model.aggregators.named_buffers()}
    missing = sorted(k for k in set(own) - set(heads) - optional)
    unexpected = sorted(set(heads) - set(own))
    reshaped = sorted(k for k in set(own) & set(heads) if own[k].shape != heads[k].shape)
    if missing or unexpected or reshaped:
        raise ValueError(
            f"{folder}/{HEADS_FILE} does not match this model's categories and capabilities "
            f"(missing {missing[:4]}, unexpected {unexpected[:4]}, other shape {reshaped[:4]}); "
            "was it saved from another config?"
        )
    model.load_state_dict(heads, strict=False)
    for name in model.all_adapter_names():
        path = folder / "adapters" / name / ADAPTER_WEIGHTS
        if not path.exists():
            raise FileNotFoundError(f"adapter {name!r} is missing: {path} does not exist")
        adapter_state = read_safetensors(path)
        outcome = set_peft_model_state_dict(model.adapter_owner(name)[1], adapter_state, adapter_name=name)
        if outcome.unexpected_keys:
            raise ValueError(f"{path}: unexpected keys {outcome.unexpected_keys[:5]}; saved from another backbone?")
    if model.full_task_mode:
        for slug, backbone in model.category_backbones.items():
            load_category_base(backbone, folder / CATEGORY_BASES / slug / "model.safetensors")


def load_category_base(peft_backbone, path: Path) -> None:
    """Load a saved category base copy (plain backbone keys) into its PEFT-wrapped copy; every weight must be there."""
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: a task_mode='full' DMoERM stores each category's fine-tuned base copy there "
            "(was the folder saved by an older version, or copied without category_bases/?)"
        )
    saved = read_safetensors(path)
    plain_to_own = {_plain_key(key): key for key in peft_backbone.state_dict() if ".lora_" not in key}
    missing = sorted(set(plain_to_own) - set(saved))
    unexpected = sorted(set(saved) - set(plain_to_own))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match this model's backbone (missing {missing[:4]}, unexpected {unexpected[:4]}); "
            "was it saved from another base model?"
        )
    peft_backbone.load_state_dict({plain_to_own[k]: v for k, v in saved.items()}, strict=False)


class SavedFolderMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``load_dmoerm_weights`` / ``push_to_hub`` of a DMoERM (mixed into
    [`DMoERMForSequenceClassification`]; the folder layout is this module's docstring)."""

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        state_dict: dict | None = None,
        save_base: bool = False,
        is_main_process: bool = True,
        push_to_hub: bool = False,
        final_directory: str | os.PathLike | None = None,
        **kwargs,
    ) -> None:
        """Save config, one standard PEFT folder per adapter (``adapters/<name>/``), the heads and a model card.

        ``config.json`` names the base so that the folder can move (hub id, ``./path`` inside the folder, else an
        absolute path: docs/hub.md); ``save_base=True`` also writes the base to ``base/``. ``final_directory``: where
        a folder written to a staging folder first will end up. ``state_dict`` (e.g. gathered by ZeRO-3) replaces
        this model's own; ``safe_serialization``/``max_shard_size`` are accepted (files are always safetensors).

        Example:
            >>> model.save_pretrained("runs/my-dmoerm")  # doctest: +SKIP
        """
        if push_to_hub:
            raise ValueError("use model.push_to_hub(repo_id) to upload")
        if not is_main_process:
            return
        save_dmoerm(self, save_directory, state_dict=state_dict, save_base=save_base, final_directory=final_directory)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args,
        config=None,
        base_model_name_or_path: str | None = None,
        **kwargs,
    ):
        """Load a saved DMoERM (local folder or hub repo): the base from ``base/`` or its recorded hub id / path
        (relative to the folder or absolute; a missing base is a clear ``FileNotFoundError`` naming it and the fix),
        then the adapters and heads. ``dtype=``, ``device_map=``, ``attn_implementation=``, ``low_cpu_mem_usage=``
        reach the backbone; hub options (``revision``, ``token``, ``cache_dir``, ``local_files_only``) apply to this
        repo (the base loads at its own recorded revision); ``base_model_name_or_path=`` overrides where the base
        comes from. Options it cannot honour (``quantization_config``, unknown names) are refused (``ValueError``).

        Example:
            >>> import dmoerm_trl
            >>> from transformers import AutoModelForSequenceClassification
            >>> model = AutoModelForSequenceClassification.from_pretrained("./my-dmoerm")  # doctest: +SKIP
        """
        from ...paths import require_model

        require_model(str(pretrained_model_name_or_path), "pretrained_model_name_or_path")
        return load_dmoerm(cls, pretrained_model_name_or_path, config, base_model_name_or_path, kwargs)

    def load_dmoerm_weights(self, folder: str | os.PathLike) -> None:
        """Load adapters and heads saved by ``save_pretrained`` into this model (same config); used for resuming."""
        load_dmoerm_weights(self, folder)

    def push_to_hub(self, repo_id: str, *, save_base: bool = False, metrics: dict | None = None, **kwargs) -> str:
        """Upload config, adapters, heads and a model card to the Hub (see [`dmoerm_trl.hub.push_to_hub`])."""
        from ...hub import push_to_hub

        return push_to_hub(self, repo_id, save_base=save_base, metrics=metrics, **kwargs)
