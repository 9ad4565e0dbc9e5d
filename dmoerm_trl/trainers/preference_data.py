"""Kept for imports written before the data layer moved: the preparation of preference data for the DMoERM phases
lives in :mod:`dmoerm_trl.data.splits` (categories, splits, capability labels) and :mod:`dmoerm_trl.data.tokenize`
(tokenization as TRL's RewardTrainer, what the router reads)."""

from ..data.errors import DataReport, TrainingDataError  # noqa: F401
from ..data.formats import conversation_key  # noqa: F401
from ..data.splits import (  # noqa: F401
    SPLITS,
    resolve_categories,
    rows_with_ids,
    select_capability_labels,
    split_by_conversation,
)
from ..data.tokenize import (  # noqa: F401
    chat_template_kwargs,
    routing_prompt,
    routing_prompts,
    tokenize_messages,
    tokenize_pairs,
    tokenize_text,
)
