"""``dmoerm serve``: serve a reward model over HTTP (OpenRLHF's /get_reward, /v1/rewards, /health, /metrics).

Serves a saved DMoERM or any AutoModelForSequenceClassification reward model, with dynamic batching, bound to
127.0.0.1 by default. Set DMOERM_SERVE_API_KEY to require `Authorization: Bearer <key>`. SIGTERM finishes the
requests in flight, then exits.

Example:
    $ dmoerm serve --model ./my-dmoerm --port 5000
    $ # OpenRLHF: --remote_rm_url http://127.0.0.1:5000/get_reward
    $ # TRL GRPO: reward_funcs=RemoteReward("http://127.0.0.1:5000")
"""

from __future__ import annotations

import argparse
import sys

from ._errors import OneSpellingDefaultsHelpFormatter


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description=__doc__.split("\n\nExample")[0],
        formatter_class=OneSpellingDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="A saved DMoERM or sequence-classification RM folder.")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to bind (anything but loopback exposes it).")
    parser.add_argument("--port", type=int, default=5000, help="Port (0: any free port; the ready line shows it).")
    parser.add_argument("--max-batch-size", type=int, default=32, help="Most sequences per forward pass.")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="Longest wait for a batch to fill.")
    parser.add_argument("--max-queue", type=int, default=4096, help="Most queued sequences; beyond it HTTP 503.")
    parser.add_argument("--max-items-per-request", type=int, default=1024, help="More items per request: HTTP 413.")
    parser.add_argument("--max-request-bytes", type=int, default=16 * 1024 * 1024, help="Larger bodies: HTTP 413.")
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="Longest sequence in tokens; longer ones get HTTP 400 (default: the model's limit).",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="Weights' dtype (auto: the one saved with the model; bfloat16/float16 on GPUs).",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu).")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is far faster on an oversubscribed CPU).",
    )
    parser.add_argument("--model-id", default=None, help="Name reported by /health (default: the folder name).")
    parser.add_argument(
        "--api-key-env",
        default="DMOERM_SERVE_API_KEY",
        help="Environment variable holding the bearer token (unset or empty: no token needed).",
    )
    parser.add_argument("--max-connections", type=int, default=1024, help="Open connections beyond it: HTTP 503.")
    parser.add_argument("--keep-alive", type=float, default=30.0, help="Seconds an idle connection stays open.")
    parser.add_argument("--access-log", action="store_true", help="Log every request line (never headers).")
    return parser


def run(args: argparse.Namespace) -> int:
    import logging

    try:
        from ..serving.app import ServeSettings
        from ..serving.server import exposure_warning, run_server
    except ModuleNotFoundError as err:
        print(
            f"serve: {err.name} is missing; install the server with `pip install 'dmoerm-trl[serve]'`", file=sys.stderr
        )
        return 2
    from ..serving.engine import RewardEngine

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = ServeSettings(
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            max_request_bytes=args.max_request_bytes,
            max_items_per_request=args.max_items_per_request,
            api_key=ServeSettings.api_key_from_env(args.api_key_env),
        )
        if args.max_length is not None and args.max_length < 1:
            raise ValueError(f"--max-length must be >= 1, got {args.max_length}")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        if args.keep_alive <= 0:
            raise ValueError(f"--keep-alive must be > 0 seconds, got {args.keep_alive}")
        if args.max_connections < 1:
            raise ValueError(f"--max-connections must be >= 1, got {args.max_connections}")
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must be in 0..65535, got {args.port}")
    except ValueError as err:
        print(f"serve: {err}", file=sys.stderr)
        return 2
    warning = exposure_warning(args.host, settings.api_key)
    if warning:  # before the (slow) model load, so it is seen at once
        print(warning, file=sys.stderr, flush=True)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        engine = RewardEngine.from_pretrained(
            args.model, device=args.device, dtype=args.dtype, max_length=args.max_length, model_id=args.model_id
        )
    except (OSError, ValueError) as err:
        print(f"serve: --model {args.model}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        run_server(
            engine,
            host=args.host,
            port=args.port,
            settings=settings,
            access_log=args.access_log,
            max_connections=args.max_connections,
            keep_alive_s=args.keep_alive,
            warn=False,
        )
    except OSError as err:
        print(f"serve: {err}", file=sys.stderr)
        return 1
    return 0
