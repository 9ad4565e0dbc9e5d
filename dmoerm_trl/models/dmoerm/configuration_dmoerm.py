"""Configuration of a DMoERM reward model."""

from __future__ import annotations

import re
from typing import Any

from transformers import AutoConfig, PretrainedConfig

ROUTER_MODES = ("lora", "linear", "trunk")
ROUTER_DESCRIPTIONS = {  # for model cards and `dmoerm info`
    "lora": "its own LoRA adapter + a linear head",
    "linear": "a linear head on the frozen base",
    "trunk": "a linear head on the shared trunk's output, no layer pass of its own",
}
POOLING_MODES = ("last", "first")
ROUTER_POOLING_MODES = ("last", "first", "mean")
EXPERT_BATCHING_MODES = ("auto", "mixed", "sequential")
TASK_MODES = ("lora", "full")

_SLUG_RE = re.compile(r"[^0-9A-Za-z_\-]+")


def slugify(name: str) -> str:
    """A name usable as a PEFT adapter name and a folder name: letters, digits, ``_`` and ``-``.

    Example:
        >>> slugify("subjective QA")
        'subjective_QA'
    """
    slug = _SLUG_RE.sub("_", name.strip()).strip("_")
    return slug


def validate_categories(categories: Any) -> dict[str, list[str]]:
    """Check a ``{category: [capability, ...]}`` mapping and return a clean copy (order kept).

    Raises a ``ValueError`` that says what to change for: a non-mapping, no categories, empty or duplicate names,
    a category without capabilities, or two names that map to the same adapter name.

    Example:
        >>> validate_categories({"objective_qa": ["correctness", "logic"]})
        {'objective_qa': ['correctness', 'logic']}
    """
    if not isinstance(categories, dict):
        raise ValueError(
            "categories must be a dict {category name: [capability names]}, e.g. "
            f"{{'objective_qa': ['correctness', 'logic']}}; got {type(categories).__name__}"
        )
    if not categories:
        raise ValueError("categories is empty: give at least one category with at least one capability")
    clean: dict[str, list[str]] = {}
    seen_category_slugs: dict[str, str] = {}
    for category, capabilities in categories.items():
        if not isinstance(category, str) or not category.strip():
            raise ValueError(f"category names must be non-empty strings, got {category!r}")
        if category != category.strip():
            raise ValueError(f"category name {category!r} has leading/trailing white space; remove it")
        slug = slugify(category)
        if not slug:
            raise ValueError(f"category name {category!r} has no letter or digit; use e.g. 'objective_qa'")
        if slug in seen_category_slugs:
            raise ValueError(
                f"categories {seen_category_slugs[slug]!r} and {category!r} map to the same adapter name {slug!r}; "
                "rename one of them"
            )
        seen_category_slugs[slug] = category
        if isinstance(capabilities, str) or not isinstance(capabilities, (list, tuple)):
            raise ValueError(
                f"category {category!r}: capabilities must be a list of names, e.g. ['correctness', 'logic'], "
                f"got {capabilities!r}"
            )
        if len(capabilities) == 0:
            raise ValueError(f"category {category!r} has no capabilities: give at least one capability name")
        seen_capability_slugs: dict[str, str] = {}
        for capability in capabilities:
            if not isinstance(capability, str) or not capability.strip() or capability != capability.strip():
                raise ValueError(
                    f"category {category!r}: capability names must be non-empty strings without leading/trailing "
                    f"white space, got {capability!r}"
                )
            cap_slug = slugify(capability)
            if not cap_slug:
                raise ValueError(f"category {category!r}: capability {capability!r} has no letter or digit")
            if cap_slug in seen_capability_slugs:
                what = (
                    "is listed twice"
                    if seen_capability_slugs[cap_slug] == capability
                    else (f"and {seen_capability_slugs[cap_slug]!r} map to the same adapter name {cap_slug!r}")
                )
                raise ValueError(f"category {category!r}: capability {capability!r} {what}; remove or rename it")
            if cap_slug in ("task",):
                raise ValueError(f"category {category!r}: 'task' is reserved for the task adapter; rename it")
            seen_capability_slugs[cap_slug] = capability
        clean[category] = list(capabilities)
    return clean


class DMoERMConfig(PretrainedConfig):
    r"""Configuration of a [`DMoERMForSequenceClassification`].

    A DMoERM is one frozen pretrained backbone ("base") carrying LoRA adapters: a router (sparse outer MoE) picks
    the conversation's category; the category's capability experts (dense inner MoE: one LoRA adapter + one value
    head per capability) run on it, and the category's aggregator MLP turns the concatenated last hidden states of
    its k experts into one reward.

    Args:
        categories (`dict[str, list[str]]`):
            Category name -> ordered capability names. The order defines the category ids (router classes) and the
            columns of `capability_rewards`.
        base_model_name_or_path (`str`, *optional*):
            Where the backbone's pretrained weights come from. In a saved `config.json`: a hub id (also when the base
            was loaded from a Hugging Face cache snapshot), a path relative to the model folder starting with `./`
            (a base inside the folder, e.g. `./backbone`), or, only when it is neither, an absolute local path (the
            folder then loads on this machine only). `from_pretrained` loads the base from here unless the base was
            saved inside the model folder (`save_pretrained(..., save_base=True)`, `base/`). See
            `dmoerm_trl/base_reference.py`.
        base_model_revision (`str`, *optional*):
            The hub commit (or branch/tag) of the base, when known; used when the base is loaded by hub id.
        backbone_config (`dict`, *optional*):
            The backbone's own config (`PretrainedConfig.to_dict()`), so the architecture can be built without
            network access and parameters counted without loading weights.
        lora_r (`int`, defaults to 32), lora_alpha (`int`, defaults to 32), lora_dropout (`float`, defaults to 0.05):
            LoRA settings of every adapter (the paper's values).
        lora_target_modules (`list[str]`, *optional*):
            Module names that get LoRA. Default: auto-detected (`q_proj`/`v_proj` for Llama/Qwen-style decoders,
            `query`/`value` for BERT-style encoders, `c_attn` for GPT-2).
        aggregator_hidden_size (`int`, *optional*):
            Width of the aggregator MLP `Linear(k*H, A) -> PReLU -> Linear(A, 1)`. Defaults to the backbone's H.
        router_mode (`str`, defaults to `"lora"`):
            `"lora"`: the router is its own LoRA adapter on the base plus a linear head (one extra backbone pass).
            `"linear"`: a linear head on the frozen base's features (one extra pass without adapters, weaker).
            `"trunk"`: a linear head on the shared trunk's output (needs `trunk_layers > 0`): routing costs no
            extra layer pass at all, since the trunk runs anyway for the experts. Its `router_pooling` defaults to
            `"mean"`: a middle layer's last token carries little of the prompt's content (docs/benchmarks.md,
            "The router on the trunk").
        pooling (`str`, *optional*):
            Which token's hidden state represents a sequence: `"last"` (last non-pad token; decoders) or `"first"`
            (the `[CLS]` token; encoders). Default: detected from the backbone.
        router_pooling (`str`, *optional*):
            How the router summarises a sequence: `"last"`, `"first"` or `"mean"` (the mean over real tokens).
            Default: the same as `pooling`. `"mean"` trains much more easily when the backbone is small or shallow,
            whose last token does not yet summarise the prompt (docs/demo.md, docs/benchmarks.md "The router on
            the trunk").
        expert_batching (`str`, defaults to `"auto"`):
            How a category's k experts run at inference. `"mixed"`: one PEFT mixed-adapter pass over the k-times
            replicated batch; `"sequential"`: k passes over the batch; `"auto"`: mixed on accelerators, sequential on
            CPU (faster there: docs/benchmarks.md, "Model: scoring speed"). Both give the same rewards.
        task_mode (`str`, defaults to `"lora"`):
            How phase 1 ("task") trains a category. `"lora"`: a task LoRA adapter on the one shared frozen base
            (memory = 1 base + adapters). `"full"`: the paper's layout: each category gets its own full copy of the
            base, fully fine-tuned in phase 1, and its capability experts are LoRA adapters on that copy (memory =
            1 + C bases; the router stays on the original base). Saved models then hold `category_bases/`.
        trunk_layers (`int`, defaults to 0):
            The shared trunk: the bottom `trunk_layers` layers of the backbone carry no adapters, so they run once
            per sequence and the router and each expert run only the layers above them (scoring with k experts
            costs `L + (1 + k) * (N - L)` layer passes instead of `(1 + k) * N`; each adapter is `(N - L) / N` the
            size). `0` (default): adapters in every layer, the paper's design. Needs `task_mode="lora"` and a
            backbone whose layers all have the same attention type (checked when the model is built).
        hidden_size (`int`, *optional*):
            The backbone's hidden size (set automatically; exposed for DeepSpeed ZeRO-3 auto values).
        max_position_embeddings (`int`, *optional*):
            The longest input the backbone accepts (set automatically when the backbone declares it).
        calibrate_rewards (`bool`, defaults to `True`):
            Put every category's reward on one scale: the final reward is the aggregator's output standardised by the
            mean and standard deviation it had on the category's training texts (computed after phase 3 and stored
            with the aggregator; a model whose aggregators were never calibrated is unaffected). `False` returns the
            raw aggregator output. The pairwise loss is blind to a constant per category, so without calibration a
            misrouted response, or a PPO batch that mixes categories, compares arbitrary offsets.
        category_order (`list[str]`, *optional*):
            Set automatically: the order of `categories` (JSON files sort keys; this keeps category ids stable).
        assistant_opener_ids (`list[int]`, *optional*):
            The token ids that open an assistant turn in the tokenizer's chat template (set by
            `from_backbone(..., tokenizer=)` or `model.set_prompt_boundary(tokenizer)`; see `prompt_boundary.py`).
            The router reads only the prompt: the real tokens up to and including the last occurrence of these ids
            in each row; a row without them is an error. `None` (built without a tokenizer, or a model saved before
            prompt-only routing whose folder holds no tokenizer): the router reads the whole text, with a warning.
        assistant_opener_text (`str`, *optional*):
            The decoded opener, for messages.

    Example:
        >>> from dmoerm_trl import DMoERMConfig
        >>> config = DMoERMConfig(categories={"objective_qa": ["correctness", "logic"]}, hidden_size=32)
        >>> config.category_names, config.num_categories, config.max_capabilities
        (['objective_qa'], 1, 2)
    """

    model_type = "dmoerm"

    def __init__(
        self,
        categories: dict[str, list[str]] | None = None,
        base_model_name_or_path: str | None = None,
        base_model_revision: str | None = None,
        backbone_config: dict | None = None,
        lora_r: int = 32,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] | None = None,
        aggregator_hidden_size: int | None = None,
        router_mode: str = "lora",
        pooling: str | None = None,
        router_pooling: str | None = None,
        expert_batching: str = "auto",
        task_mode: str = "lora",
        trunk_layers: int = 0,
        hidden_size: int | None = None,
        max_position_embeddings: int | None = None,
        calibrate_rewards: bool = True,
        category_order: list[str] | None = None,
        assistant_opener_ids: list[int] | None = None,
        assistant_opener_text: str | None = None,
        **kwargs,
    ):
        kwargs.setdefault("num_labels", 1)
        super().__init__(**kwargs)
        categories = validate_categories(categories) if categories is not None else {}
        if category_order is not None:
            # JSON serialisation sorts keys; the order (= category ids) is kept here.
            if sorted(category_order) != sorted(categories):
                raise ValueError(f"category_order {category_order} does not list the categories {list(categories)}")
            categories = {name: categories[name] for name in category_order}
        self.categories = categories
        self.category_order = list(categories)
        self.base_model_name_or_path = base_model_name_or_path
        self.base_model_revision = base_model_revision
        self.backbone_config = backbone_config
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lora_target_modules = list(lora_target_modules) if lora_target_modules else None
        self.aggregator_hidden_size = aggregator_hidden_size
        if router_mode not in ROUTER_MODES:
            raise ValueError(f"router_mode must be one of {ROUTER_MODES}, got {router_mode!r}")
        self.router_mode = router_mode
        if pooling is not None and pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES} or None (auto), got {pooling!r}")
        self.pooling = pooling
        if router_pooling is not None and router_pooling not in ROUTER_POOLING_MODES:
            raise ValueError(
                f"router_pooling must be one of {ROUTER_POOLING_MODES} or None (= pooling), got {router_pooling!r}"
            )
        if router_pooling is None and router_mode == "trunk":
            router_pooling = "mean"  # a middle layer's last token routes far worse (see the docstring)
        self.router_pooling = router_pooling
        if expert_batching not in EXPERT_BATCHING_MODES:
            raise ValueError(f"expert_batching must be one of {EXPERT_BATCHING_MODES}, got {expert_batching!r}")
        self.expert_batching = expert_batching
        if task_mode not in TASK_MODES:
            raise ValueError(
                f"task_mode must be one of {TASK_MODES} ('lora': a task adapter on the shared base; 'full': one fully "
                f"fine-tuned base copy per category, the paper's layout), got {task_mode!r}"
            )
        self.task_mode = task_mode
        if isinstance(trunk_layers, bool) or not isinstance(trunk_layers, int) or trunk_layers < 0:
            raise ValueError(
                f"trunk_layers must be an int >= 0 (0: adapters in every layer, the paper's design), got {trunk_layers!r}"
            )
        if trunk_layers and task_mode == "full":
            raise ValueError(
                "trunk_layers > 0 needs task_mode='lora': with task_mode='full' each category fine-tunes its whole base "
                "copy, so there is no frozen trunk to share; use trunk_layers=0"
            )
        if router_mode == "trunk" and not trunk_layers:
            raise ValueError(
                "router_mode='trunk' reads the shared trunk's output, so it needs trunk_layers > 0 (e.g. the bottom "
                "three quarters of the layers); without a trunk use router_mode='lora' or 'linear'"
            )
        self.trunk_layers = trunk_layers
        self.hidden_size = hidden_size
        self.max_position_embeddings = max_position_embeddings
        if assistant_opener_ids is not None and (
            isinstance(assistant_opener_ids, (str, bytes))
            or not assistant_opener_ids
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in assistant_opener_ids)
        ):
            raise ValueError(
                "assistant_opener_ids must be a non-empty list of token ids (set it with "
                f"model.set_prompt_boundary(tokenizer)), got {assistant_opener_ids!r}"
            )
        self.assistant_opener_ids = list(assistant_opener_ids) if assistant_opener_ids is not None else None
        self.assistant_opener_text = assistant_opener_text
        if not isinstance(calibrate_rewards, bool):
            raise ValueError(f"calibrate_rewards must be True or False, got {calibrate_rewards!r}")
        self.calibrate_rewards = calibrate_rewards

    @property
    def category_names(self) -> list[str]:
        return list(self.categories)

    @property
    def num_categories(self) -> int:
        return len(self.categories)

    @property
    def max_capabilities(self) -> int:
        return max((len(caps) for caps in self.categories.values()), default=0)

    def category_id(self, category: str | int) -> int:
        """Index of a category given by name (or id, checked). Unknown names raise a clear error."""
        names = self.category_names
        if isinstance(category, int) or (hasattr(category, "__index__") and not isinstance(category, str)):
            index = int(category)
            if not 0 <= index < len(names):
                raise ValueError(f"category id {index} is out of range; this model has {len(names)}: {names}")
            return index
        if category not in self.categories:
            raise ValueError(f"unknown category {category!r}; this model's categories are {names}")
        return names.index(category)

    def get_backbone_config(self) -> PretrainedConfig:
        if not self.backbone_config:
            raise ValueError("this DMoERMConfig has no backbone_config; build the model with from_backbone()")
        backbone_config = dict(self.backbone_config)
        model_type = backbone_config.pop("model_type")
        return AutoConfig.for_model(model_type, **backbone_config)


AutoConfig.register(DMoERMConfig.model_type, DMoERMConfig, exist_ok=True)
