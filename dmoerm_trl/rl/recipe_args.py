"""Script arguments shared by the RL recipes (``recipes/ppo.py``, ``grpo.py``, ``rloo.py``, ``best_of_n.py``) and
the ``dmoerm ppo|grpo|rloo|bon`` commands, and the loaders they use: prompts (with a held-out split and a length
check), reward models (a DMoERM, any HF sequence-classification RM, a saved ensemble, or several paths combined
into an ensemble), the value model.

The dataclasses use ``metadata={"help": ...}`` so ``TrlParser`` gives both CLI flags and YAML configs.

Example:
    >>> from trl import TrlParser, GRPOConfig
    >>> from dmoerm_trl.rl.recipe_args import RLScriptArguments
    >>> script_args, grpo_args = TrlParser((RLScriptArguments, GRPOConfig)).parse_args_and_config()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..utils.io import atomic_write_text

logger = logging.getLogger(__name__)


@dataclass
class RLScriptArguments:
    """Models and data of an RL recipe.

    Models:
        policy_model_path, reward_model_paths, ensemble_mode, uwo_lambda, reward_tokenizer_path, value_model_path,
        gold_model_path
    Data:
        dataset_path, prompt_column, num_heldout_prompts, max_prompt_length, max_train_prompts
    Gold tracking:
        gold_eval_steps, gold_samples_per_prompt, gold_max_new_tokens, proxy_name
    GRPO/RLOO:
        extra_reward_functions
    """

    policy_model_path: str = field(default=None, metadata={"help": "The policy: a causal LM folder or hub id."})
    reward_model_paths: list[str] = field(
        default_factory=list,
        metadata={
            "help": "The proxy reward model(s): a saved DMoERM, any HF sequence-classification reward model, or a "
            "saved RewardEnsemble. Several paths are combined into a RewardEnsemble (see ensemble_mode)."
        },
    )
    ensemble_mode: str = field(
        default="mean",
        metadata={"help": "How several reward models combine: mean, wco (min) or uwo (mean - lambda var)."},
    )
    uwo_lambda: float = field(default=0.5, metadata={"help": "Variance penalty of the uwo ensemble mode."})
    reward_tokenizer_path: str | None = field(
        default=None, metadata={"help": "The reward model's tokenizer (default: the reward model's folder)."}
    )
    value_model_path: str | None = field(
        default=None,
        metadata={
            "help": "PPO value model (a sequence-classification model). Default: the reward model's folder for a "
            "plain HF reward model, else the policy loaded with a fresh 1-output head."
        },
    )
    gold_model_path: str | None = field(
        default=None,
        metadata={"help": "A gold reward model scored beside the proxy on held-out prompts (overoptimization)."},
    )
    dataset_path: str = field(
        default=None,
        metadata={
            "help": "Prompts: a .jsonl/.json/.parquet/.csv file with a prompt column (text or chat messages), or a "
            "preference file read by dmoerm_trl.data.load_preference_pairs."
        },
    )
    prompt_column: str = field(default="prompt", metadata={"help": "The column holding the prompts."})
    num_heldout_prompts: int = field(
        default=8, metadata={"help": "Prompts held out from training for the gold-reward evaluation."}
    )
    max_prompt_length: int = field(
        default=256, metadata={"help": "Prompts longer than this (policy tokens) are skipped, counted and reported."}
    )
    max_train_prompts: int | None = field(default=None, metadata={"help": "Use at most this many training prompts."})
    gold_eval_steps: int = field(default=10, metadata={"help": "Evaluate proxy/gold/KL every this many steps."})
    gold_samples_per_prompt: int = field(default=2, metadata={"help": "Samples per held-out prompt per evaluation."})
    gold_max_new_tokens: int = field(default=32, metadata={"help": "Tokens sampled per held-out prompt."})
    proxy_name: str | None = field(default=None, metadata={"help": "Name of the proxy in the overoptimization CSV."})
    extra_reward_functions: list[str] = field(
        default_factory=list,
        metadata={
            "help": "GRPO/RLOO: more reward functions as 'module:function' (e.g. "
            "dmoerm_trl.rl.rewards:length_penalty), weighted with reward_weights (the reward model comes first)."
        },
    )

    def __post_init__(self):
        if self.ensemble_mode not in ("mean", "wco", "uwo"):
            raise ValueError(f"ensemble_mode must be mean, wco or uwo, got {self.ensemble_mode!r}")
        if isinstance(self.reward_model_paths, str):
            self.reward_model_paths = [self.reward_model_paths]


# ------------------------------------------------------------------------------------------------- models
def load_policy_tokenizer(path: str, padding_side: str = "left"):
    from transformers import AutoTokenizer

    from ..paths import require_model

    require_model(path, "policy_model_path")

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side=padding_side)
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"the policy tokenizer at {path} has no pad token; add one (e.g. tokenizer.add_special_tokens("
            "{'pad_token': '[PAD]'}), resize the policy embeddings and save) before RL"
        )
    return tokenizer


def _has_tokenizer(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return folder.is_dir() and any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))


def load_reward_model(path: str, tokenizer_path: str | None = None):
    """``(model, tokenizer)`` for a saved DMoERM, a saved ``RewardEnsemble`` or any HF sequence-classification RM.

    A causal-LM checkpoint (no classification head) is loaded with a new, untrained 1-output head, with a warning.
    The tokenizer is ``None`` for an ensemble whose members have different tokenizers (text paths only).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    import dmoerm_trl  # noqa: F401  (registers DMoERM with the Auto classes)

    from ..paths import require_model
    from .checks import check_reward_model_ready, check_tokenizers_match
    from .ensemble import RewardEnsemble, is_saved_ensemble

    require_model(path, "reward model path")

    if is_saved_ensemble(path):
        model = RewardEnsemble.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path) if tokenizer_path else None
        if tokenizer is None and model.tokenizers:
            tokenizer = model.tokenizers[0]
            for other in model.tokenizers[1:]:
                try:
                    check_tokenizers_match(tokenizer, other)
                except ValueError:
                    tokenizer = None  # members disagree: text paths only
                    break
        return model, tokenizer
    config = AutoConfig.from_pretrained(path)
    architectures = getattr(config, "architectures", None) or []
    kwargs = {}
    if config.model_type != "dmoerm" and not any("SequenceClassification" in a for a in architectures):
        logger.warning("%s has no sequence-classification head: loading it with a new, untrained 1-output head", path)
        kwargs["num_labels"] = 1
    model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    check_reward_model_ready(model, name=f"reward model {path}")
    tokenizer_source = tokenizer_path or path
    if not tokenizer_path and not _has_tokenizer(path):
        base = getattr(model.config, "base_model_name_or_path", None)
        tokenizer_source = base if base and _has_tokenizer(base) else path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    return model, tokenizer


def build_reward(paths: list[str], mode: str = "mean", uwo_lambda: float = 0.5, tokenizer_path: str | None = None):
    """One reward model, or a ``RewardEnsemble`` of several (``mode``); returns ``(model, tokenizer)``.

    The tokenizer is ``None`` when an ensemble's members use different tokenizers (text paths only).
    """
    from .checks import check_tokenizers_match
    from .ensemble import RewardEnsemble

    if not paths:
        raise ValueError("set reward_model_paths (a DMoERM, an HF reward model or several for an ensemble)")
    if len(paths) == 1:
        return load_reward_model(paths[0], tokenizer_path)
    loaded = [load_reward_model(p) for p in paths]
    tokenizers = [t for _, t in loaded]
    ensemble = RewardEnsemble([m for m, _ in loaded], mode=mode, uwo_lambda=uwo_lambda, tokenizers=tokenizers)
    ensemble.config._name_or_path = f"ensemble_{mode}"
    shared = tokenizers[0]
    for other in tokenizers[1:]:
        try:
            check_tokenizers_match(shared, other)
        except ValueError:
            shared = None
            break
    return ensemble, shared


def build_proxy_reward(script_args):
    """The proxy reward of a recipe: one reward model, or a ``RewardEnsemble`` of several; ``(model, tokenizer)``."""
    return build_reward(
        script_args.reward_model_paths,
        script_args.ensemble_mode,
        script_args.uwo_lambda,
        script_args.reward_tokenizer_path,
    )


def parse_proxy_spec(spec: str) -> tuple[str, str, list[str]]:
    """``"name=path"`` or ``"name=mode:path1,path2,..."`` (an ensemble) -> ``(name, mode, paths)``."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"proxy {spec!r} must be 'name=path' or 'name=mean|wco|uwo:path1,path2,...'")
    mode = "mean"
    head, colon, tail = rest.partition(":")
    if colon and head in ("mean", "wco", "uwo"):
        mode, rest = head, tail
    paths = [p for p in rest.split(",") if p]
    if not paths:
        raise ValueError(f"proxy {spec!r} names no reward model path")
    return name, mode, paths


def load_value_model(script_args, reward_model):
    """PPO's value model: ``value_model_path``; else the reward model's own checkpoint for a plain HF RM; else the
    policy with a new 1-output head."""
    from transformers import AutoModelForSequenceClassification

    if script_args.value_model_path:
        return load_reward_model(script_args.value_model_path)[0]
    if getattr(reward_model.config, "model_type", "") not in ("dmoerm", "dmoerm_reward_ensemble"):
        return load_reward_model(script_args.reward_model_paths[0])[0]
    return AutoModelForSequenceClassification.from_pretrained(script_args.policy_model_path, num_labels=1)


# ------------------------------------------------------------------------------------------------ prompts
def load_prompts(path: str, prompt_column: str = "prompt") -> list:
    """Prompts from a data file: a ``prompt_column`` of strings or chat messages; duplicates removed (order kept)."""
    from datasets import load_dataset

    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    suffix = file.suffix.lower()
    builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(suffix)
    if builder is None:
        raise ValueError(f"{path}: unsupported prompt file type {suffix!r}; use .jsonl, .json, .parquet or .csv")
    dataset = None
    try:
        dataset = load_dataset(builder, data_files=str(file), split="train")
    except (ValueError, TypeError, OSError) as err:  # e.g. records with mixed schemas (mtmc-rlhf ranked lists)
        load_error = err
    if dataset is None or prompt_column not in dataset.column_names:
        try:
            from dmoerm_trl.data import load_preference_pairs

            dataset = load_preference_pairs(str(file))
        except (ImportError, ValueError, KeyError, TypeError, FileNotFoundError) as err:
            columns = dataset.column_names if dataset is not None else f"unreadable: {load_error}"
            raise ValueError(
                f"{path} has no {prompt_column!r} column ({columns}) and is not a preference file "
                f"dmoerm_trl.data can read ({err}); set prompt_column"
            ) from None
        prompt_column = "prompt"
    prompts, seen = [], set()
    for row, prompt in enumerate(dataset[prompt_column]):
        if (
            prompt is None
            or (isinstance(prompt, str) and not prompt.strip())
            or (isinstance(prompt, list) and not prompt)
        ):
            raise ValueError(f"{path}, row {row}: empty {prompt_column!r}; remove the row or fill it")
        key = repr(prompt)
        if key not in seen:
            seen.add(key)
            prompts.append(prompt)
    return prompts


def prompt_token_length(tokenizer, prompt) -> int:
    from .scoring import is_conversational_prompt

    if is_conversational_prompt(prompt):
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return len(tokenizer(prompt)["input_ids"])


def filter_long_prompts(prompts: list, tokenizer, max_prompt_length: int, source: str = "prompts") -> list:
    """Drop prompts longer than ``max_prompt_length`` tokens; the count is logged and printed (not silent)."""
    kept = [p for p in prompts if prompt_token_length(tokenizer, p) <= max_prompt_length]
    skipped = len(prompts) - len(kept)
    if skipped:
        message = (
            f"{source}: skipped {skipped} of {len(prompts)} prompts longer than max_prompt_length={max_prompt_length}"
        )
        logger.warning(message)
        print(message)
    if not kept:
        raise ValueError(f"{source}: every prompt is longer than max_prompt_length={max_prompt_length}")
    return kept


def load_prompt_splits(script_args, tokenizer, policy, max_new_tokens: int) -> tuple[list, list]:
    """``(train_prompts, heldout_prompts)``: loaded, length-checked against the policy, shuffled with a fixed seed."""
    from .checks import max_positions

    if not script_args.dataset_path:
        raise ValueError("set dataset_path (a file of prompts)")
    limit = max_positions(policy)
    if limit is not None and script_args.max_prompt_length + max_new_tokens > limit:
        raise ValueError(
            f"max_prompt_length={script_args.max_prompt_length} + {max_new_tokens} new tokens exceeds the policy's "
            f"{limit} positions; lower max_prompt_length or the completion/response length"
        )
    prompts = load_prompts(script_args.dataset_path, script_args.prompt_column)
    prompts = filter_long_prompts(prompts, tokenizer, script_args.max_prompt_length, script_args.dataset_path)
    random.Random(0).shuffle(prompts)
    heldout = prompts[: script_args.num_heldout_prompts] if script_args.num_heldout_prompts else []
    train = prompts[len(heldout) :]
    if script_args.max_train_prompts:
        train = train[: script_args.max_train_prompts]
    if not train:
        raise ValueError(
            f"{script_args.dataset_path}: no training prompts left after holding out {len(heldout)}; add prompts or "
            "lower num_heldout_prompts"
        )
    return train, heldout


# ------------------------------------------------------------------------------------------------ helpers
def encode_prompt(tokenizer, prompt) -> list[int]:
    from .scoring import is_conversational_prompt

    if is_conversational_prompt(prompt):
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def make_gold_callback(script_args, heldout_prompts, gold, proxy_model, proxy_tokenizer, policy_tokenizer):
    from transformers import GenerationConfig

    from .gold_callback import GoldRewardCallback
    from .scoring import RewardScorer

    if not heldout_prompts:
        raise ValueError("gold_model_path is set but there are no held-out prompts: set num_heldout_prompts > 0")
    proxy = RewardScorer(proxy_model, proxy_tokenizer) if proxy_tokenizer is not None else RewardScorer(proxy_model)
    return GoldRewardCallback(
        heldout_prompts,
        gold=gold,
        proxy=proxy,
        tokenizer=policy_tokenizer,
        eval_steps=script_args.gold_eval_steps,
        samples_per_prompt=script_args.gold_samples_per_prompt,
        generation_config=GenerationConfig(
            max_new_tokens=script_args.gold_max_new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0
        ),
        proxy_name=script_args.proxy_name,
    )


def write_summary(training_args, trainer, algorithm: str, start: float, callbacks) -> dict:
    summary = {
        "algorithm": algorithm,
        "wall_time_s": round(time.time() - start, 2),
        "global_step": trainer.state.global_step,
        "is_main_process": trainer.accelerator.is_main_process,
        "last_log": next(
            (h for h in reversed(trainer.state.log_history) if "gold/reward" not in h and "train_runtime" not in h), {}
        ),
    }
    for callback in callbacks:
        records = getattr(callback, "records", None)
        if records:
            summary["overoptimization"] = records
            if callback.fits:
                summary["fits"] = [f.summary() for f in callback.fits]
    if trainer.accelerator.is_main_process:
        path = Path(training_args.output_dir) / "run_summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(summary, indent=2, default=str))
    return summary
