"""Phase 3 (aggregator) epoch time with the frozen-expert feature cache vs without, side by side in one run.

    python benchmarks/phase3_feature_cache.py                       # SmolLM2-135M-Instruct (offline copy), k=5
    python benchmarks/phase3_feature_cache.py --backbone tiny       # tiny random Llama, seconds

Both runs train the same aggregator (same model, pairs, seed, batch size) for ``--epochs`` epochs with
``AggregatorTrainer``. Cached: the k experts' features of every pair are computed once (timed separately as the
cache build), then each epoch trains the MLP on them. Uncached: every step runs the k experts again. The first
cached epoch's cost is the cache build plus its own time; later epochs are the MLP alone.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]


class EpochTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=None, help="a local backbone path, 'tiny', or default SmolLM2")
    parser.add_argument("--capabilities", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    from dmoerm_trl import DMoERMForSequenceClassification
    from dmoerm_trl.data import load_preference_pairs
    from dmoerm_trl.data.tokenize import tokenize_pairs
    from dmoerm_trl.testing_utils import make_tiny_llama, randomize_adapters
    from dmoerm_trl.trainers import AggregatorTrainer, DMoERMTrainingConfig

    workdir = Path(tempfile.mkdtemp(prefix="phase3-bench-"))
    if args.backbone == "tiny":
        args.backbone = make_tiny_llama(workdir / "tiny", hidden_size=64, num_layers=4)
    elif args.backbone is None:
        from dmoerm_trl.assets import prepare_smollm2

        args.backbone = prepare_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(args.backbone)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    capabilities = [f"capability_{i}" for i in range(args.capabilities)]
    model = DMoERMForSequenceClassification.from_backbone(
        args.backbone, {"chitchat": capabilities}, tokenizer=tokenizer, router_mode="linear"
    )
    randomize_adapters(model, std=0.05)  # trained-looking, distinct experts (the cost does not depend on values)
    pairs = load_preference_pairs(REPO / "tests" / "fixtures" / "mtmc_tiny.jsonl")
    pairs = pairs.select([i % len(pairs) for i in range(args.pairs)])
    pairs = tokenize_pairs(pairs, tokenizer, None, "pairs")
    mean_tokens = sum(len(x) for x in list(pairs["chosen_ids"]) + list(pairs["rejected_ids"])) / (2 * len(pairs))
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}

    results = {}
    for cached in (True, False):
        model.load_state_dict(initial, strict=False)
        timer = EpochTimer()
        config = DMoERMTrainingConfig(
            output_dir=str(workdir / f"cached-{cached}"),
            use_cpu=True,
            learning_rate=1e-4,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch,
            eval_strategy="no",
            save_strategy="no",
            load_best_model_at_end=False,
            report_to="none",
            disable_tqdm=True,
            seed=0,
            logging_steps=1000,
        )
        start = time.perf_counter()
        trainer = AggregatorTrainer(
            model,
            "chitchat",
            args=config,
            train_dataset=pairs,
            processing_class=tokenizer,
            cache_expert_features=cached,
            feature_batch_size=32,
            callbacks=[timer],
        )
        build = time.perf_counter() - start
        trainer.train()
        results[cached] = {"build_seconds": build, "epoch_seconds": timer.times}

    cached, plain = results[True], results[False]
    later_cached = sum(cached["epoch_seconds"][1:]) / max(1, len(cached["epoch_seconds"]) - 1)
    later_plain = sum(plain["epoch_seconds"][1:]) / max(1, len(plain["epoch_seconds"]) - 1)
    first_cached = cached["build_seconds"] + cached["epoch_seconds"][0]
    print(
        f"backbone {args.backbone}, k={args.capabilities} experts, {args.pairs} pairs (mean {mean_tokens:.0f} "
        f"tokens per sequence), batch {args.batch}, {args.epochs} epochs, torch threads {torch.get_num_threads()}"
    )
    print("| run | cache build (s) | epoch 1 (s) | later epochs, mean (s) | total (s) |")
    print("|---|---:|---:|---:|---:|")
    for name, result in (("cached features", cached), ("no cache (experts every step)", plain)):
        later = sum(result["epoch_seconds"][1:]) / max(1, len(result["epoch_seconds"]) - 1)
        total = result["build_seconds"] + sum(result["epoch_seconds"])
        print(
            f"| {name} | {result['build_seconds']:.2f} | {result['epoch_seconds'][0]:.2f} | {later:.3f} | "
            f"{total:.2f} |"
        )
    print(
        f"later cached epoch / uncached epoch: {later_cached / later_plain:.4f}; "
        f"later cached epoch / first cached epoch (incl. cache build): {later_cached / first_cached:.4f}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"results": {str(k): v for k, v in results.items()}, "backbone": args.backbone}, indent=2)
        )


if __name__ == "__main__":
    main()
