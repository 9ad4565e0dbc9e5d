"""Could a deeper backbone learn a capability that the demo's experts miss? A linear probe at each layer.

For the chosen capabilities of a finished ``benchmarks/demo_sizes.py`` run, one forward pass of a backbone (default:
the offline SmolLM2-135M-Instruct, all 30 layers) reads every judge-labelled pair (``labels/``) and every clean test
pair of the category (``data/test.jsonl``). Each text becomes the mean of its hidden states at the chosen layers.
A ridge probe is fit on the chosen-minus-rejected differences of the labelled pairs (symmetrised, no bias; ridge
``alpha x trace / dim``). Two numbers come out: how well it fits the labels, and how often it orders the test pairs
as the TRUE capability does, counting only the pairs the truth separates (95% Wilson interval). Layer 2 is what the
demo's 2-layer reward backbone computes (before the final norm). Results: docs/demo.md ("Do the experts learn their
capability?").

    $ python benchmarks/capability_probe.py /tmp/p3/p256e3l2s0 --capabilities objective_qa/correctness \
        chitchat/proactivity --layers 2 4 8 16 30
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def pair_texts(run: Path, category: str, capability: str) -> tuple[list, list]:
    """``(labelled, test)``: labelled = ``[(prompt, chosen, rejected)]`` messages from the judge's labels (chosen =
    better on ``capability``); test = ``[(prompt, a, b, truth_a - truth_b)]`` of the category's clean test pairs."""
    from dmoerm_trl.synthetic.generator import _messages

    labelled = [
        (row["prompt"], row["chosen"], row["rejected"])
        for row in _jsonl(run / "labels" / "capability_pairs.jsonl")
        if row["category"] == category and row["capability"] == capability
    ]
    test = []
    for row in _jsonl(run / "data" / "test.jsonl"):
        if row["category_key"] == category:
            scores = [s[capability] for s in row["capability_scores"]]
            answers = [[{"role": "assistant", "content": text}] for text in row["response"]]
            test.append((_messages(row["src"], row["tgt"]), answers[0], answers[1], scores[0] - scores[1]))
    return labelled, test


def hidden_means(model, tokenizer, conversations: list, layers: list[int], batch_size: int = 8, max_length=256):
    """``{layer: (n, hidden)}``: each conversation's hidden states at ``layer`` averaged over its tokens."""
    import torch

    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    out = {layer: [] for layer in layers}
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            )
            states = model(**batch, output_hidden_states=True).hidden_states
            mask = batch["attention_mask"].unsqueeze(-1).to(states[0].dtype)
            for layer in layers:
                out[layer].append((states[layer] * mask).sum(1) / mask.sum(1))
    return {layer: torch.cat(parts).double() for layer, parts in out.items()}


def ridge_probe(differences, alpha: float = 1.0):
    """``w`` with ``w . d > 0`` for the labelled differences ``d`` (symmetrised ridge, no bias)."""
    import torch

    gram = differences.T @ differences
    ridge = alpha * torch.trace(gram) / gram.shape[0]
    identity = torch.eye(gram.shape[0], dtype=gram.dtype)
    return torch.linalg.solve(2 * gram + ridge * identity, 2 * differences.sum(0))


def probe(run, model_path: str, capabilities: list[str], layers: list[int], alpha: float = 1.0) -> list[dict]:
    """One row per capability and layer: labelled pairs, probe fit on them, agreement with the truth on test."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from dmoerm_trl.evaluation_stats import wilson_interval

    run = Path(run)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(model_path).eval()
    depth = model.config.num_hidden_layers
    bad = [layer for layer in layers if not 0 < layer <= depth]
    if bad:
        raise ValueError(f"--layers {bad}: {model_path} has layers 1..{depth}")
    rows = []
    for name in capabilities:
        category, capability = name.split("/")
        labelled, test = pair_texts(run, category, capability)
        if not labelled or not test:
            raise ValueError(f"{run}: no labelled or no test pairs for {name}")
        conversations = [p + c for p, c, _ in labelled] + [p + r for p, _, r in labelled]
        conversations += [p + a for p, a, _, _ in test] + [p + b for p, _, b, _ in test]
        means = hidden_means(model, tokenizer, conversations, layers)
        n, m = len(labelled), len(test)
        truth = torch.tensor([t for *_, t in test], dtype=torch.float64)
        separated = truth != 0
        for layer in layers:
            features = means[layer]
            scale = features[: 2 * n].std(0).clamp_min(1e-8)  # standardised on the labelled texts
            chosen, rejected = features[:n] / scale, features[n : 2 * n] / scale
            first, second = features[2 * n : 2 * n + m] / scale, features[2 * n + m :] / scale
            weights = ridge_probe(chosen - rejected, alpha)
            fit = float(((chosen - rejected) @ weights > 0).double().mean())
            agree = int(((((first - second) @ weights) > 0) == (truth > 0))[separated].sum())
            total = int(separated.sum())
            low, high = wilson_interval(agree, total)
            rows.append(
                {
                    "capability": name,
                    "layer": layer,
                    "labelled_pairs": n,
                    "fit_on_labels": round(fit, 3),
                    "test_separated": total,
                    "probe_agrees_with_truth": agree,
                    "ci95": [round(low, 3), round(high, 3)],
                }
            )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished benchmarks/demo_sizes.py output folder")
    parser.add_argument("--capabilities", nargs="+", required=True, help="category/capability names")
    parser.add_argument("--layers", nargs="+", type=int, required=True, help="layers to probe (1 = first)")
    parser.add_argument("--model", default=None, help="backbone folder (default: the offline SmolLM2-135M)")
    parser.add_argument("--alpha", type=float, default=1.0, help="ridge strength, in units of trace / dim")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    run = Path(args.run)
    for need in ("data/test.jsonl", "labels/capability_pairs.jsonl"):
        if not (run / need).is_file():
            parser.error(f"{run}: not a finished benchmarks/demo_sizes.py run (no {need})")
    if args.model is None:
        from dmoerm_trl.assets import prepare_smollm2

        args.model = prepare_smollm2()
    rows = probe(run, args.model, args.capabilities, args.layers, args.alpha)
    print(f"run {run.name}; backbone {args.model}; ridge alpha {args.alpha}")
    print("| capability | layer | labelled pairs | probe fit on the labels | probe ~ true capability (test) |")
    print("|---|---|---|---|---|")
    for row in rows:
        share = row["probe_agrees_with_truth"] / max(row["test_separated"], 1)
        print(
            f"| {row['capability']} | {row['layer']} | {row['labelled_pairs']} | {100 * row['fit_on_labels']:.0f}% | "
            f"{row['probe_agrees_with_truth']}/{row['test_separated']} = {100 * share:.0f}% "
            f"[{100 * row['ci95'][0]:.0f}, {100 * row['ci95'][1]:.0f}] |"
        )
    if args.output:
        from dmoerm_trl.utils.io import atomic_write_json

        atomic_write_json(args.output, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
