"""``dmoerm serve-judge``: serve a local HF causal LM as an OpenAI-compatible judge (GET /v1/models,
POST /v1/chat/completions), bound to 127.0.0.1 by default.

Example:
    $ dmoerm serve-judge --model ./smollm2-135m-instruct --port 8000
    $ dmoerm label --data ranked.jsonl --base-url http://127.0.0.1:8000/v1 \\
        --model smollm2-135m-instruct --output labels
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys

from ._errors import (
    OneSpellingDefaultsHelpFormatter,
    one_line,
    port_number,
    positive_int,
    require_input_file,
    require_model,
)


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description=__doc__.split("\n\n")[0],
        formatter_class=OneSpellingDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="Local folder of a causal LM with a chat-template tokenizer.")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to bind (anything but loopback exposes it).")
    parser.add_argument(
        "--port", type=port_number, default=8000, help="Port (0: any free port; the chosen one is printed)."
    )
    parser.add_argument(
        "--served-model-name", default=None, help="The model id clients ask for (default: folder name)."
    )
    parser.add_argument(
        "--max-request-bytes", type=positive_int, default=1_000_000, help="Larger requests get HTTP 413."
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=512, help="Cap on max_tokens of any request.")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="The judge's weights' dtype (auto: the one saved with the model).",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0.")
    parser.add_argument("--chat-template", default=None, help="A Jinja chat template file, if the tokenizer has none.")
    parser.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=8,
        help="Requests answered together by one generate call, at most.",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=200.0,
        help="How long the first queued request waits for others to join (a judge's answer takes seconds; "
        "gathering a full batch is worth a fraction of one).",
    )
    parser.add_argument(
        "--max-queue",
        type=positive_int,
        default=64,
        help="Requests waiting at most; more get HTTP 503 with Retry-After.",
    )
    parser.add_argument(
        "--read-timeout", type=float, default=30.0, help="Seconds a client may stall while sending a request."
    )
    parser.add_argument("--verbose", action="store_true", help="Log every request line.")
    return parser


def run(args: argparse.Namespace) -> int:
    import logging

    from ..labeling.judge_server import start_judge_server
    from ..utils.network import is_loopback

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not is_loopback(args.host):
        print(
            f"serve-judge: warning: binding {args.host} exposes the model beyond this machine; set "
            "DMOERM_JUDGE_API_KEY to require a bearer token.",
            file=sys.stderr,
        )
    require_model(args.model, "--model")
    if args.chat_template is not None:
        require_input_file(args.chat_template, "--chat-template")
    try:
        server = start_judge_server(
            args.model,
            host=args.host,
            port=args.port,
            model_name=args.served_model_name,
            max_request_bytes=args.max_request_bytes,
            max_new_tokens=args.max_new_tokens,
            dtype=args.dtype,
            device=args.device,
            chat_template=args.chat_template,
            verbose=args.verbose,
            background=False,
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            read_timeout=args.read_timeout,
        )
    except (OSError, ValueError) as err:
        message = one_line(err)
        if isinstance(err, OSError) and err.errno == errno.EADDRINUSE:
            message = (
                f"--port {args.port}: {args.host}:{args.port} is already in use (another server?); pick another "
                "--port, or --port 0 for any free one"
            )
        print(f"dmoerm serve-judge: error: {message}", file=sys.stderr)
        return 2
    print(
        f"Serving {server.model_name!r} at {server.base_url} (Ctrl-C to stop); batches of up to "
        f"{args.max_batch_size}, queue {args.max_queue}",
        flush=True,
    )

    def stop_on_sigterm(signum, frame):  # process managers (systemd, docker, CI) stop with SIGTERM: exit cleanly
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
