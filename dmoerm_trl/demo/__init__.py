"""``dmoerm demo``: the whole DMoERM story, offline, on CPU, in one command.

1. prepare SmolLM2-135M-Instruct (the policy) and the reward backbone (its first layers, see ``docs/demo.md``);
2. build a multi-category preference data set with known ground truth (:mod:`dmoerm_trl.synthetic`);
3. label capabilities with the real ``openai`` client against the synthetic judge served on 127.0.0.1;
4. train the router + the three phases and a single-RM baseline (:mod:`dmoerm_trl.trainers`), evaluate both
   against human ranks and against the gold preferences of a clean held-out test split (:mod:`dmoerm_trl.evaluation`);
5. best-of-n with SmolLM2 as the policy, DMoERM and the baseline as proxies, gold reward vs sqrt(KL)
   (:mod:`dmoerm_trl.rl`);
6. a report folder: ``report.md`` with tables and charts, ``metrics.json``.

Example:
    >>> from dmoerm_trl.demo import DemoConfig, run_demo
    >>> metrics = run_demo(DemoConfig(output="outputs/demo", fast=True))  # doctest: +SKIP
    >>> metrics["headline"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..utils.io import atomic_path

__all__ = ["DemoConfig", "DemoSizes", "prepare_reward_backbone", "run_demo"]


@dataclass
class DemoSizes:
    """How big each part of the demo is (``--fast`` picks the small set)."""

    categories: list[str]
    max_capabilities: int  # capability experts per category (the first ones of the world: the heaviest in gold)
    pairs_per_category: int  # training records (one pair each, "human" ranks flipped at 30%)
    test_pairs_per_category: int  # clean gold test pairs on held-out prompts
    max_labels_per_capability: int  # capability labels kept per expert (seeded subsample)
    reward_layers: int  # decoder layers of SmolLM2 kept for the reward backbone (0: all)
    lora_r: int
    epochs: float
    max_length: int
    bon_prompts: int
    bon_samples: int
    bon_max_new_tokens: int


# Best-of-n on 32 prompts (8 per category): with 6, one standard error of the gold gain was ~0.3, larger than the
# differences to report. 3 epochs: at 1 the single RM ended at validation loss 0.688 (ln 2 = 0.693); 64 gold test
# pairs per category put the 95% interval of the accuracy at about +-6 points (docs/demo.md, "Sizes").
FULL = DemoSizes(["objective_qa", "chitchat", "text_creation", "roleplay"], 2, 48, 64, 24, 2, 8, 3, 192, 32, 8, 32)
FAST = DemoSizes(["objective_qa", "chitchat"], 2, 32, 20, 16, 2, 4, 1, 144, 4, 8, 24)
# What the --fast numbers are (said in the report and on the console): one epoch on 32 pairs per category does not
# train the models (two seeds: router 50-75% right on 2 categories, gold intervals reaching below 50%).
FAST_NOTE = (
    "--fast is a smoke run of every step (2 categories, 32 pairs each, 1 epoch): its models are not expected to "
    "learn, so its numbers compare nothing; `dmoerm demo` without --fast gives the comparison (docs/demo.md)."
)


@dataclass
class DemoConfig:
    output: str = field(default="outputs/demo", metadata={"help": "The report folder (also holds data and runs)."})
    fast: bool = field(default=False, metadata={"help": "The small variant (CI, < 4 minutes)."})
    seed: int = field(default=0, metadata={"help": "Seed of the data, the judge, training and sampling."})
    backbone: str | None = field(default=None, metadata={"help": "Reward backbone path (default: SmolLM2 layers)."})
    policy: str | None = field(default=None, metadata={"help": "Policy for best-of-n (default: SmolLM2-135M)."})
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: all cores)."})
    max_length: int | None = field(default=None, metadata={"help": "Override the tokenized length limit."})
    sizes: DemoSizes | None = None

    def __post_init__(self):
        import dataclasses

        if self.sizes is None:
            self.sizes = FAST if self.fast else FULL
        if self.max_length:
            self.sizes = dataclasses.replace(self.sizes, max_length=self.max_length)


class _Progress:
    """Stage banners with elapsed time."""

    def __init__(self, total: int):
        self.total, self.index, self.start, self.times = total, 0, time.perf_counter(), {}
        self._current, self._current_start = None, None

    def stage(self, title: str) -> None:
        self.done()
        self.index += 1
        self._current, self._current_start = title, time.perf_counter()
        bar = "=" * 100
        print(
            f"\n{bar}\n[{self.index}/{self.total}] {title}   (t = {time.perf_counter() - self.start:.0f} s)\n{bar}",
            flush=True,
        )

    def done(self) -> None:
        if self._current is not None:
            self.times[self._current] = round(time.perf_counter() - self._current_start, 1)
            self._current = None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def prepare_reward_backbone(smollm2_path: str, num_layers: int, cache_dir: str | os.PathLike | None = None) -> str:
    """SmolLM2-135M-Instruct cut to its first ``num_layers`` decoder layers (pretrained weights), cached once.

    On 2 busy CPU cores the 30-layer model trains at ~2 s per sequence; the first layers keep the pretrained
    embeddings and lower layers (and the policy's tokenizer) at a fraction of the cost (``docs/demo.md``).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..assets import default_cache_dir

    config = AutoConfig.from_pretrained(smollm2_path)
    if num_layers <= 0 or num_layers >= config.num_hidden_layers:
        return smollm2_path
    folder = Path(cache_dir or default_cache_dir()) / f"{Path(smollm2_path).name}-first{num_layers}layers"
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return str(folder)
    print(f"Cutting SmolLM2 to its first {num_layers} layers for the reward backbone (once; {folder}) ...", flush=True)
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:num_layers]
    for key in ("quantization_config",):  # the GGUF origin must not make the cut model "quantized"
        if hasattr(config, key):
            delattr(config, key)
    from safetensors.torch import load_file

    state = load_file(str(Path(smollm2_path) / "model.safetensors"))
    keep = {k: v for k, v in state.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < num_layers}
    model = AutoModelForCausalLM.from_config(config)
    missing, _ = model.load_state_dict(keep, strict=False)
    if [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"cutting {smollm2_path}: weights missing for {missing[:5]}")
    model.tie_weights()
    with atomic_path(folder, directory=True) as tmp:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(smollm2_path).save_pretrained(tmp)
    return str(folder)


def _subsample_labels(source: Path, target: Path, limit: int, seed: int) -> dict[str, int]:
    from ..data import write_jsonl_atomic

    groups: dict[tuple[str, str], list[dict]] = {}
    with open(source, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                groups.setdefault((row["category"], row["capability"]), []).append(row)
    kept, counts = [], {}
    for key in sorted(groups):
        rows = groups[key]
        random.Random(f"{seed}:{key}").shuffle(rows)
        kept += rows[:limit]
        counts[f"{key[0]}/{key[1]}"] = min(limit, len(rows))
    write_jsonl_atomic(kept, target)
    return counts


def _heldout_accuracy_of_human_labels(train_records: list[dict]) -> float:
    return sum(not r["human_flipped"] for r in train_records) / max(1, len(train_records))


def run_demo(config: DemoConfig) -> dict:
    """Run every step; write ``report.md``, ``metrics.json`` and the charts into ``config.output``; return metrics."""
    import torch

    from .world import demo_world_data, label_with_synthetic_judge

    sizes = config.sizes
    out = Path(config.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    progress = _Progress(6)
    metrics: dict = {
        "config": {k: v for k, v in asdict(config).items() if k != "sizes"},
        "sizes": asdict(sizes),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": list(os.getloadavg()),
        },
    }

    # 1. models -------------------------------------------------------------------------------------------------
    progress.stage("Models: SmolLM2-135M-Instruct (policy) and the reward backbone")
    smollm2 = None
    if config.policy is None or config.backbone is None:
        from ..assets import prepare_smollm2

        smollm2 = prepare_smollm2()
    policy_path = config.policy or smollm2
    backbone = config.backbone or prepare_reward_backbone(smollm2, sizes.reward_layers)
    print(f"policy: {policy_path}\nreward backbone: {backbone}")
    metrics["models"] = {"policy": policy_path, "reward_backbone": backbone}

    # 2. data ---------------------------------------------------------------------------------------------------
    progress.stage(f"Data: synthetic ground-truth world, {len(sizes.categories)} categories")
    data = demo_world_data(sizes, config.seed, out)
    world, categories, dataset, paths = data.world, data.categories, data.dataset, data.paths
    human_agreement = _heldout_accuracy_of_human_labels(dataset.train)
    print(
        f"{len(dataset.train)} training pairs (human ranks agree with the gold on {human_agreement:.0%}), "
        f"{len(dataset.test)} clean gold test pairs; experts: {categories}"
    )
    metrics["data"] = {
        "train_pairs": len(dataset.train),
        "test_pairs": len(dataset.test),
        "human_gold_agreement": round(human_agreement, 4),
        "categories": categories,
        "gold_formulas": {k: v["gold_formula"] for k, v in world.describe().items()},
    }

    # 3. labels -------------------------------------------------------------------------------------------------
    progress.stage("Capability labels: openai client -> synthetic judge on 127.0.0.1 (position-swap filter)")
    labels_dir = out / "labels"
    result, judge_stats = label_with_synthetic_judge(
        data, labels_dir, seed=config.seed, on_start=lambda url: print(f"judge serving at {url}")
    )
    print(
        f"judge stopped; {len(result.labels)} consistent labels from {result.summary.get('calls')} calls "
        f"({result.summary.get('cache_hits')} cache hits)"
    )
    label_counts = _subsample_labels(
        labels_dir / "capability_pairs.jsonl",
        labels_dir / "demo_labels.jsonl",
        sizes.max_labels_per_capability,
        config.seed,
    )
    per_capability = result.summary.get("per_capability", {})
    metrics["labels"] = {
        "calls": result.summary.get("calls"),
        "cache_hits": result.summary.get("cache_hits"),
        "labels_kept": len(result.labels),
        "labels_used_per_expert": label_counts,
        "judge_stats": judge_stats,
        "per_capability": {
            f"{c}/{k}": {
                "consistency_rate": v.get("consistency_rate"),
                "human_agreement_rate": v.get("human_agreement_rate"),
            }
            for c, caps in per_capability.items()
            for k, v in caps.items()
        },
    }

    # 4. training + evaluation ----------------------------------------------------------------------------------
    progress.stage("Training: router + 3 phases per category, and the single-RM baseline (TRL trainers)")
    from .training import evaluate_both, train_models

    run_dir = out / "dmoerm"
    metrics["training"] = train_models(
        backbone,
        paths["train"],
        labels_dir / "demo_labels.jsonl",
        data.categories_yaml,
        run_dir,
        sizes,
        config.seed,
        config.threads,
    )
    print("Evaluating against the human ranks (held-out validation) and the gold (clean test split) ...")
    metrics["evaluation"] = evaluate_both(run_dir, paths["train"], paths["test"], out)

    # 5. best-of-n ----------------------------------------------------------------------------------------------
    progress.stage(
        f"Best-of-n: {Path(policy_path).name} as the policy, {sizes.bon_prompts} held-out prompts x N={sizes.bon_samples}"
    )
    from .best_of_n import run_best_of_n

    metrics["best_of_n"] = run_best_of_n(
        policy_path, run_dir, paths["heldout_prompts"], world, sizes, config.seed, out
    )

    # 6. report -------------------------------------------------------------------------------------------------
    progress.stage("Report")
    from .report import headline, learning_verdict, write_report

    progress.done()
    metrics["stage_seconds"] = progress.times
    metrics["wall_seconds"] = round(progress.elapsed, 1)
    metrics["machine"]["load_average_at_end"] = list(os.getloadavg())
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)  # CPU time: what the run costs, whatever else runs beside it
    metrics["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)
    metrics["learning"] = learning_verdict(metrics)
    metrics["headline"] = headline(metrics)
    write_report(metrics, out)
    return metrics
