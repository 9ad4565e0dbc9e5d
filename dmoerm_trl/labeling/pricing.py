"""Estimated API cost: a small built-in price table (USD per million tokens), overridable from a file or flags.

Prices change; the built-in numbers are list prices at the time of writing and only an estimate. A model not in
the table costs 0 and the summary says ``"price_known": false`` (local judges cost nothing anyway).

Example:
    >>> from dmoerm_trl.labeling.pricing import resolve_price
    >>> price = resolve_price("gpt-4o-mini")
    >>> price.known, round(price.cost(1_000_000, 100_000), 4)
    (True, 0.21)
    >>> resolve_price("my-local-judge", input_per_million=0.5).cost(2_000_000, 0)
    1.0
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

# model -> (input USD per 1M tokens, output USD per 1M tokens)
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-3.5-turbo": (0.50, 1.50),
}


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float
    known: bool

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input_per_million + tokens_out * self.output_per_million) / 1_000_000


def load_price_table(path: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """Read ``{model: {input: X, output: Y}}`` (USD per million tokens) from a JSON or YAML file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping {{model: {{input: X, output: Y}}}}.")
    table = {}
    for model, entry in data.items():
        try:
            table[str(model)] = (float(entry["input"]), float(entry["output"]))
        except (TypeError, KeyError, ValueError):
            raise ValueError(
                f"{path}, model {model!r}: needs numeric 'input' and 'output' (USD per 1M tokens)."
            ) from None
    return table


def resolve_price(
    model: str,
    table_path: str | os.PathLike | None = None,
    input_per_million: float | None = None,
    output_per_million: float | None = None,
) -> Price:
    """The price of ``model``: flags override the file, the file overrides the built-in table."""
    table = dict(DEFAULT_PRICES)
    if table_path is not None:
        table |= load_price_table(table_path)
    # "gpt-4o-mini-2024-07-18" -> "gpt-4o-mini": the longest known prefix
    match = max((name for name in table if model == name or model.startswith(name + "-")), key=len, default=None)
    base_in, base_out = table[match] if match else (0.0, 0.0)
    known = match is not None or input_per_million is not None or output_per_million is not None
    return Price(
        input_per_million=base_in if input_per_million is None else input_per_million,
        output_per_million=base_out if output_per_million is None else output_per_million,
        known=known,
    )
