"""Configuration of a DMoERM training run, as TRL-style dataclasses (``TrlParser`` gives CLI flags and YAML).

Three dataclasses, like TRL's scripts (``ScriptArguments``, ``ModelConfig``, ``RewardConfig``):

* :class:`DMoERMModelArguments`: the backbone, the category set and the LoRA/router/aggregator shape.
* :class:`DMoERMDataArguments`: the human-ranked data, the capability labels and how they are split.
* :class:`DMoERMTrainingConfig`: a :class:`trl.RewardConfig` (so every ``TrainingArguments`` flag works:
  batch sizes, ``report_to``, ``seed``, ``bf16``, ``save_total_limit`` ...) plus per-phase learning rates and epochs.
  Each stage's Trainer gets a copy of it with the stage's values filled in.

The defaults are the paper's recipe (arXiv 2403.01197, sec. 4): 60% of the human pairs of a category for phase 1,
40% for phase 3, a validation split held out first; model selection by validation pairwise accuracy. Learning
rates, with why (see docs/training.md for the measurements):

=========== ===================== ======== =====================================================================
phase       trains                default  paper
=========== ===================== ======== =====================================================================
router      router LoRA + head    5e-5     (not given) the LoRA rate of phase 2
1 task      task LoRA + head      5e-5     1e-7 for *full* fine-tuning of all weights; a LoRA adapter needs a
                                           far larger rate, we use the paper's own LoRA rate (phase 2)
2 expert    expert LoRA + head    5e-5     5e-5 (LoRA r=32, alpha=32, q_proj/v_proj, dropout 0.05): same
3 aggregate MLP on frozen experts 1e-4     1e-6, with the reference code's per-sample (batch size 1) updates;
                                           with batched updates a fresh MLP hardly moves at 1e-6
=========== ===================== ======== =====================================================================

Example:
    >>> from trl import TrlParser
    >>> from dmoerm_trl.trainers import DMoERMModelArguments, DMoERMDataArguments, DMoERMTrainingConfig
    >>> parser = TrlParser((DMoERMModelArguments, DMoERMDataArguments, DMoERMTrainingConfig))
    >>> model_args, data_args, training_args = parser.parse_args_and_config(  # doctest: +SKIP
    ...     ["--config", "recipes/configs/tiny_cpu.yaml", "--task_learning_rate", "1e-3"])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from trl import RewardConfig

STAGE_KINDS = ("label", "router", "task", "capability", "aggregator", "baseline")


def _parse_mapping_string(value: Any) -> Any:
    """``categories`` given on the command line as inline JSON/YAML (``'{"a": ["x"]}'``) becomes a mapping."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        import yaml

        return yaml.safe_load(value)
    return value


@dataclass
class DMoERMModelArguments:
    r"""The reward model to build: backbone, categories and capabilities, adapter shapes.

    Parameters:
        model_name_or_path (`str`, *optional*):
            Local path or hub id of the pretrained backbone (decoder such as Llama/Qwen2, or encoder such as BERT).
            Its weights are loaded; the saved DMoERM references it (or contains it with `save_base_model`).
        tiny_backbone (`str`, *optional*):
            `"llama"` or `"bert"`: instead of `model_name_or_path`, build a tiny random backbone with
            `dmoerm_trl.testing_utils` into `<output_dir>/backbone` (tests, CI, smoke runs; no download).
        tiny_backbone_hidden_size (`int`, defaults to `32`), tiny_backbone_num_layers (`int`, defaults to `2`):
            Size of the tiny backbone.
        categories (`str` or mapping, defaults to `"paper"`):
            The category set: `"paper"` (the paper's five categories and capability points), a YAML file path, or a
            mapping `{category: [capability, ...]}` (inline in the YAML config, or JSON on the command line).
        lora_r (`int`, defaults to `32`), lora_alpha (`int`, defaults to `32`), lora_dropout (`float`, defaults to
        `0.05`), lora_target_modules (`list[str]`, *optional*):
            LoRA settings of every adapter (router, task adapters, experts); the paper's values. Target modules
            are auto-detected (q_proj/v_proj, query/value) when not given.
        aggregator_hidden_size (`int`, *optional*):
            Width of each aggregator MLP (default: the backbone's hidden size, as in the paper).
        router_mode (`str`, defaults to `"lora"`):
            `"lora"` (own adapter + head), `"linear"` (a head on frozen base features; cheaper, weaker) or `"trunk"`
            (a head on the shared trunk's output; needs `trunk_layers > 0`; routing then costs no extra pass).
        pooling (`str`, *optional*):
            `"last"` or `"first"` token; detected from the backbone when not given.
        router_pooling (`str`, *optional*):
            `"last"`, `"first"` or `"mean"` for the router only (default: the same as `pooling`; `"mean"` with
            `router_mode: trunk`).
        task_mode (`str`, defaults to `"lora"`):
            Phase 1: `"lora"` (a task adapter per category on the one shared base) or `"full"` (the paper's layout:
            one full copy of the base per category, all its weights fine-tuned; memory and saved files grow with
            1 + the number of categories; the paper's phase-1 rate is `task_learning_rate: 1e-7`).
        trunk_layers (`int`, defaults to 0):
            A shared trunk: the bottom `trunk_layers` layers carry no adapters and run once per sequence; the
            router, task adapters and experts live in the layers above (0: every layer, the paper's design).
        dtype (`str`, defaults to `"float32"`):
            Dtype to load the backbone in (`"float32"`, `"bfloat16"`, `"float16"`, `"auto"`).
        save_base_model (`bool`, defaults to `False`):
            Also write the backbone's weights into the output folder (`base/`), so it loads without the original.
    """

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Local path or hub id of the pretrained backbone (its weights are loaded)."}
    )
    tiny_backbone: str | None = field(
        default=None,
        metadata={
            "help": "'llama' or 'bert': build a tiny random backbone with dmoerm_trl.testing_utils into "
            "<output_dir>/backbone instead of loading model_name_or_path (tests and smoke runs).",
            "choices": [None, "llama", "bert"],
        },
    )
    tiny_backbone_hidden_size: int = field(default=32, metadata={"help": "Hidden size of the tiny backbone."})
    tiny_backbone_num_layers: int = field(default=2, metadata={"help": "Number of layers of the tiny backbone."})
    categories: str | None = field(
        default="paper",
        metadata={
            "help": "Category set: 'paper', a YAML file, or a mapping {category: [capabilities]} (inline in the "
            "YAML config, or JSON on the command line)."
        },
    )
    lora_r: int = field(default=32, metadata={"help": "LoRA rank of every adapter (paper: 32)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha of every adapter (paper: 32)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (paper: 0.05)."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules that get LoRA; auto-detected (q_proj/v_proj, query/value) if unset."}
    )
    aggregator_hidden_size: int | None = field(
        default=None, metadata={"help": "Width of the aggregator MLP (default: the backbone's hidden size)."}
    )
    router_mode: str = field(
        default="lora",
        metadata={
            "help": "'lora': router adapter + head; 'linear': head on frozen base features; 'trunk': head on "
            "the shared trunk's output (needs trunk_layers > 0; no extra pass).",
            "choices": ["lora", "linear", "trunk"],
        },
    )
    pooling: str | None = field(
        default=None, metadata={"help": "'last' or 'first' token pooling; detected from the backbone if unset."}
    )
    router_pooling: str | None = field(
        default=None,
        metadata={
            "help": "Router pooling: 'last', 'first' or 'mean' (default: same as pooling; 'mean' with "
            "router_mode trunk); 'mean' trains more easily on small or shallow backbones.",
            "choices": [None, "last", "first", "mean"],
        },
    )
    task_mode: str = field(
        default="lora",
        metadata={
            "help": "Phase 1: 'lora' (task adapter on the shared base) or 'full' (the paper's layout: one fully "
            "fine-tuned base copy per category).",
            "choices": ["lora", "full"],
        },
    )
    trunk_layers: int = field(
        default=0,
        metadata={
            "help": "Shared trunk: the bottom N layers carry no adapters and run once per sequence (0: adapters "
            "in every layer, the paper's design)."
        },
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "Backbone dtype: float32, bfloat16, float16 or auto.",
            "choices": ["float32", "bfloat16", "float16", "auto"],
        },
    )
    save_base_model: bool = field(
        default=False, metadata={"help": "Also save the backbone weights inside the output folder (base/)."}
    )

    def __post_init__(self):
        self.categories = _parse_mapping_string(self.categories)
        if self.model_name_or_path is None and self.tiny_backbone is None:
            raise ValueError(
                "no backbone: set model_name_or_path (a local path or hub id of a pretrained model), or "
                "tiny_backbone: llama for a tiny random test backbone"
            )
        if self.model_name_or_path is not None and self.tiny_backbone is not None:
            raise ValueError("set either model_name_or_path or tiny_backbone, not both")
        if self.router_mode == "trunk" and not self.trunk_layers:
            raise ValueError(
                "router_mode: trunk reads the shared trunk's output and needs trunk_layers > 0 (e.g. --trunk_layers "
                "22 on a 30-layer backbone); without a trunk use router_mode: lora or linear"
            )


@dataclass
class DMoERMDataArguments:
    r"""The training data: human-ranked pairs, capability labels, and how the human pairs are split.

    Parameters:
        dataset_path (`str`):
            Human preference data: an mtmc-rlhf ranked file (`src`, `tgt`, `response`, `rank`, `label`), a TRL
            preference file with a `category` column (.jsonl/.json/.parquet), or a directory of them.
        dataset_name (`str`, *optional*):
            Instead of `dataset_path`, as in TRL's scripts: a dataset loaded with `datasets.load_dataset` (a hub id,
            or a local folder of data files), with `dataset_config` and `dataset_train_split` (default `"train"`).
        category_column (`str`, *optional*):
            Take each record's category from this column (e.g. `source`) instead of `category` / `label`.
        category_map (`str` or `dict`, *optional*):
            Map the category column's values to the model's categories: a mapping (in YAML), a YAML/JSON file of
            one, or `"value=category,value=category"`. Unmapped values leave the pair uncategorised (counted; routed
            by the trained router when `route_unlabeled`).
        categorize_with_judge (`bool`, defaults to `False`):
            Pairs without a category get one from the LLM judge of `label_config`: each distinct prompt is classified
            twice, with the category list in two orders, and kept when both answers agree (cached; counts and the
            consistency in `labels/categories.jsonl` and the training summary). The rest stay uncategorised
            (`route_unlabeled`).
        capability_labels_path (`str`, *optional*):
            Capability preference labels (the `capability_pairs.jsonl` written by `dmoerm label`). Without it,
            phase 2 is skipped (with a warning) and each expert keeps its phase-1 initialisation.
        validation_split_ratio (`float`, defaults to `0.1`):
            Fraction of each category's conversations held out for validation (early stopping, best checkpoint,
            reported accuracy). Split by conversation, so the pairs of one conversation never straddle splits.
        task_split_ratio (`float`, defaults to `0.6`):
            Of the remaining conversations, the fraction for phase 1 (task); the rest (40%) trains phase 3.
        min_capability_labels (`int`, defaults to `8`):
            A capability with fewer training labels is skipped (counted, warned): its expert keeps the phase-1
            initialisation.
        route_unlabeled (`bool`, defaults to `True`):
            Records without a category are assigned one by the trained router (the paper's procedure) and join
            that category's splits. With `False` they are dropped (counted).
        skip_invalid_records (`bool`, defaults to `False`):
            Skip malformed records (counted and reported) instead of stopping at the first one.
        lower_rank_is_better (`bool`, defaults to `True`):
            In ranked records, rank 1 beats rank 2 (the mtmc-rlhf convention).
        skip_empty_categories (`bool`, defaults to `False`):
            A category of the model with no human pairs stops the run (its reward would be untrained) unless this
            is set; then its stages are skipped, counted and reported.
        label_config (`str`, *optional*):
            The optional labeling step: a YAML file of `dmoerm label` options (`model`, `base_url`, `mode`,
            `api_key_env`, `concurrency`, budgets...). When `capability_labels_path` is not given, the pipeline first
            labels `dataset_path` with the model's category set into `<output_dir>/labels/` (resumable through the
            labeler's cache) and trains phase 2 on the result. `data`, `output` and `categories` are filled in.
    """

    dataset_path: str | None = field(
        default=None,
        metadata={"help": "Human-ranked data: mtmc-rlhf ranked or TRL preference file(s) with a category column."},
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Instead of dataset_path: a datasets.load_dataset name (hub id or local data folder)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "The split of dataset_name to train on."})
    category_column: str | None = field(
        default=None, metadata={"help": "Take the category from this column (e.g. source) instead of category."}
    )
    category_map: str | None = field(
        default=None,
        metadata={"help": "Column value -> category: a YAML/JSON file, 'value=category,...', or a mapping (YAML)."},
    )
    categorize_with_judge: bool = field(
        default=False,
        metadata={"help": "Uncategorised pairs get a category from the judge of label_config (two orders, agreed)."},
    )
    capability_labels_path: str | None = field(
        default=None, metadata={"help": "Capability labels (capability_pairs.jsonl from `dmoerm label`)."}
    )
    validation_split_ratio: float = field(
        default=0.1, metadata={"help": "Fraction of each category's conversations held out for validation."}
    )
    task_split_ratio: float = field(
        default=0.6, metadata={"help": "Fraction of the remaining conversations for phase 1 (the rest: phase 3)."}
    )
    min_capability_labels: int = field(
        default=8, metadata={"help": "Capabilities with fewer labels are skipped (expert keeps its phase-1 init)."}
    )
    route_unlabeled: bool = field(
        default=True, metadata={"help": "Assign a category to uncategorised records with the trained router."}
    )
    skip_invalid_records: bool = field(
        default=False, metadata={"help": "Skip malformed records (counted) instead of stopping."}
    )
    lower_rank_is_better: bool = field(
        default=True, metadata={"help": "Rank 1 beats rank 2 in ranked records (mtmc-rlhf convention)."}
    )
    skip_empty_categories: bool = field(
        default=False, metadata={"help": "Skip (and report) categories without human pairs instead of stopping."}
    )
    label_config: str | None = field(
        default=None,
        metadata={
            "help": "Optional labeling step: a YAML of `dmoerm label` options (judge model, base_url, mode...). "
            "Used when capability_labels_path is not set; labels go to <output_dir>/labels/."
        },
    )

    def __post_init__(self):
        if self.dataset_path and self.dataset_name:
            raise ValueError(
                f"both dataset_path ({self.dataset_path}) and dataset_name ({self.dataset_name}) are set: give one "
                "(on the command line, --dataset_path '' clears a path set in the YAML config)"
            )
        if self.categorize_with_judge and not self.label_config:
            raise ValueError("categorize_with_judge needs label_config (the YAML naming the judge endpoint and model)")
        if self.category_map is not None:
            from ..data import parse_category_map

            self.category_map = parse_category_map(_parse_mapping_string(self.category_map))
        if not 0.0 <= self.validation_split_ratio < 1.0:
            raise ValueError(f"validation_split_ratio must be in [0, 1), got {self.validation_split_ratio}")
        if not 0.0 < self.task_split_ratio < 1.0:
            raise ValueError(
                f"task_split_ratio must be in (0, 1) (phase 1 and phase 3 both need data), got {self.task_split_ratio}"
            )
        if self.min_capability_labels < 1:
            raise ValueError(f"min_capability_labels must be >= 1, got {self.min_capability_labels}")


@dataclass
class DMoERMTrainingConfig(RewardConfig):
    r"""Training arguments of the whole pipeline: a :class:`trl.RewardConfig` plus per-phase values.

    All `TrainingArguments`/`RewardConfig` fields apply to every stage (batch sizes, `report_to`, `seed`, `bf16`,
    `logging_steps`, `save_total_limit`, `max_length` ...). Stage outputs go to `<output_dir>/stages/<stage>/`; the
    final model is saved into `output_dir` itself (`from_pretrained(output_dir)` loads it).

    Parameters:
        stages (`str`, defaults to `"all"`):
            Which stage kinds to run, comma separated: `router`, `task`, `capability`, `aggregator` (or `all`);
            `baseline` adds the single-RM baseline. Stages already finished are always skipped.
        categories_to_train (`str`, *optional*):
            Comma-separated category names: train only these (others are skipped, reported).
        router_learning_rate, task_learning_rate, capability_learning_rate, aggregator_learning_rate (`float`):
            Per-phase learning rates (defaults 5e-5, 5e-5, 5e-5, 1e-4; see the module docstring for the paper's).
        router_num_train_epochs, task_num_train_epochs, capability_num_train_epochs,
        aggregator_num_train_epochs (`float`, *optional*):
            Per-phase epochs (default: `num_train_epochs`).
        early_stopping_patience (`int`, *optional*, defaults to `2`):
            Stop a stage after this many evaluations without a better validation accuracy (`None`: never).
        cache_expert_features (`bool`, defaults to `True`):
            Phase 3: compute the frozen experts' features once (stored in the stage folder) and train the MLP on
            them; later epochs then cost a small fraction of the first. `False` recomputes them every step.
        feature_batch_size (`int`, defaults to `32`):
            Batch size for computing the phase-3 feature cache.
        aggregator_min_validation_pairs (`int`, defaults to `32`):
            Phase 3 selects its best checkpoint on validation loss (and stops early) only when the category's
            validation split has at least this many pairs; with fewer it trains its fixed schedule and keeps the last
            weights (on a handful of pairs, the "best" epoch is noise).
        calibrate_rewards (`bool`, defaults to `True`):
            After phase 3, standardise each category's reward on its training texts (mean 0, std 1; stored with the
            aggregator), so that all categories share one scale (docs/training.md). `False`: raw aggregator
            outputs (the saved model's `config.calibrate_rewards` is then `False`).
        train_baseline (`bool`, defaults to `False`):
            Also train the baseline single reward model (TRL RewardTrainer on AutoModelForSequenceClassification,
            same backbone and data) into `<output_dir>/baseline`.
        baseline_learning_rate (`float`, defaults to `5e-5`), baseline_num_train_epochs (`float`, *optional*),
        baseline_use_lora (`bool`, defaults to `True`):
            The baseline's learning rate, epochs, and whether it trains a LoRA adapter (same r/alpha as DMoERM)
            plus its score head (`True`) or all weights (`False`).
        restart (`bool`, defaults to `False`):
            Ignore finished stages and checkpoints in `output_dir` and start over (they are deleted first).
        push_to_hub (`bool`, defaults to `False`), hub_model_id, hub_private_repo, hub_token, hub_revision:
            At the end of the run, upload the trained DMoERM (model card, adapters, heads, tokenizer; one commit) to
            `hub_model_id` (default: the output folder's name). Refused before training when a reader could not get
            the base: set `save_base_model: true` or use a hub id as `model_name_or_path`. The stages themselves
            never push.
        torch_num_threads (`int`, *optional*):
            `torch.set_num_threads` for the run. Tiny models on CPU train faster with 1 thread (thread start-up
            costs more than their matrix products), especially on a busy machine (docs/benchmarks.md, "Training").
    """

    # RewardConfig/TrainingArguments defaults changed for the pipeline
    output_dir: str | None = field(default=None, metadata={"help": "The run folder; the final model is saved here."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs of each stage (unless set per phase)."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate on the validation split."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to write a resumable stage checkpoint."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept per stage (best is kept)."})
    load_best_model_at_end: bool = field(
        default=True, metadata={"help": "Finish each stage with its checkpoint of best validation accuracy."}
    )
    metric_for_best_model: str | None = field(
        default="eval_accuracy", metadata={"help": "Validation metric for best-checkpoint selection."}
    )
    greater_is_better: bool | None = field(default=True, metadata={"help": "Higher metric_for_best_model is better."})
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Deprecated alias of activation_checkpointing (off by default here, unlike TRL)."},
    )
    bf16: bool | None = field(default=False, metadata={"help": "bf16 mixed precision (GPU, or CPU with use_cpu)."})
    max_length: int | None = field(
        default=1024,
        metadata={"help": "Longest tokenized sequence; longer pairs are dropped (counted and reported)."},
    )

    # Pipeline
    stages: str = field(
        default="all",
        metadata={"help": "Stage kinds to run: all, or a comma list of router,task,capability,aggregator,baseline."},
    )
    categories_to_train: str | None = field(
        default=None, metadata={"help": "Comma-separated categories to train (default: all)."}
    )
    router_learning_rate: float = field(default=5e-5, metadata={"help": "Router learning rate (LoRA + head)."})
    task_learning_rate: float = field(
        default=5e-5, metadata={"help": "Phase-1 learning rate (task LoRA + head; paper: 1e-7 for full FT)."}
    )
    capability_learning_rate: float = field(
        default=5e-5, metadata={"help": "Phase-2 learning rate (expert LoRA + head; paper: 5e-5)."}
    )
    aggregator_learning_rate: float = field(
        default=1e-4, metadata={"help": "Phase-3 learning rate (aggregator MLP; paper: 1e-6 at batch size 1)."}
    )
    router_num_train_epochs: float | None = field(default=None, metadata={"help": "Router epochs."})
    task_num_train_epochs: float | None = field(default=None, metadata={"help": "Phase-1 epochs."})
    capability_num_train_epochs: float | None = field(default=None, metadata={"help": "Phase-2 epochs."})
    aggregator_num_train_epochs: float | None = field(default=None, metadata={"help": "Phase-3 epochs."})
    early_stopping_patience: int | None = field(
        default=2, metadata={"help": "Evaluations without improvement before a stage stops (None: never)."}
    )
    cache_expert_features: bool = field(
        default=True, metadata={"help": "Phase 3: compute frozen expert features once and train the MLP on them."}
    )
    feature_batch_size: int = field(default=32, metadata={"help": "Batch size for the phase-3 feature cache."})
    aggregator_min_validation_pairs: int = field(
        default=32,
        metadata={
            "help": "Phase 3: fewest validation pairs for best-checkpoint selection on validation loss; below "
            "it a fixed schedule (all epochs, last weights)."
        },
    )
    calibrate_rewards: bool = field(
        default=True,
        metadata={
            "help": "Standardise each category's reward on its training texts after phase 3 (one scale for "
            "all categories); false: raw aggregator outputs."
        },
    )
    train_baseline: bool = field(
        default=False, metadata={"help": "Also train the single-RM baseline into <output_dir>/baseline."}
    )
    baseline_learning_rate: float = field(default=5e-5, metadata={"help": "Baseline learning rate."})
    baseline_num_train_epochs: float | None = field(default=None, metadata={"help": "Baseline epochs."})
    baseline_use_lora: bool = field(
        default=True, metadata={"help": "Baseline trains LoRA (same r/alpha) + score head; False: all weights."}
    )
    restart: bool = field(default=False, metadata={"help": "Delete finished stages/checkpoints and start over."})
    torch_num_threads: int | None = field(
        default=None,
        metadata={"help": "CPU threads of torch (torch.set_num_threads); tiny models train fastest with 1."},
    )

    def __post_init__(self):
        if self.output_dir is None:
            raise ValueError("output_dir is required: the folder the run writes its stages and final model to")
        super().__post_init__()
        kinds = [kind.strip() for kind in self.stages.split(",") if kind.strip()]
        unknown = [kind for kind in kinds if kind not in (*STAGE_KINDS, "all")]
        if unknown or not kinds:
            raise ValueError(
                f"stages={self.stages!r}: unknown stage kind(s) {unknown}; use 'all' or a comma list of {STAGE_KINDS}"
            )

    @property
    def stage_kinds(self) -> list[str]:
        kinds = [kind.strip() for kind in self.stages.split(",") if kind.strip()]
        selected = ["label", "router", "task", "capability", "aggregator"] if "all" in kinds else []
        selected += [kind for kind in kinds if kind != "all" and kind not in selected]
        if self.train_baseline and "baseline" not in selected:
            selected.append("baseline")
        return selected

    def phase_value(self, kind: str, name: str):
        """``learning_rate`` or ``num_train_epochs`` of a phase (falls back to the shared value)."""
        value = getattr(self, f"{kind}_{name}", None)
        return getattr(self, name) if value is None else value

    def to_json_dict(self) -> dict[str, Any]:
        return json.loads(self.to_json_string())
