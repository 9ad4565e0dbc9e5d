"""Where preference data comes from besides local files, and how its categories are named: ``datasets.load_dataset``
splits (TRL scripts' ``dataset_name`` / ``dataset_config`` / ``dataset_train_split``) and ``category_map`` parsing.
Both are re-exported by :mod:`dmoerm_trl.data`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def parse_category_map(value: Mapping | str | os.PathLike) -> dict[str, str]:
    """A ``{column value: category}`` mapping from a mapping, a YAML/JSON file, or ``"a=objective_qa,b=chitchat"``.

    Example:
        >>> parse_category_map("gsm8k=objective_qa, oasst=chitchat")
        {'gsm8k': 'objective_qa', 'oasst': 'chitchat'}
    """
    source = "category_map"
    if isinstance(value, (str, os.PathLike)) and Path(value).is_file():
        from ..paths import read_yaml_file

        source = str(value)
        value = read_yaml_file(value)
    elif isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
        if not items or any(item.count("=") != 1 for item in items):
            raise ValueError(
                f"category_map={value!r}: neither an existing file nor 'value=category' items. Fix: give a YAML/JSON "
                "file of {value: category} or 'value=category,value=category'."
            )
        value = dict((part.strip() for part in item.split("=")) for item in items)
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{source}: expected a non-empty mapping of column values to categories, got {value!r}")
    bad = [key for key, category in value.items() if not isinstance(category, str) or not category.strip()]
    if bad:
        raise ValueError(f"{source}: the values {bad[:3]} map to no category name. Fix: map each value to a category")
    return {str(key): category.strip() for key, category in value.items()}


def load_dataset_split(name: str, config: str | None = None, split: str = "train"):
    """One split of a dataset through ``datasets.load_dataset``: a hub id or a local folder of data files, as TRL's
    scripts take ``dataset_name`` / ``dataset_config`` / ``dataset_train_split``.

    Raises:
        ValueError: the dataset, config or split cannot be loaded (the message names them and the fix).

    Example:
        >>> from dmoerm_trl.data import load_preference_pairs
        >>> pairs = load_preference_pairs(load_dataset_split("trl-lib/ultrafeedback_binarized"))  # doctest: +SKIP
    """
    import datasets

    where = f"dataset_name={name!r}" + (f", dataset_config={config!r}" if config else "") + f", split={split!r}"
    try:
        loaded = datasets.load_dataset(name, config, split=split)
    except ValueError as err:
        message = str(err).splitlines()[0]
        fix = "use one of the splits it names" if "split" in message.lower() else "check the name and config"
        raise ValueError(f"{where}: {message}. Fix: {fix}") from None
    except (FileNotFoundError, ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"{where}: cannot be loaded ({message}). Fix: a local folder of .jsonl/.json/.parquet files, a dataset "
            "saved on this machine, or a hub id with network access (HF_HUB_OFFLINE unset)"
        ) from None
    if not isinstance(loaded, datasets.Dataset):  # an IterableDataset would need streaming=False
        raise TypeError(f"{where}: got a {type(loaded).__name__}; load one split as a Dataset")
    return loaded
