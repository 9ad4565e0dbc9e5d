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

from ..paths import first_line, unloadable_model
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
        check_ensemble_mode(self.ensemble_mode)
        if self.max_train_prompts is not None and self.max_train_prompts < 1:
            raise ValueError(
                f"max_train_prompts must be >= 1 (leave it unset for every prompt), got {self.max_train_prompts}"
            )
        if isinstance(self.reward_model_paths, str):
            self.reward_model_paths = [self.reward_model_paths]


# ------------------------------------------------------------------------------------------------- models
def check_ensemble_mode(mode: str) -> str:
    """``mode`` if it is a :class:`RewardEnsemble` mode, else a ``ValueError`` naming ``ensemble_mode``.

    Example:
        >>> check_ensemble_mode("wco")
        'wco'
    """
    from .ensemble import ENSEMBLE_MODES

    if mode not in ENSEMBLE_MODES:
        raise ValueError(
            f"ensemble_mode must be {', '.join(ENSEMBLE_MODES[:-1])} or {ENSEMBLE_MODES[-1]}, got {mode!r}"
        )
    return mode


def load_policy_tokenizer(path: str, padding_side: str = "left"):
    from transformers import AutoTokenizer

    from ..paths import require_model

    require_model(path, "policy_model_path")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, padding_side=padding_side)
    except OSError as error:  # e.g. "runs/sft": not a local folder, and not a hub id in the cache while offline
        raise unloadable_model("policy_model_path", path, error) from None
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"the policy tokenizer at {path} has no pad token; add one (e.g. tokenizer.add_special_tokens("
            "{'pad_token': '[PAD]'}), resize the policy embeddings and save) before RL"
        )
    return tokenizer


def _has_tokenizer(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return folder.is_dir() and any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))


def load_reward_model(
    path: str, tokenizer_path: str | None = None, flag: str = "reward model path", new_head: bool = False
):
    """``(model, tokenizer)`` for a saved DMoERM, a saved ``RewardEnsemble`` or any HF sequence-classification RM.

    A checkpoint without a sequence-classification head (e.g. a causal LM) is refused with a ``ValueError`` naming
    ``flag``: its reward would come from a random, untrained head. ``new_head=True`` (PPO's value model, which PPO
    trains) loads it with a new 1-output head instead, with a warning. The tokenizer is ``None`` for an ensemble whose
    members have different tokenizers (text paths only).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    import dmoerm_trl  # noqa: F401  (registers DMoERM with the Auto classes)

    from ..paths import require_model
    from .checks import check_reward_model_ready, check_tokenizers_match
    from .ensemble import RewardEnsemble, is_saved_ensemble

    require_model(path, flag)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"{flag} {path} has no config.json, so it is not a saved model; pass a folder written by save_pretrained"
        )

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
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as error:  # e.g. "org/typo": not a local folder, and not a hub id in the cache while offline
        raise unloadable_model(flag, path, error) from None
    architectures = getattr(config, "architectures", None) or []
    kwargs = {}
    if config.model_type != "dmoerm" and not any("SequenceClassification" in a for a in architectures):
        if not new_head:
            raise ValueError(
                f"{flag} {path} is not a reward model ({', '.join(architectures) or config.model_type} has no "
                "sequence-classification head, so its rewards would come from a random, untrained head); pass a "
                "trained reward model: a DMoERM folder (dmoerm train) or an AutoModelForSequenceClassification "
                "checkpoint with num_labels=1"
            )
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


def build_reward(
    paths: list[str],
    mode: str = "mean",
    uwo_lambda: float = 0.5,
    tokenizer_path: str | None = None,
    flag: str = "reward_model_paths",
):
    """One reward model, or a ``RewardEnsemble`` of several (``mode``); returns ``(model, tokenizer)``.

    The tokenizer is ``None`` when an ensemble's members use different tokenizers (text paths only).
    """
    from .checks import check_tokenizers_match
    from .ensemble import RewardEnsemble

    if not paths:
        raise ValueError("set reward_model_paths (a DMoERM, an HF reward model or several for an ensemble)")
    if len(paths) == 1:
        return load_reward_model(paths[0], tokenizer_path, flag=flag)
    loaded = [load_reward_model(p, flag=flag) for p in paths]
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
    from .ensemble import ENSEMBLE_MODES

    if colon and head in ENSEMBLE_MODES:
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
        return load_reward_model(script_args.value_model_path, flag="value_model_path", new_head=True)[0]
    if getattr(reward_model.config, "model_type", "") not in ("dmoerm", "dmoerm_reward_ensemble"):
        return load_reward_model(script_args.reward_model_paths[0], new_head=True)[0]
    return AutoModelForSequenceClassification.from_pretrained(script_args.policy_model_path, num_labels=1)


# ------------------------------------------------------------------------------------------------ prompts
def load_prompts(path: str, prompt_column: str = "prompt") -> list:
    """Prompts from a data file: a ``prompt_column`` of strings or chat messages; duplicates removed (order kept).

    A file without that column is read as preference data (:func:`dmoerm_trl.data.load_preference_pairs`: mtmc-rlhf
    ranked lists, TRL pairs). A record that is not JSON, has no prompt or holds something other than a string or a
    list of ``{"role", "content"}`` messages raises a ``ValueError`` naming the file, the line and the fix.

    Example:
        >>> import json, tempfile
        >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        ...     _ = f.write(json.dumps({"prompt": "Say hi."}) + "\\n")
        ...     _ = f.write(json.dumps({"prompt": [{"role": "user", "content": "What is 2+2?"}]}) + "\\n")
        >>> load_prompts(f.name)
        ['Say hi.', [{'role': 'user', 'content': 'What is 2+2?'}]]
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    if file.is_dir():
        raise ValueError(f"prompt file {path} is a folder; pass a .jsonl, .json, .parquet or .csv file")
    suffix = file.suffix.lower()
    if suffix not in (".jsonl", ".json", ".parquet", ".csv"):
        raise ValueError(f"{path}: unsupported prompt file type {suffix!r}; use .jsonl, .json, .parquet or .csv")
    records = _read_prompt_records(file)
    if not records:
        raise ValueError(
            f"{path} holds no records; write one JSON object per line with a {prompt_column!r} field "
            '(a string or a list of {"role": ..., "content": ...} messages)'
        )
    if not any(isinstance(record, dict) and prompt_column in record for _, record in records):
        return _prompts_from_preference_file(path, records, prompt_column)
    prompts, seen = [], set()
    for location, record in records:
        prompt = _checked_prompt(path, location, record, prompt_column)
        key = repr(prompt)
        if key not in seen:
            seen.add(key)
            prompts.append(prompt)
    return prompts


def _read_prompt_records(file: Path) -> list[tuple[str, object]]:
    """``[(location, record), ...]`` of a prompt file; undecodable JSON raises the error naming its line."""
    if file.suffix.lower() == ".csv":
        from datasets import load_dataset

        try:
            dataset = load_dataset("csv", data_files=str(file), split="train")
        except (ValueError, TypeError, OSError) as err:
            raise ValueError(
                f"{file}: not a readable CSV file ({first_line(err)}); write a header row and one prompt per row"
            ) from None
        return [(f"row {index + 1}", record) for index, record in enumerate(dataset)]
    from ..data.readers import _iter_records

    records = []
    for _, location, record in _iter_records(str(file)):
        if isinstance(record, Exception):
            raise record
        records.append((location, record))
    return records


def _checked_prompt(path: str, location: str, record, column: str):
    """The prompt of one record, or a ``ValueError`` naming the file, the record and the fix."""
    where = f"{path}, {location}"
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a {type(record).__name__}, not a JSON object; write one object per line")
    prompt = record.get(column)
    if prompt is None:
        raise ValueError(f"{where}: no {column!r} field; add it or remove the record")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{where}: empty {column!r}; remove the record or fill it")
        return prompt
    if not isinstance(prompt, list):
        raise ValueError(
            f"{where}: {column!r} is not text but {type(prompt).__name__} ({json.dumps(prompt)[:40]}); give a string or a list of "
            '{"role": ..., "content": ...} messages'
        )
    if not prompt:
        raise ValueError(f"{where}: empty {column!r}; remove the record or fill it")
    for index, message in enumerate(prompt):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), (str, list))
        ):
            raise ValueError(
                f'{where}: {column!r} message {index} is not a {{"role": ..., "content": ...}} message '
                f"({json.dumps(message, ensure_ascii=False)[:80]}); give each message a string role and content"
            )
    return prompt


def _prompts_from_preference_file(path: str, records: list, column: str) -> list:
    """The prompts of a file without a prompt column, read as preference data (mtmc-rlhf ranked lists, TRL pairs)."""
    try:
        from dmoerm_trl.data import load_preference_pairs

        pairs = load_preference_pairs(str(path))
    except (ImportError, ValueError, KeyError, TypeError, FileNotFoundError) as err:
        fields = sorted({key for _, record in records if isinstance(record, dict) for key in record})
        raise ValueError(
            f"{path} has no {column!r} field (fields: {fields}) and is not a preference file dmoerm_trl.data can "
            f"read ({first_line(err)}); set prompt_column"
        ) from None
    prompts, seen = [], set()
    for prompt in pairs["prompt"]:
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
