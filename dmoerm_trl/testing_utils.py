"""Tiny models and tokenizers built locally, for tests, examples and CI (no hub access needed).

Everything here is deterministic for a given seed and takes well under a second to build.

Example:
    >>> from dmoerm_trl.testing_utils import make_tiny_llama
    >>> path = make_tiny_llama("/tmp/tiny-llama")  # doctest: +SKIP
    >>> # AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
"""

from __future__ import annotations

import os
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The chat templates of three model families, verbatim in what they render (SmolLM2-Instruct: ChatML with a default
# system turn; Llama-3-Instruct; Qwen2.5-Instruct: ChatML with its default system turn, tool branches left out).
CHAT_TEMPLATES = {
    "smollm2": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
        "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
        " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
        "{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "qwen2": (
        "{%- if messages[0]['role'] == 'system' %}"
        "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
        "{%- else %}"
        "{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
        "{%- endif %}"
        "{%- for message in messages %}"
        "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
        "(message.role == 'assistant') %}"
        "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
    ),
}

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea. The sea is blue and deep and wide.",
    "Let's play a game: you are a pirate captain. Arr, welcome aboard, matey!",
    "How are you today? I am fine, thank you, and you?",
    "Explain why the sky is blue. Sunlight scatters off air molecules; blue scatters most.",
    "Solve 12 * 7. The answer is 84 because 12 times 7 equals 84.",
    "Is it better to rent or to buy a house? It depends on prices, plans and savings.",
    "user assistant system correctness relevance depth logic reasoning creativity fluency",
    "你好，今天天气怎么样？ 角色扮演 闲聊 主观知识问答 客观知识问答 文本创作",
    "0123456789 ,.;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
]


def _train_bpe(special_tokens: list[str], vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tokenizer


def make_tiny_tokenizer(path: str | os.PathLike | None = None, pad_token: bool = True):
    """A byte-level BPE tokenizer with a ChatML chat template (like SmolLM2's), EOS ``<|im_end|>``.

    With ``pad_token=False`` the tokenizer has no pad token (to test the error path).
    """
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(specials),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>" if pad_token else None,
        padding_side="right",
        model_max_length=256,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    if path is not None:
        tokenizer.save_pretrained(path)
    return tokenizer


def make_tiny_chat_tokenizer(family: str, path: str | os.PathLike | None = None):
    """A byte-level BPE tokenizer with the special tokens and chat template of ``family`` (one of
    :data:`CHAT_TEMPLATES`: ``"smollm2"``, ``"llama3"``, ``"qwen2"``), and a pad token; right padding.

    Example:
        >>> tokenizer = make_tiny_chat_tokenizer("llama3")
        >>> tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
        '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>'
    """
    from transformers import PreTrainedTokenizerFast

    if family not in CHAT_TEMPLATES:
        raise ValueError(f"family must be one of {sorted(CHAT_TEMPLATES)}, got {family!r}")
    if family == "llama3":
        specials = [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<pad>",
        ]
        names = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "unk_token": "<|end_of_text|>"}
    else:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
        names = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>"}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(specials), pad_token="<pad>", padding_side="right", model_max_length=256, **names
    )
    tokenizer.chat_template = CHAT_TEMPLATES[family]
    if path is not None:
        tokenizer.save_pretrained(path)
    return tokenizer


def make_tiny_bert_tokenizer(path: str | os.PathLike | None = None):
    """A WordPiece tokenizer with [CLS] ... [SEP] post-processing (BERT style)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    backend.train_from_iterator(
        _CORPUS * 4, trainer=trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials, show_progress=False)
    )
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        eos_token="[SEP]",  # BERT has no EOS; TRL appends eos_token
        model_max_length=128,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    if path is not None:
        tokenizer.save_pretrained(path)
    return tokenizer


def make_tiny_llama(
    path: str | os.PathLike | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    causal_lm: bool = True,
    seed: int = 0,
    tokenizer=None,
):
    """A tiny random Llama (with its tokenizer saved beside it when ``path`` is given). Returns the model or path."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = tokenizer if tokenizer is not None else make_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if path is None:
        return model
    Path(path).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def make_tiny_bert(
    path: str | os.PathLike | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
    max_position_embeddings: int = 128,
):
    """A tiny random BERT encoder (with its WordPiece tokenizer saved beside it). Returns the model or path."""
    import torch
    from transformers import AutoModel, BertConfig

    tokenizer = make_tiny_bert_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    if path is None:
        return model
    Path(path).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def randomize_adapters(model, std: float = 0.5, seed: int = 0) -> None:
    """Give every LoRA B matrix random values, so that untrained adapters (B=0 at init) differ from each other.

    Tests use it to make sure rewards really depend on which expert ran.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_B." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
