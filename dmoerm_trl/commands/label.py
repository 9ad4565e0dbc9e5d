"""``dmoerm label``: capability preference labels from an OpenAI-compatible judge (see docs/labeling.md).

Flags mirror :class:`dmoerm_trl.labeling.config.LabelingConfig`; ``--config FILE.yaml`` sets any of them (flags
given on the command line win). Exit codes: 0 complete, 2 user error (bad option, config, data, template or output
path: one line naming it), 1 stopped (the endpoint refused, e.g. a wrong API key), 3 incomplete (budget reached or
requests failed after every retry: rerun to continue from the cache).

Example:
    $ export OPENAI_API_KEY=...            # never written anywhere
    $ dmoerm label --data ranked.jsonl --base-url https://api.openai.com/v1 --model gpt-4o-mini \\
        --mode joint --output labels/
    $ dmoerm serve-judge --model ./smollm2-135m-instruct &     # fully offline
    $ dmoerm label --data ranked.jsonl --base-url http://127.0.0.1:8000/v1 --model smollm2-135m-instruct \\
        --output labels/
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from ..utils.network import is_local_url
from ._errors import require_input_file, require_output_dir


def _field_type(annotation: str):
    base = annotation.replace(" | None", "").strip()
    return {"str": str, "int": int, "float": float, "bool": bool}[base]


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    from ..labeling.config import LabelingConfig

    parser = subparsers.add_parser(name, help=help_text, description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="YAML file with any of the options below (flags win).")
    for field in dataclasses.fields(LabelingConfig):
        kind = _field_type(field.type)
        flag = "--" + field.name.replace("_", "-")
        default = "required" if field.default is dataclasses.MISSING else f"default: {field.default}"
        options = {"help": f"{field.metadata.get('help', '')} ({default})", "dest": field.name, "default": None}
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
            continue
        if "choices" in field.metadata:
            options["choices"] = field.metadata["choices"]
        parser.add_argument(flag, type=kind, **options)
    parser.add_argument(
        "--api-key",
        default=None,
        help="API key (prefer the environment variable of --api-key-env: flags show in process lists).",
    )
    return parser


def _config_from_args(args):
    from ..labeling.config import LabelingConfig

    values = {}
    if args.config:
        import yaml

        with open(require_input_file(args.config, "--config"), encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle) or {}
        if not isinstance(loaded, dict):
            raise ValueError(
                f"--config {args.config}: must be a YAML mapping of option: value, got {type(loaded).__name__}"
            )
        if "api_key" in loaded:
            raise ValueError(f"{args.config}: do not store API keys in config files; use --api-key-env.")
        known = {f.name for f in dataclasses.fields(LabelingConfig)}
        unknown = set(loaded) - known
        if unknown:
            raise ValueError(f"{args.config}: unknown option(s) {sorted(unknown)}. Known: {sorted(known)}.")
        values.update(loaded)
    for field in dataclasses.fields(LabelingConfig):
        value = getattr(args, field.name, None)
        if value is not None:
            values[field.name] = value
    missing = [name for name in ("data", "output", "model") if not values.get(name)]
    if missing:
        raise ValueError(f"Missing required option(s): {', '.join('--' + m for m in missing)}.")
    return LabelingConfig(**values)


def run(args: argparse.Namespace) -> int:
    import logging

    from ..labeling.diagnosis import few_labels
    from ..labeling.labeler import LABELS_FILE, SUMMARY_FILE, run_labeling

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2"):  # one INFO line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Bad options, files or data raise with a one-line message: `dmoerm` prints it and exits 2 (commands/_errors.py).
    config = _config_from_args(args)
    require_output_dir(config.output, "--output")
    if args.api_key:
        print(
            "dmoerm label: note: --api-key is visible in process lists; prefer the environment variable "
            f"{config.api_key_env}.",
            file=sys.stderr,
        )
    if config.data and not os.path.exists(config.data):
        raise FileNotFoundError(f"--data {config.data}: no such file or folder")  # before the key: data first
    endpoint = config.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    if not (args.api_key or os.environ.get(config.api_key_env)) and not is_local_url(endpoint):
        raise ValueError(
            f"--base-url {endpoint} is not on this machine, but {config.api_key_env} is not set: export the API key "
            f"as {config.api_key_env} (or name another variable with --api-key-env); a local judge "
            "(http://127.0.0.1:..., e.g. dmoerm serve-judge) needs none"
        )
    result = run_labeling(config, api_key=args.api_key)
    summary = result.summary
    print(
        f"labels: {summary['labels']} from {summary['pairs']} pairs | calls {summary['calls']} | "
        f"cache hits {summary['cache_hits']} | retries {summary['retries']} | "
        f"waited past --timeout {summary['slow_answers']} | failed {summary['failed_requests']} | "
        f"tokens {summary['tokens_in']}+{summary['tokens_out']} | ~${summary['estimated_cost_usd']:.4f} | "
        f"{summary['elapsed_seconds']:.1f}s"
    )
    for category, capabilities in summary["per_capability"].items():
        rates = ", ".join(f"{c} {t['labeled']}/{t['pairs']}" for c, t in capabilities.items())
        print(f"  labeled pairs {category}: {rates}")
    if summary.get("pairs_without_category"):
        print(
            f"  {summary['pairs_without_category']} of {summary['pairs']} pair(s) have no category of the set "
            f"{config.categories}: no capability labels for them (a 'category' column fixes it)"
        )
    if few_labels(summary) and summary["why_few_labels"]:
        print(f"why only {summary['labels']} label(s):")
        for line in summary["why_few_labels"]:
            print(f"  - {line}")
    print(f"wrote {os.path.join(config.output, LABELS_FILE)} and {os.path.join(config.output, SUMMARY_FILE)}")
    if summary["aborted"]:
        print(f"dmoerm label: stopped: {summary['aborted']}", file=sys.stderr)
        return 1
    if not summary["complete"]:
        reason = (
            "budget reached" if summary["stopped_by_budget"] else f"{summary['failed_requests']} request(s) failed"
        )
        print(
            f"dmoerm label: incomplete ({reason}); rerun the same command to continue from the cache.", file=sys.stderr
        )
        return 3
    return 0
