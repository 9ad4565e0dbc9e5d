"""``dmoerm push``: upload a saved DMoERM (config, LoRA adapters, heads, tokenizer) with a model card that lists
evaluation metrics, to the Hugging Face Hub.

    dmoerm push runs/my-dmoerm me/my-dmoerm --metrics runs/my-dmoerm/eval_metrics.json --private
    dmoerm push runs/my-dmoerm me/my-dmoerm --metric pairwise_accuracy=0.71 --metric bon_gold_gain=0.12

A reader needs the base model too: when the model names its base by hub id (built on a hub id, or on a hub cache
snapshot), the reader's ``from_pretrained`` downloads it from there; a model on a local base is refused unless
``--save-base`` uploads the base with it (``base/``).

Authentication is huggingface_hub's (``HF_TOKEN`` or ``huggingface-cli login``); no token is written anywhere.
"""

from __future__ import annotations

import argparse

from ..paths import first_line


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model_dir", nargs="?", help="a folder written by DMoERMForSequenceClassification.save_pretrained"
    )
    parser.add_argument("repo_id", nargs="?", help="the Hub repository, e.g. me/my-dmoerm")
    # The flag spelling every other command uses (--model), besides the positional one (huggingface-cli's).
    parser.add_argument("--model", dest="model_flag", default=None, help="the model folder, instead of MODEL_DIR")
    parser.add_argument("--repo_id", dest="repo_flag", default=None, help="the Hub repository, instead of REPO_ID")
    parser.add_argument("--metrics", default=None, help="a JSON file of evaluation metrics (numbers are kept)")
    parser.add_argument("--metric", action="append", default=[], help="one metric as name=value (repeatable)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument(
        "--save-base",
        action="store_true",
        help="upload the base model weights too (base/); needed when the base is a local folder, not a hub id",
    )
    parser.add_argument("--no-tokenizer", action="store_true", help="do not upload the tokenizer files")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--revision", default=None, help="branch to push to")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    return parser


def _flatten_numbers(data, prefix: str = "") -> dict:
    """Numeric leaves of a (nested) JSON object as ``{"a/b": value}``; other values are dropped."""
    flat = {}
    if isinstance(data, dict):
        for key, value in data.items():
            flat.update(_flatten_numbers(value, f"{prefix}{key}/" if isinstance(value, dict) else f"{prefix}{key}"))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        flat[prefix.rstrip("/")] = data
    return flat


def collect_metrics(metrics_file: str | None, metric_args: list[str]) -> dict:
    import json
    from pathlib import Path

    metrics = {}
    if metrics_file:
        path = Path(metrics_file)
        if not path.is_file():
            raise FileNotFoundError(f"--metrics {metrics_file} does not exist")
        try:
            metrics.update(_flatten_numbers(json.loads(path.read_text())))
        except json.JSONDecodeError as err:
            raise ValueError(f"--metrics {metrics_file} is not valid JSON: {err}") from None
    for item in metric_args:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--metric {item!r} must be name=value")
        try:
            metrics[name] = float(value)
        except ValueError:
            metrics[name] = value
    return metrics


# Where the Hub client's network and HTTP errors come from (huggingface_hub's own, or its HTTP library's).
_HUB_TRANSPORT_MODULES = ("httpx", "httpx2", "requests", "huggingface_hub", "urllib3")


def _model_and_repo(args: argparse.Namespace) -> None:
    """``args.model_dir`` / ``args.repo_id`` from the positional arguments or ``--model`` / ``--repo_id`` (one each)."""
    for positional, flag, name in (("model_dir", "model_flag", "--model"), ("repo_id", "repo_flag", "--repo_id")):
        given = [value for value in (getattr(args, positional), getattr(args, flag, None)) if value is not None]
        if len(given) != 1:
            what = "is missing" if not given else "is given twice (positional and flag)"
            raise ValueError(f"{name} {what}: dmoerm push MODEL_DIR REPO_ID, or --model MODEL_DIR --repo_id REPO_ID")
        setattr(args, positional, given[0])


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    try:
        _model_and_repo(args)
        metrics = collect_metrics(args.metrics, args.metric)
        model_dir = Path(args.model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} has no config.json: not a saved model folder")
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        import dmoerm_trl  # noqa: F401  (registers DMoERM with the Auto classes)
        from dmoerm_trl.models.dmoerm._base_reference import reference_for_reader

        config = AutoConfig.from_pretrained(model_dir)
        if config.model_type != "dmoerm":
            raise ValueError(
                f"{model_dir} holds a {config.model_type!r} model; `dmoerm push` uploads DMoERM models (adapters, "
                "heads and a model card). Use model.push_to_hub() for other models"
            )
        base_hub_id = reference_for_reader(config.base_model_name_or_path)  # checked before loading anything
        if base_hub_id is None and not args.save_base:
            raise ValueError(
                f"the base model of {model_dir} is a local folder ({config.base_model_name_or_path}), which a "
                f"reader of {args.repo_id} cannot download; add --save-base to upload it with the model (base/)"
            )
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        has_tokenizer = any((model_dir / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer = AutoTokenizer.from_pretrained(model_dir) if has_tokenizer and not args.no_tokenizer else None
        commit = model.push_to_hub(
            args.repo_id,
            save_base=args.save_base,
            metrics=metrics or None,
            commit_message=args.commit_message,
            private=args.private or None,
            revision=args.revision,
            create_pr=args.create_pr,
            tokenizer=tokenizer,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"dmoerm push: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if type(err).__module__.split(".")[0] not in _HUB_TRANSPORT_MODULES:  # a bug, not the network: traceback
            raise
        print(
            f"dmoerm push: error: the upload to {args.repo_id} failed ({type(err).__name__}: {first_line(err)}); "
            "check the network (or HF_ENDPOINT) and that `hf auth login` or HF_TOKEN gives write access to the "
            "repository; nothing was changed on the Hub unless a commit is listed there",
            file=sys.stderr,
        )
        return 1
    print(f"dmoerm push: uploaded {model_dir} to {args.repo_id}: {commit}")
    if args.save_base:
        print("dmoerm push: the base model was uploaded with it (base/)")
    else:
        print(f"dmoerm push: readers need the base model {base_hub_id}: from_pretrained downloads it from the Hub")
    if tokenizer is not None:
        print("dmoerm push: the tokenizer was uploaded in the same commit")
    return 0
