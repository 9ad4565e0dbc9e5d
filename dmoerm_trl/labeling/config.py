"""``LabelingConfig``: every option of ``dmoerm label``, as a dataclass (CLI flags and YAML keys come from it).

This module imports nothing heavy, so ``dmoerm --help`` stays fast.

The API key is deliberately not a field: it comes from the environment (``OPENAI_API_KEY`` or the variable named
by ``api_key_env``) or from ``--api-key``, is handed to the client only, and never reaches a config dump, the
cache, the summary or a log.

Example:
    >>> from dmoerm_trl.labeling.config import LabelingConfig
    >>> config = LabelingConfig(data="pairs.jsonl", output="labels", model="gpt-4o-mini", mode="joint")
    >>> config.cache_path, config.completion_token_limit(num_capabilities=5)
    ('labels/cache.sqlite', 152)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields

MODES = ("per_capability", "joint")
LANGUAGES = ("en", "zh")
RESPONSE_FORMATS = ("auto", "json_object", "none")


@dataclass
class LabelingConfig:
    """Options of the capability labeler.

    Data:
        data, data_format, categories, lower_rank_is_better, skip_invalid
    Judge endpoint:
        base_url, model, api_key_env, temperature, seed, max_completion_tokens, response_format
    Prompts:
        mode, language, template
    Reliability and cost:
        concurrency, timeout, max_retries, backoff_base, backoff_max, budget_calls, budget_tokens,
        price_table, price_input_per_million, price_output_per_million
    Output:
        output, cache, progress
    """

    data: str = field(metadata={"help": "Preference data: mtmc-rlhf ranked or TRL pairs (.jsonl/.json/.parquet)."})
    output: str = field(metadata={"help": "Output directory: capability_pairs.jsonl, summary.json, cache.sqlite."})
    model: str = field(metadata={"help": "Judge model name at the endpoint (e.g. gpt-4o-mini, or the served id)."})
    base_url: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (default: OpenAI / OPENAI_BASE_URL)."
        },
    )
    mode: str = field(
        default="per_capability",
        metadata={
            "help": "per_capability: 2 calls per pair per capability (the paper); joint: 2 calls per pair, "
            "one JSON verdict for every capability.",
            "choices": MODES,
        },
    )
    language: str = field(
        default="en",
        metadata={"help": "Built-in prompt language: en, or zh (the paper's prompt).", "choices": LANGUAGES},
    )
    template: str | None = field(
        default=None,
        metadata={"help": "A YAML prompt template file overriding the built-in one (see docs/labeling.md)."},
    )
    categories: str = field(
        default="paper", metadata={"help": "Category set: 'paper' or a YAML file of {category: [capabilities]}."}
    )
    data_format: str = field(
        default="auto",
        metadata={
            "help": "auto, mtmc (ranked lists) or trl (prompt/chosen/rejected).",
            "choices": ("auto", "mtmc", "trl"),
        },
    )
    lower_rank_is_better: bool = field(
        default=True, metadata={"help": "Ranked data: rank 1 beats rank 2 (mtmc-rlhf). False when higher is better."}
    )
    skip_invalid: bool = field(
        default=False, metadata={"help": "Skip malformed records (counted in the summary) instead of stopping."}
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "Environment variable holding the API key (never written anywhere)."},
    )
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature of the judge (0: deterministic)."})
    seed: int | None = field(default=None, metadata={"help": "Seed sent to the endpoint, if it supports one."})
    max_completion_tokens: int | None = field(
        default=None,
        metadata={"help": "Answer length cap (default: 32 per_capability, 32 + 24 per capability joint)."},
    )
    response_format: str = field(
        default="auto",
        metadata={
            "help": "joint mode: auto (JSON mode if the server accepts it, else lenient parsing), "
            "json_object, or none.",
            "choices": RESPONSE_FORMATS,
        },
    )
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at most."})
    timeout: float = field(
        default=60.0,
        metadata={
            "help": "Seconds without an answer before the judge is checked (GET /models): if it is up, keep waiting "
            "(up to 20x in all); if not, abandon and retry."
        },
    )
    max_retries: int = field(
        default=6, metadata={"help": "Retries of a request on 429, 5xx, timeouts, dropped connections, bad bodies."}
    )
    backoff_base: float = field(default=1.0, metadata={"help": "First retry delay in seconds (doubles each retry)."})
    backoff_max: float = field(default=60.0, metadata={"help": "Largest retry delay in seconds."})
    budget_calls: int | None = field(
        default=None, metadata={"help": "Stop sending requests after this many (everything so far is kept)."}
    )
    budget_tokens: int | None = field(
        default=None, metadata={"help": "Stop sending requests once this many tokens (in + out) were used."}
    )
    price_table: str | None = field(
        default=None,
        metadata={"help": "JSON/YAML {model: {input: $, output: $}} per million tokens (overrides built-in)."},
    )
    price_input_per_million: float | None = field(
        default=None, metadata={"help": "Price of 1M input tokens in USD (overrides the table)."}
    )
    price_output_per_million: float | None = field(
        default=None, metadata={"help": "Price of 1M output tokens in USD (overrides the table)."}
    )
    cache: str | None = field(
        default=None, metadata={"help": "SQLite cache file (default: OUTPUT/cache.sqlite). Reruns make zero calls."}
    )
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar."})

    def __post_init__(self):
        self._check_types()
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: use one of {', '.join(MODES)}.")
        if self.language not in LANGUAGES:
            raise ValueError(f"language={self.language!r}: use one of {', '.join(LANGUAGES)}.")
        if self.response_format not in RESPONSE_FORMATS:
            raise ValueError(f"response_format={self.response_format!r}: use one of {', '.join(RESPONSE_FORMATS)}.")
        if self.concurrency < 1:
            raise ValueError(f"concurrency={self.concurrency}: needs at least 1.")
        if self.max_retries < 0 or self.timeout <= 0 or self.backoff_base < 0 or self.backoff_max < 0:
            raise ValueError("max_retries, backoff_base and backoff_max must be >= 0 and timeout > 0.")
        for name in ("budget_calls", "budget_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}={value}: must be >= 0.")

    def _check_types(self) -> None:
        # A YAML config can hold anything (`concurrency: lots`): name the option and the expected type.
        kinds = {"str": str, "int": int, "float": float, "bool": bool}
        for option in fields(self):
            value = getattr(self, option.name)
            optional = option.type.endswith("| None")
            kind = kinds[option.type.replace("| None", "").strip()]
            if value is None and optional:
                continue
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, option.name, float(value))
                continue
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                flag = "--" + option.name.replace("_", "-")
                raise ValueError(
                    f"{option.name}={value!r}: must be {'a' if kind is not int else 'an'} {option.type} "
                    f"(the `{option.name}:` config key or {flag})."
                )

    @property
    def cache_path(self) -> str:
        return self.cache or os.path.join(self.output, "cache.sqlite")

    def completion_token_limit(self, num_capabilities: int = 1) -> int:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return 32 if self.mode == "per_capability" else 32 + 24 * num_capabilities

    def to_dict(self) -> dict:
        """All options (there is no secret among them), for the summary."""
        return asdict(self)

    @classmethod
    def field_help(cls) -> dict[str, dict]:
        return {f.name: dict(f.metadata) for f in fields(cls)}
