"""wrap_with_adapters: the one-pass adapter injection builds exactly what PEFT's add_adapter loop builds."""

from __future__ import annotations

import doctest
import logging

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModel, AutoModelForCausalLM

from dmoerm_trl.models.dmoerm import _lora_injection as adapter_injection
from dmoerm_trl.models.dmoerm._lora_injection import fast_path_unsupported_reason, wrap_with_adapters
from dmoerm_trl.testing_utils import make_tiny_llama, randomize_adapters

NAMES = ["router", "chitchat__task", "chitchat__empathy", "objective_qa__task", "objective_qa__logic"]

# Each entry: kwargs of the LoraConfig (a fresh config per build: PEFT mutates the config it is given).
CONFIGS = {
    "q_v": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
    # Without layers_pattern PEFT finds the layer index only under a prefix ("model.layers.1.", not "layers.1."):
    # this one runs on the causal LM (see CAUSAL_LM_CONFIGS); the bare-backbone case is tested below.
    "top_layer_only": {"r": 8, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "layers_to_transform": [1]},
    "top_layers_with_pattern": {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "layers_to_transform": [2, 3],
        "layers_pattern": "layers",
    },
    "auto_targets": {"r": 4, "target_modules": None},
    "all_linear_no_dropout_lora_bias": {
        "r": 4,
        "target_modules": "all-linear",
        "lora_dropout": 0.0,
        "lora_bias": True,
    },
    "regex_rslora_patterns": {
        "r": 8,
        "target_modules": r".*\.(q_proj|o_proj)",
        "use_rslora": True,
        "rank_pattern": {"o_proj": 2},
        "alpha_pattern": {"q_proj": 3},
    },
    "exclude_gaussian": {
        "r": 4,
        "target_modules": ["q_proj", "k_proj"],
        "exclude_modules": ["layers.0.self_attn.k_proj"],
        "init_lora_weights": "gaussian",
    },
    "inference_mode": {"r": 4, "target_modules": ["q_proj", "v_proj"], "inference_mode": True},
}
CAUSAL_LM_CONFIGS = {"top_layer_only"}


@pytest.fixture(scope="module")
def four_layer_llama_path(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama-4"), num_layers=4)


def load_backbone(path, dtype=torch.float32, causal_lm=False):
    return (AutoModelForCausalLM if causal_lm else AutoModel).from_pretrained(path, dtype=dtype)


def build_pair(path, config_kwargs, names=NAMES, dtype=torch.float32, seed=0, causal_lm=False):
    """(PEFT's loop, the fast path): same backbone, same seed, a fresh config each."""
    torch.manual_seed(seed)
    config = LoraConfig(**config_kwargs)  # one config object for every adapter, as the model does
    reference = get_peft_model(load_backbone(path, dtype, causal_lm), config, adapter_name=names[0])
    for name in names[1:]:
        reference.add_adapter(name, config)
    torch.manual_seed(seed)
    fast = wrap_with_adapters(load_backbone(path, dtype, causal_lm), names, LoraConfig(**config_kwargs))
    return reference, fast


def parameter_table(model):
    return [(name, tuple(p.shape), p.dtype, p.requires_grad) for name, p in model.named_parameters()]


def assert_same_structure(reference, fast):
    assert parameter_table(fast) == parameter_table(reference)
    assert list(fast.peft_config) == list(reference.peft_config)
    for name in reference.peft_config:
        assert fast.peft_config[name].to_dict() == reference.peft_config[name].to_dict(), name
    assert fast.active_adapter == reference.active_adapter
    assert fast.base_model.targeted_module_names == reference.base_model.targeted_module_names
    for (name, layer), (_, ref_layer) in zip(fast.named_modules(), reference.named_modules()):
        if hasattr(ref_layer, "scaling") and hasattr(ref_layer, "lora_A"):
            assert (layer.r, layer.scaling, layer.active_adapters) == (
                ref_layer.r,
                ref_layer.scaling,
                ref_layer.active_adapters,
            ), name


def outputs(model, input_ids, adapter):
    model.set_adapter(adapter)
    with torch.no_grad():
        output = model(input_ids=input_ids)
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_fast_path_equals_peft_loop(four_layer_llama_path, config_name):
    config_kwargs = CONFIGS[config_name]
    assert fast_path_unsupported_reason(LoraConfig(**config_kwargs)) is None
    reference, fast = build_pair(four_layer_llama_path, config_kwargs, causal_lm=config_name in CAUSAL_LM_CONFIGS)
    assert_same_structure(reference, fast)
    # Created in the loop's order: the same seed gives the same initial weights.
    fast_state, reference_state = fast.state_dict(), reference.state_dict()
    assert list(fast_state) == list(reference_state)
    for key, value in reference_state.items():
        assert torch.equal(fast_state[key], value), key
    if config_name == "top_layer_only":
        assert all(".layers.1." in key for key in fast.base_model.targeted_module_names)
    if config_name == "top_layers_with_pattern":
        targeted = fast.base_model.targeted_module_names
        assert {key.split("layers.")[1].split(".")[0] for key in targeted} == {"2", "3"}
        assert not any("lora_" in name for name in fast_state if ".layers.0." in name or ".layers.1." in name)

    # Given equal (random, distinct) adapter weights, each adapter computes the same forward.
    randomize_adapters(reference, seed=1)
    fast.load_state_dict(reference.state_dict())
    reference.eval(), fast.eval()
    input_ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    per_adapter = {}
    for adapter in NAMES:
        expected = outputs(reference, input_ids, adapter)
        torch.testing.assert_close(outputs(fast, input_ids, adapter), expected, rtol=0, atol=0)
        per_adapter[adapter] = expected
    assert not torch.allclose(per_adapter[NAMES[0]], per_adapter[NAMES[-1]])  # the adapters really differ


def test_layers_to_transform_without_pattern_on_a_bare_backbone_fails_like_peft(four_layer_llama_path):
    """A bare ``LlamaModel`` names its blocks ``layers.N.``: PEFT needs ``layers_pattern="layers"`` to find N."""
    config_kwargs = {"r": 4, "target_modules": ["q_proj", "v_proj"], "layers_to_transform": [3]}
    with pytest.raises(ValueError, match="not found in the base model") as peft_error:
        build_pair(four_layer_llama_path, config_kwargs)
    with pytest.raises(ValueError, match="not found in the base model") as fast_error:
        wrap_with_adapters(load_backbone(four_layer_llama_path), NAMES, LoraConfig(**config_kwargs))
    assert str(fast_error.value) == str(peft_error.value)


def test_fast_path_on_bf16_backbone_upcasts_adapters_like_peft(tiny_llama_path):
    reference, fast = build_pair(tiny_llama_path, CONFIGS["q_v"], dtype=torch.bfloat16)
    assert_same_structure(reference, fast)
    dtypes = {name: p.dtype for name, p in fast.named_parameters()}
    assert dtypes["base_model.model.layers.0.self_attn.q_proj.lora_A.objective_qa__logic.weight"] == torch.float32
    assert dtypes["base_model.model.layers.0.self_attn.q_proj.base_layer.weight"] == torch.bfloat16
    for key, value in reference.state_dict().items():
        assert torch.equal(fast.state_dict()[key], value), key


def test_mixed_adapter_batch(tiny_llama_path):
    threads = torch.get_num_threads()
    model = wrap_with_adapters(load_backbone(tiny_llama_path), NAMES, LoraConfig(**CONFIGS["q_v"]))
    assert torch.get_num_threads() == threads  # the one-thread build restores the caller's setting
    randomize_adapters(model, seed=2)
    model.eval()
    input_ids = torch.randint(0, 100, (3, 6), generator=torch.Generator().manual_seed(1))
    rows = ["chitchat__empathy", "router", "objective_qa__logic"]
    with torch.no_grad():
        mixed = model(input_ids=input_ids, adapter_names=rows).last_hidden_state
    for row, adapter in enumerate(rows):
        torch.testing.assert_close(mixed[row], outputs(model, input_ids, adapter)[row])
    assert not torch.allclose(mixed[0], outputs(model, input_ids, "router")[0])


def test_saved_adapter_loads_in_plain_peft(four_layer_llama_path, tmp_path):
    model = wrap_with_adapters(
        load_backbone(four_layer_llama_path), NAMES, LoraConfig(**CONFIGS["top_layers_with_pattern"])
    )
    randomize_adapters(model, seed=3)
    model.eval()
    adapter = "chitchat__empathy"
    model.save_pretrained(tmp_path, selected_adapters=[adapter])
    folder = tmp_path / adapter  # PEFT saves a non-"default" adapter in a subfolder named after it
    assert (folder / "adapter_model.safetensors").exists() and (folder / "adapter_config.json").exists()
    loaded = PeftModel.from_pretrained(load_backbone(four_layer_llama_path), folder, adapter_name=adapter).eval()
    assert loaded.peft_config[adapter].layers_to_transform == [2, 3]
    input_ids = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = outputs(model, input_ids, adapter)
        torch.testing.assert_close(loaded(input_ids=input_ids).last_hidden_state, expected, rtol=0, atol=0)


def test_unsupported_config_falls_back_to_peft_loop(tiny_llama_path, caplog):
    config_kwargs = {"r": 4, "target_modules": ["q_proj", "v_proj"], "use_dora": True}
    assert fast_path_unsupported_reason(LoraConfig(**config_kwargs)) == "LoraConfig.use_dora=True (a LoRA variant)"
    with caplog.at_level(logging.WARNING, logger="dmoerm_trl.models.dmoerm._lora_injection"):
        reference, fast = build_pair(tiny_llama_path, config_kwargs)
    assert "using PEFT's add_adapter loop because LoraConfig.use_dora=True" in caplog.text
    assert_same_structure(reference, fast)
    assert any(".lora_magnitude_vector." in name for name, _ in fast.named_parameters())


def test_changed_peft_internals_fall_back_to_peft_loop(tiny_llama_path, caplog, monkeypatch):
    """A PEFT whose ``_create_and_replace`` no longer has the known signature: the fast path must not guess."""
    from peft.tuners.lora import LoraModel

    original = LoraModel._create_and_replace

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, **kwargs):
        return original(self, config, adapter_name, target, target_name, parent, **kwargs)

    monkeypatch.setattr(LoraModel, "_create_and_replace", _create_and_replace)
    reason = fast_path_unsupported_reason(LoraConfig(**CONFIGS["q_v"]))
    assert reason is not None and "_create_and_replace" in reason
    with caplog.at_level(logging.WARNING, logger="dmoerm_trl.models.dmoerm._lora_injection"):
        reference, fast = build_pair(tiny_llama_path, CONFIGS["q_v"])
    assert "using PEFT's add_adapter loop because peft's LoraModel._create_and_replace" in caplog.text
    assert_same_structure(reference, fast)


def test_fast_false_runs_the_loop_quietly(tiny_llama_path, caplog, monkeypatch):
    called = []
    monkeypatch.setattr(adapter_injection, "_add_adapters_in_one_pass", lambda *args: called.append(args))
    with caplog.at_level(logging.WARNING, logger="dmoerm_trl.models.dmoerm._lora_injection"):
        model = wrap_with_adapters(load_backbone(tiny_llama_path), NAMES, LoraConfig(**CONFIGS["q_v"]), fast=False)
    assert not called and "add_adapter loop" not in caplog.text
    assert list(model.peft_config) == NAMES and model.active_adapter == "router"


def test_single_adapter_and_bad_names(tiny_llama_path):
    model = wrap_with_adapters(load_backbone(tiny_llama_path), ["router"], LoraConfig(**CONFIGS["q_v"]))
    assert list(model.peft_config) == ["router"]
    with pytest.raises(ValueError, match="at least one adapter name"):
        wrap_with_adapters(load_backbone(tiny_llama_path), [], LoraConfig(**CONFIGS["q_v"]))
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        wrap_with_adapters(load_backbone(tiny_llama_path), ["a", "b", "a"], LoraConfig(**CONFIGS["q_v"]))


def test_bias_on_many_adapters_fails_like_peft(tiny_llama_path):
    config_kwargs = {"r": 4, "target_modules": ["q_proj"], "bias": "lora_only"}
    with pytest.raises(ValueError, match="supports only 1 adapter with bias") as peft_error:
        build_pair(tiny_llama_path, config_kwargs, names=["a", "b"])
    with pytest.raises(ValueError, match="supports only 1 adapter with bias") as fast_error:
        wrap_with_adapters(load_backbone(tiny_llama_path), ["a", "b"], LoraConfig(**config_kwargs))
    assert str(fast_error.value) == str(peft_error.value)


def test_docstring_examples_run():
    result = doctest.testmod(adapter_injection, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4 and result.failed == 0
