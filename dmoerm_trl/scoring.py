"""Scoring texts and chat conversations with a DMoERM (tokenize, batch, read the outputs)."""

from __future__ import annotations

import torch

from .models.dmoerm._prompt_boundary import PromptBoundaryError, assistant_opener_ids, prompt_mask_from_opener
from .truncation import encode_keep_end, warn_truncated


def check_conversation(conversation, where: str):
    """``conversation`` if it is a non-empty text or a non-empty list of ``{"role", "content"}`` messages, else a
    ``ValueError`` naming ``where`` (a file line or a list index) and what is wrong.

    Example:
        >>> check_conversation("Q: 2+2? A: 4", "conversation 0")
        'Q: 2+2? A: 4'
    """
    if isinstance(conversation, str):
        if not conversation.strip():
            raise ValueError(f"{where}: the text is empty; give the conversation to score")
        return conversation
    if not isinstance(conversation, list):
        raise ValueError(
            f"{where}: a conversation must be a string (`text`) or a list of messages (`messages`), got "
            f"{type(conversation).__name__} {conversation!r:.40}"
        )
    if not conversation:
        raise ValueError(f"{where}: `messages` is empty; give at least the user turn and the response")
    for index, message in enumerate(conversation):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or "content" not in message:
            raise ValueError(f'{where}: message {index} must be {{"role": str, "content": str}}, got {message!r:.60}')
        if not isinstance(message["content"], str):
            raise ValueError(
                f"{where}: message {index} `content` must be a string, got {type(message['content']).__name__}"
            )
    if conversation[-1]["role"] != "assistant":
        raise ValueError(
            f"{where}: the last message is the {conversation[-1]['role']}'s, but a reward scores a response; end "
            "`messages` with the assistant's response to score"
        )
    return conversation


@torch.no_grad()
def score_conversations(
    model, conversations, tokenizer, batch_size: int = 16, max_length: int | None = None, categories=None
):
    """A list of ``{reward, category, router_prob, capability_rewards, truncated}`` dicts, one per text or conversation.

    Conversations are rendered with the tokenizer's chat template. Encoders (pooling "first") get their special
    tokens ([CLS] ... [SEP]); decoders get the template's text as is. A conversation longer than ``max_length``
    (default: the backbone's limit) keeps its end, so the response is always scored: its oldest tokens are dropped,
    ``truncated`` is true and the count is logged (see :mod:`dmoerm_trl.truncation`). The router reads the prompt
    only (up to the template's last assistant-turn opener), so a text string must already be chat-templated;
    ``categories`` (one name per conversation, or one for all) bypasses the router (``router_prob`` is then ``None``).

    Example:
        >>> score_conversations(model, ["Q: 2+2? A: 4"], tokenizer)  # doctest: +SKIP
        [{'reward': 0.31, 'category': 'objective_qa', 'router_prob': 0.88, 'capability_rewards': {...}}]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token = tokenizer.eos_token first")
    if isinstance(conversations, (str, dict)):
        raise ValueError("conversations must be a list (of texts or of message lists); wrap a single one in [...]")
    conversations = [check_conversation(c, f"conversation {i}") for i, c in enumerate(conversations)]
    texts = [c if isinstance(c, str) else tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    max_length = max_length or model.config.max_position_embeddings
    add_special_tokens = model.config.pooling == "first"
    encoded, truncated = encode_keep_end(tokenizer, texts, max_length, add_special_tokens=add_special_tokens)
    warn_truncated("compute_rewards", sum(truncated), len(texts), max_length)
    # A model without a recorded prompt boundary (built without a tokenizer, or saved before prompt-only routing)
    # takes it from the tokenizer given here, when its chat template has one (the config is left as it is).
    opener = None
    if not model.config.assistant_opener_ids and getattr(tokenizer, "chat_template", None):
        try:
            opener = assistant_opener_ids(tokenizer)
        except PromptBoundaryError:
            opener = None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results = []
    try:
        for start in range(0, len(texts), batch_size):
            chunk = {"input_ids": encoded[start : start + batch_size]}
            batch = tokenizer.pad(chunk, padding=True, return_tensors="pt").to(device)
            chunk_categories = None
            if categories is not None:
                chunk_categories = (
                    categories if isinstance(categories, (str, int)) else list(categories[start : start + batch_size])
                )
            try:
                prompt_mask = None
                if opener is not None and chunk_categories is None:
                    # A row without the opener gets an empty mask, which the model refuses naming the row.
                    prompt_mask = prompt_mask_from_opener(batch["input_ids"], batch["attention_mask"], opener)[0]
                out = model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    categories=chunk_categories,
                    prompt_mask=prompt_mask,
                )
            except PromptBoundaryError as error:
                if error.row is None:
                    raise
                raise PromptBoundaryError(
                    start + error.row,
                    f"conversation {start + error.row}: the router reads the prompt only, but this text has no "
                    "assistant-turn opener to end the prompt. Fix: pass it as chat messages ([{'role': 'user', ...}, "
                    "{'role': 'assistant', ...}]) or as text rendered with the tokenizer's chat template, or give "
                    "categories= to bypass the router",
                ) from None
            for i in range(len(batch["input_ids"])):
                category = model.config.category_names[int(out.category_ids[i])]
                probs = out.router_probs
                results.append(
                    {
                        "reward": float(out.logits[i, 0]),
                        "category": category,
                        "router_prob": None if probs is None else float(probs[i, out.category_ids[i]]),
                        "capability_rewards": {
                            capability: float(out.capability_rewards[i, j])
                            for j, capability in enumerate(model.config.categories[category])
                        },
                        "truncated": truncated[start + i],
                    }
                )
    finally:
        model.train(was_training)
    return results
