"""The shared trunk: the bottom ``trunk_layers`` layers of the backbone carry no adapters, so they run once per
sequence and every adapter branch (the router and each capability expert) runs only the layers above them.

With ``trunk_layers=0`` (the default, the paper's design) every adapter spans every layer and nothing here runs.
With ``trunk_layers=L`` on an ``N``-layer backbone, scoring with ``k`` experts costs ``L + (1 + k) * (N - L)`` layer
passes instead of ``(1 + k) * N``, and each adapter holds ``(N - L) / N`` of the parameters.

How a branch starts at layer ``L`` without touching the backbone's code: the backbone's layer list is swapped for a
slice of it for the duration of one call (the same layer modules, so weights, hooks and adapters are unchanged), and a
forward pre-hook hands the first layer of the slice the trunk's hidden states in place of whatever the embeddings
produced. The backbone still computes its embeddings, attention mask and position embeddings as usual (cheap), so
this works for any architecture whose layers are a homogeneous ``nn.ModuleList``; `check_trunk_split` verifies the
split against an unsplit forward when the model is built and refuses backbones where it would change the outputs.
"""

from __future__ import annotations

import contextlib
import threading
import weakref

import torch
from torch import nn

# One lock per backbone: while one thread runs a window, another thread's call on the same backbone must not
# swap the layer list under it (different models never wait for each other).
_WINDOW_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WINDOW_LOCKS_GUARD = threading.Lock()


def _window_lock(base: nn.Module) -> threading.RLock:
    with _WINDOW_LOCKS_GUARD:
        lock = _WINDOW_LOCKS.get(base)
        if lock is None:
            lock = _WINDOW_LOCKS[base] = threading.RLock()
        return lock


def _base(backbone) -> nn.Module:
    return backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone


def decoder_layers(backbone) -> tuple[nn.Module, str, nn.ModuleList]:
    """``(parent module, attribute name, layer list)`` of the backbone's transformer layers (``model.layers`` for
    Llama/Qwen2, ``encoder.layer`` for BERT, ...): the first ``nn.ModuleList`` with ``num_hidden_layers`` entries."""
    base = _base(backbone)
    count = getattr(base.config, "num_hidden_layers", None)
    for name, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            parent_name, _, attribute = name.rpartition(".")
            return (base.get_submodule(parent_name) if parent_name else base), attribute, module
    raise ValueError(
        f"cannot find the transformer layers of {type(base).__name__} (an nn.ModuleList of num_hidden_layers="
        f"{count} modules); use trunk_layers=0 with this backbone"
    )


def validate_trunk_layers(backbone, trunk_layers: int, task_mode: str) -> tuple[str, int]:
    """Check ``trunk_layers`` against the backbone; returns ``(layer list attribute name, number of layers)``."""
    if trunk_layers == 0:
        return "", 0
    if task_mode == "full":
        raise ValueError(
            "trunk_layers > 0 needs task_mode='lora': with task_mode='full' each category fine-tunes its whole base "
            "copy, so there is no frozen trunk to share; use trunk_layers=0"
        )
    _, attribute, layers = decoder_layers(backbone)
    if not 0 < trunk_layers < len(layers):
        raise ValueError(
            f"trunk_layers must be between 0 and {len(layers) - 1} for this backbone ({len(layers)} layers; the top "
            f"layers carry the adapters), got {trunk_layers}"
        )
    layer_types = getattr(_base(backbone).config, "layer_types", None)
    if layer_types and len(set(layer_types)) > 1:
        raise ValueError(
            f"trunk_layers > 0 is not supported for {type(_base(backbone)).__name__}: its layers differ in attention "
            f"type ({sorted(set(layer_types))}), which a split forward would misassign; use trunk_layers=0"
        )
    return attribute, len(layers)


@contextlib.contextmanager
def layer_window(backbone, start: int, stop: int | None = None, hidden_in: torch.Tensor | None = None):
    """Run only ``layers[start:stop]`` in the calls made inside the block; ``hidden_in`` replaces the first of them's
    input hidden states. Yields a dict whose ``"hidden"`` holds the last window layer's output after the call.
    Thread-safe: calls on one backbone from several threads take turns (each holds the window for its whole call)."""
    with _window_lock(_base(backbone)):
        parent, attribute, layers = decoder_layers(backbone)  # under the lock: no other thread's window is in place
        with _layer_window_unlocked(parent, attribute, layers, start, stop, hidden_in) as captured:
            yield captured


@contextlib.contextmanager
def _layer_window_unlocked(parent, attribute, layers, start, stop, hidden_in):
    window = layers[start:stop]
    captured: dict[str, torch.Tensor] = {}
    handles = []
    if hidden_in is not None:

        def replace_input(module, args, kwargs):
            if args:
                return (hidden_in, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden_in}

        handles.append(window[0].register_forward_pre_hook(replace_input, with_kwargs=True))

    def capture_output(module, args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output

    handles.append(window[-1].register_forward_hook(capture_output))
    parent._modules[attribute] = window
    try:
        yield captured
    finally:
        parent._modules[attribute] = layers
        for handle in handles:
            handle.remove()


def check_trunk_split(model) -> None:
    """Build-time check that "trunk, then branch" gives the unsplit forward's outputs on this backbone (a few tokens,
    no adapters); skipped while parameters are not materialised (meta device, DeepSpeed ZeRO-3 partitions)."""
    parameter = next(model.backbone.parameters())
    if parameter.device.type == "meta" or parameter.numel() == 0 or hasattr(parameter, "ds_id"):
        return
    vocab = int(getattr(_base(model.backbone).config, "vocab_size", 8) or 8)
    input_ids = (torch.arange(7, device=parameter.device) % max(vocab - 1, 1) + 1).view(1, -1)
    input_ids, attention_mask, position_ids = model._prepare_inputs(input_ids, None, None)
    attention_mask = torch.ones_like(attention_mask)
    was_training = model.backbone.training
    model.backbone.eval()
    try:
        with torch.no_grad():
            kwargs = model._backbone_kwargs(input_ids, attention_mask, position_ids, ["__base__"], model.backbone)
            reference = model.backbone(**kwargs).last_hidden_state
            split = model._branch(kwargs, model.backbone, model._trunk(input_ids, attention_mask, position_ids))
    finally:
        model.backbone.train(was_training)
    difference = (reference.float() - split.float()).abs().max().item()
    scale = reference.float().abs().max().item() or 1.0
    if not difference <= 1e-3 * scale:
        raise ValueError(
            f"trunk_layers={model.config.trunk_layers} is not supported for {type(_base(model.backbone)).__name__}: "
            f"running its layers split at layer {model.config.trunk_layers} changes the outputs (max difference "
            f"{difference:.3g}); use trunk_layers=0"
        )
