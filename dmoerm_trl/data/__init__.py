"""Preference data for DMoERM, one package: reading, formats, category sets, splits, tokenization, batching.

Every reader returns the same thing, a ``datasets.Dataset`` of preference pairs in one of TRL's formats, so
``trl.RewardTrainer`` reads it as is:

- ``prompt``: the whole multi-turn context, a list of ``{"role", "content"}`` messages ending with a user turn
  (conversational; mtmc-rlhf ranked lists become this), or a string (TRL's standard text format, kept as text)
- ``chosen`` / ``rejected``: ``[{"role": "assistant", "content": ...}]`` (or strings, for text pairs)
- ``category``: the category key (``"objective_qa"``...), ``""`` when the source has none
- ``pair_id``: a stable id (a hash of the pair's content; repeats of identical pairs get ``-2``, ``-3``... suffixes)
- ``capability``: only in capability label files (the output of ``dmoerm label``)
- ``tools`` (JSON text) / ``chat_template_kwargs``: only when the source has them (passed to the chat template)

Sources: the mtmc-rlhf ranked format (``src`` user turns, ``tgt`` earlier assistant turns, ``response`` candidates,
``rank`` one int per candidate, ``label`` category name), TRL preference files (``prompt``/``chosen``/``rejected``,
text or messages, or implicit-prompt ``chosen``/``rejected``) with an optional ``category`` column; ``.jsonl``,
``.json`` or ``.parquet`` files, a directory of them, a ``datasets.Dataset`` or a hub/local dataset.

Modules: ``readers`` (files -> records), ``formats`` (records -> pairs, per format), ``loading``
(``load_preference_pairs``, ``load_capability_labels``), ``categories`` (category sets), ``sources``
(``datasets.load_dataset``, category maps), ``splits`` (categories checked against a model, splits by
conversation, capability labels per expert), ``tokenize`` (as TRL's RewardTrainer; what the router reads),
``batching`` (``pad_sequences``), ``errors`` (``DataError`` and its two kinds, the two reports).

Bad records raise :class:`DataValidationError` naming the file, the record and the field; with
``skip_invalid=True`` they are skipped, counted in a :class:`LoadReport` and logged. Nothing is dropped silently.

Example:
    >>> import json, tempfile, os
    >>> from dmoerm_trl.data import load_preference_pairs, PAPER_CATEGORIES
    >>> path = os.path.join(tempfile.mkdtemp(), "ranked.jsonl")
    >>> record = {"src": ["Hi!", "What is 2+2?"], "tgt": ["Hello!"], "response": ["4", "5", "22"],
    ...           "rank": [1, 2, 3], "label": "客观知识问答"}
    >>> _ = open(path, "w", encoding="utf-8").write(json.dumps(record, ensure_ascii=False) + "\\n")
    >>> pairs = load_preference_pairs(path)
    >>> len(pairs), pairs[0]["category"], pairs[0]["chosen"][0]["content"], pairs[0]["rejected"][0]["content"]
    (3, 'objective_qa', '4', '5')
    >>> [m["role"] for m in pairs[0]["prompt"]]
    ['user', 'assistant', 'user']
    >>> PAPER_CATEGORIES["chitchat"][:2]
    ['conversational_sense', 'proactivity']
"""

from .categories import (
    PAPER_CAPABILITY_NAMES_ZH,
    PAPER_CATEGORIES,
    PAPER_CATEGORY_NAMES_ZH,
    CategorySpec,
    load_category_set,
    load_category_spec,
)
from .errors import DataError, DataReport, DataValidationError, LoadReport, TrainingDataError
from .formats import conversation_key, extract_text_prompt, is_text_pairs, pair_features
from .loading import load_capability_labels, load_preference_pairs, write_jsonl_atomic
from .sources import load_dataset_split, parse_category_map

__all__ = [
    "PAPER_CAPABILITY_NAMES_ZH",
    "PAPER_CATEGORIES",
    "PAPER_CATEGORY_NAMES_ZH",
    "CategorySpec",
    "DataError",
    "DataReport",
    "DataValidationError",
    "LoadReport",
    "TrainingDataError",
    "conversation_key",
    "extract_text_prompt",
    "is_text_pairs",
    "load_capability_labels",
    "load_category_set",
    "load_category_spec",
    "load_dataset_split",
    "load_preference_pairs",
    "pair_features",
    "parse_category_map",
    "write_jsonl_atomic",
]
