"""Scoring texts and chat conversations with a DMoERM (tokenize, batch, read the outputs)."""

from __future__ import annotations

import torch


@torch.no_grad()
def score_conversations(model, conversations, tokenizer, batch_size: int = 16, max_length: int | None = None):
    """A list of ``{reward, category, router_prob, capabilities}`` dicts, one per text or chat conversation.

    Conversations are rendered with the tokenizer's chat template. Encoders (pooling "first") get their special
    tokens ([CLS] ... [SEP]); decoders get the template's text as is.

    Example:
        >>> score_conversations(model, ["Q: 2+2? A: 4"], tokenizer)  # doctest: +SKIP
        [{'reward': 0.31, 'category': 'objective_qa', 'router_prob': 0.88, 'capabilities': {...}}]
    """
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token = tokenizer.eos_token first")
    texts = [c if isinstance(c, str) else tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    max_length = max_length or model.config.max_position_embeddings
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=max_length is not None,
                max_length=max_length,
                add_special_tokens=model.config.pooling == "first",
            ).to(device)
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            for i in range(len(batch["input_ids"])):
                category = model.config.category_names[int(out.category_ids[i])]
                results.append(
                    {
                        "reward": float(out.logits[i, 0]),
                        "category": category,
                        "router_prob": float(out.router_probs[i, out.category_ids[i]]),
                        "capabilities": {
                            capability: float(out.capability_rewards[i, j])
                            for j, capability in enumerate(model.config.categories[category])
                        },
                    }
                )
    finally:
        model.train(was_training)
    return results
