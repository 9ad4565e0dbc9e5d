"""The best-of-n recipe behind ``recipes/best_of_n.py`` and ``dmoerm bon``: sample with a policy, keep the best by a
reward model (a DMoERM, an HF reward model, an ensemble); with a gold reward model, the best-of-n overoptimization
evaluation instead, for one or several proxies on the same samples (e.g. DMoERM vs a single RM vs ensembles).

Example:
    $ dmoerm bon --config recipes/configs/best_of_n_tiny.yaml
    $ dmoerm bon --config recipes/configs/compare_proxies_tiny.yaml     # DMoERM vs single RM vs ensembles vs gold
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..utils.io import atomic_write_text


@dataclass
class BestOfNArguments:
    """Best-of-n sampling and evaluation.

    Models:
        policy_model_path, reward_model_paths, ensemble_mode, uwo_lambda, proxies, gold_model_path
    Data:
        dataset_path, prompt_column, num_prompts, max_prompt_length
    Sampling:
        n, ns, top_k, max_new_tokens, temperature, top_p, batch_size, reward_batch_size, seed
    Output:
        output_dir
    """

    policy_model_path: str = field(default=None, metadata={"help": "The policy: a causal LM folder or hub id."})
    reward_model_paths: list[str] = field(
        default_factory=list,
        metadata={"help": "The reward model(s) that pick the best; several are combined into a RewardEnsemble."},
    )
    ensemble_mode: str = field(default="mean", metadata={"help": "Ensemble mode for several reward models."})
    uwo_lambda: float = field(default=0.5, metadata={"help": "Variance penalty of the uwo ensemble mode."})
    proxies: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Proxies to compare on the same samples (with gold_model_path): 'name=path' or "
            "'name=mean|wco|uwo:path1,path2,...' for an ensemble. Default: reward_model_paths as one proxy."
        },
    )
    gold_model_path: str | None = field(
        default=None, metadata={"help": "A gold reward model: evaluate best-of-n overoptimization against it."}
    )
    dataset_path: str = field(default=None, metadata={"help": "Prompt file (.jsonl/.json/.parquet/.csv)."})
    prompt_column: str = field(default="prompt", metadata={"help": "The column holding the prompts."})
    num_prompts: int | None = field(default=None, metadata={"help": "Use the first this many prompts."})
    max_prompt_length: int = field(
        default=256, metadata={"help": "Prompts longer than this (policy tokens) are skipped, counted and reported."}
    )
    n: int = field(default=8, metadata={"help": "Samples per prompt (N for the evaluation)."})
    ns: list[int] | None = field(
        default=None, metadata={"help": "The n <= N to evaluate (default: powers of two up to N)."}
    )
    top_k: int = field(default=1, metadata={"help": "Completions kept per prompt (sampling mode)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Tokens sampled per completion."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate call (each generates n)."})
    reward_batch_size: int = field(default=16, metadata={"help": "Texts per reward-model forward pass."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    output_dir: str = field(default="bon_output", metadata={"help": "Where results are written."})

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        from .recipe_args import check_ensemble_mode

        check_ensemble_mode(self.ensemble_mode)
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1 (leave it unset for every prompt), got {self.num_prompts}")
        if self.ns is not None and (not self.ns or min(self.ns) < 1):
            raise ValueError(f"ns must be whole numbers >= 1 (best-of-1, best-of-2, ...), got {self.ns}")
        if self.ns is not None and max(self.ns) > self.n:
            raise ValueError(
                f"ns asks for best-of-{max(self.ns)} but only n={self.n} samples per prompt are drawn; raise n"
            )


def run_best_of_n(args: BestOfNArguments) -> dict:
    """Sample (and evaluate); writes ``best_of_n.jsonl`` or ``overoptimization.{csv,png}`` + fits; returns a summary."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from .best_of_n import BestOfNSampler
    from .checks import max_positions
    from .overoptimization import CSV_NAME, plot_overoptimization, write_records_csv
    from .recipe_args import (
        build_reward,
        filter_long_prompts,
        load_policy_tokenizer,
        load_prompts,
        load_reward_model,
        parse_proxy_spec,
    )

    start = time.time()
    if not args.policy_model_path or not args.dataset_path:
        raise ValueError("set policy_model_path and dataset_path")
    tokenizer = load_policy_tokenizer(args.policy_model_path)
    policy = AutoModelForCausalLM.from_pretrained(args.policy_model_path)
    if torch.cuda.is_available():
        policy = policy.cuda()
    limit = max_positions(policy)
    if limit is not None and args.max_prompt_length + args.max_new_tokens > limit:
        raise ValueError(
            f"max_prompt_length={args.max_prompt_length} + max_new_tokens={args.max_new_tokens} exceeds the policy's "
            f"{limit} positions; lower one of them"
        )
    prompts = filter_long_prompts(
        load_prompts(args.dataset_path, args.prompt_column), tokenizer, args.max_prompt_length, args.dataset_path
    )
    prompts = prompts[: args.num_prompts] if args.num_prompts else prompts

    proxies = {}
    for spec in args.proxies:
        name, mode, paths = parse_proxy_spec(spec)
        proxies[name] = build_reward(paths, mode, args.uwo_lambda, flag=f"proxies ({name})")
    if args.reward_model_paths:
        model, reward_tokenizer = build_reward(args.reward_model_paths, args.ensemble_mode, args.uwo_lambda)
        name = (
            Path(args.reward_model_paths[0]).name
            if len(args.reward_model_paths) == 1
            else f"ensemble_{args.ensemble_mode}"
        )
        proxies = {name: (model, reward_tokenizer), **proxies}
    if not proxies:
        raise ValueError("set reward_model_paths or proxies")
    first_name, (first_model, first_tokenizer) = next(iter(proxies.items()))
    generation_config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=True, temperature=args.temperature, top_k=0, top_p=args.top_p
    )
    sampler = BestOfNSampler(
        policy,
        tokenizer,
        first_model,
        first_tokenizer,
        n=args.n,
        generation_config=generation_config,
        batch_size=args.batch_size,
        reward_batch_size=args.reward_batch_size,
        seed=args.seed,
    )
    output_dir = Path(args.output_dir)
    summary = {"mode": "evaluate" if args.gold_model_path else "sample", "num_prompts": len(prompts), "n": args.n}
    if args.gold_model_path:
        gold = load_reward_model(args.gold_model_path, flag="gold_model_path")
        result = sampler.evaluate(prompts, gold=gold, n=args.n, ns=args.ns, proxies=proxies)
        write_records_csv(result.records, output_dir / CSV_NAME)
        fits = plot_overoptimization(
            result.records, output_dir / "overoptimization.png", title=f"Best-of-n overoptimization (N={args.n})"
        )
        summary["records"] = result.records
        summary["fits"] = [f.summary() for f in fits]
        atomic_write_text(output_dir / "overoptimization_fits.json", json.dumps(summary["fits"], indent=2))
    else:
        out = sampler(prompts, top_k=args.top_k)
        lines = [
            json.dumps({"prompt": p, "completions": c, "scores": s, "reward": first_name}, ensure_ascii=False)
            for p, c, s in zip(out.prompts, out.completions, out.scores)
        ]
        atomic_write_text(output_dir / "best_of_n.jsonl", "\n".join(lines) + "\n")
        summary["mean_best_score"] = sum(s[0] for s in out.scores) / len(out.scores)
        # texts longer than the reward model accepts were scored on their end (the completion); counted here
        summary["reward_texts_truncated"] = sampler.scorer.num_truncated
        summary["reward_texts_scored"] = sampler.scorer.num_scored
    summary["wall_time_s"] = round(time.time() - start, 2)
    atomic_write_text(output_dir / "run_summary.json", json.dumps(summary, indent=2, default=str))
    return summary
