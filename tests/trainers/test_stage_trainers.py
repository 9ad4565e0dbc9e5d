"""The stage trainers on a tiny DMoERM: what trains, what is saved, resuming, the router's prompt-only examples, the
phase-3 feature cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import stage_args, tiny_dmoerm, tokenized_data
from trl import RewardTrainer

from dmoerm_trl.trainers import AggregatorTrainer, CapabilityExpertTrainer, RouterTrainer, TaskTrainer
from dmoerm_trl.trainers.checkpointing import last_complete_checkpoint
from dmoerm_trl.trainers.router_trainer import RouterCollator

PAIR_COLUMNS = ["chosen_ids", "rejected_ids"]


@pytest.fixture(scope="module")
def data(tiny_tokenizer):
    return tokenized_data(tiny_tokenizer)


def category_pairs(pairs, category, columns=PAIR_COLUMNS):
    rows = pairs.filter(lambda r: r["category"] == category)
    return rows.select_columns(columns) if columns else rows


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(model, before):
    return {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}


def reward_accuracy(model, pairs, category):
    from dmoerm_trl.evaluation import pairwise_accuracy, score_sequences

    model.eval()
    sequences = list(pairs["chosen_ids"]) + list(pairs["rejected_ids"])
    rewards = score_sequences(model, sequences, model.config.pad_token_id, categories=[category] * len(sequences))
    n = len(pairs)
    return pairwise_accuracy(rewards["rewards"][:n], rewards["rewards"][n:])["overall"]["accuracy"]


def test_task_trainer_trains_only_its_adapter_and_head(tmp_path, data, tiny_llama_path, tiny_tokenizer, one_thread):
    pairs, _ = data
    model = tiny_dmoerm(tiny_llama_path, tiny_tokenizer)
    before = snapshot(model)
    trainer = TaskTrainer(
        model,
        "chitchat",
        args=stage_args(tmp_path, save_strategy="epoch"),
        train_dataset=category_pairs(pairs, "chitchat"),
        processing_class=tiny_tokenizer,
    )
    assert isinstance(trainer, RewardTrainer)
    trainer.train()
    updated = changed(model, before)
    assert updated and updated <= set(trainer.stage_parameter_names)
    assert all("chitchat__task" in name or name.startswith("task_heads.chitchat") for name in updated)
    assert any("lora_B.chitchat__task" in name for name in updated)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert sum(losses[-3:]) < sum(losses[:3])
    checkpoint = last_complete_checkpoint(tmp_path)
    saved = load_file(str(Path(checkpoint) / "model.safetensors"))
    assert set(saved) == set(trainer.stage_parameter_names)  # a stage checkpoint holds only what the stage trains
    assert not (Path(checkpoint) / "training_args.bin").exists()  # no pickle


def test_capability_expert_trainer_starts_from_the_task_adapter(
    tmp_path, data, tiny_llama_path, tiny_tokenizer, one_thread
):
    pairs, labels = data
    model = tiny_dmoerm(tiny_llama_path, tiny_tokenizer)
    TaskTrainer(
        model,
        "objective_qa",
        args=stage_args(tmp_path / "task"),
        train_dataset=category_pairs(pairs, "objective_qa"),
        processing_class=tiny_tokenizer,
    ).train()
    model.init_experts_from_task("objective_qa")
    task_head = model.task_heads["objective_qa"].weight.detach().clone()
    assert torch.equal(model.value_heads["objective_qa__correctness"].weight, task_head)
    logic = labels.filter(lambda r: r["category"] == "objective_qa" and r["capability"] == "reasoning_ability")
    train, held_out = logic.select(range(0, len(logic), 2)), logic.select(range(1, len(logic), 2))
    before = snapshot(model)
    trainer = CapabilityExpertTrainer(
        model,
        "objective_qa",
        "reasoning_ability",
        args=stage_args(tmp_path / "expert", num_train_epochs=3),
        train_dataset=train.select_columns(PAIR_COLUMNS),
        processing_class=tiny_tokenizer,
    )
    trainer.train()
    updated = changed(model, before)
    assert updated and all("objective_qa__reasoning_ability" in name for name in updated)
    model.set_training_stage("capability", category="objective_qa", capability="reasoning_ability")
    assert reward_accuracy(model, held_out, "objective_qa") >= 0.8


def test_capability_expert_trainer_needs_a_capability(tiny_llama_path, tiny_tokenizer, tmp_path, data):
    model = tiny_dmoerm(tiny_llama_path, tiny_tokenizer)
    with pytest.raises(ValueError, match="needs capability="):
        CapabilityExpertTrainer(
            model, "chitchat", None, args=stage_args(tmp_path), train_dataset=data[0], processing_class=tiny_tokenizer
        )
    with pytest.raises(ValueError, match="unknown capability 'humour'"):
        CapabilityExpertTrainer(
            model,
            "chitchat",
            "humour",
            args=stage_args(tmp_path),
            train_dataset=data[0],
            processing_class=tiny_tokenizer,
        )


def test_resuming_a_stage_checkpoint_gives_the_uninterrupted_result(
    tmp_path, data, tiny_llama_path, tiny_tokenizer, one_thread
):
    pairs, _ = data
    train = category_pairs(pairs, "roleplay")

    def run(output_dir, resume=None):
        model = tiny_dmoerm(tiny_llama_path, tiny_tokenizer)
        trainer = TaskTrainer(
            model,
            "roleplay",
            args=stage_args(output_dir, save_strategy="epoch"),
            train_dataset=train,
            processing_class=tiny_tokenizer,
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer.stage_state_dict()

    full = run(tmp_path / "a")
    first_epoch = min((tmp_path / "a").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    resumed = run(tmp_path / "b", resume=str(first_epoch))
    assert set(full) == set(resumed)
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=1e-5, atol=1e-6)


def test_router_trainer_learns_the_prompt_as_the_model_routes_it(
    tmp_path, data, tiny_llama_path, tiny_tokenizer, one_thread
):
    from dmoerm_trl.trainers.router_trainer import routing_prompt_ids

    pairs, _ = data
    labelled = pairs.filter(lambda r: r["category"] != "")
    held_out = set(range(1, len(labelled), 9))
    train = labelled.select([i for i in range(len(labelled)) if i not in held_out])
    validation = labelled.select(sorted(held_out))
    model = tiny_dmoerm(tiny_llama_path, tiny_tokenizer)
    opener = model.config.assistant_opener_ids
    before = snapshot(model)
    trainer = RouterTrainer(
        model,
        args=stage_args(tmp_path, eval_strategy="no", num_train_epochs=10),
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tiny_tokenizer,
    )
    # One example per conversation (about 54 here, so 10 epochs for enough steps): its tokens up to the assistant
    # opener, exactly what the router reads when the model scores any response to it.
    examples = trainer.train_dataset
    assert set(examples["view"]) == {0}
    expected = {tuple(routing_prompt_ids(ids, opener)) for ids in train["chosen_ids"]}
    assert {tuple(ids) for ids in examples["input_ids"]} == expected and len(examples) == len(expected)
    assert all(list(ids[-len(opener) :]) == opener for ids in examples["input_ids"])
    trainer.train()
    assert all(name.startswith("router_head") or ".router." in name for name in changed(model, before))
    metrics = trainer.evaluate()
    assert metrics["eval_accuracy"] > 0.6  # chance: 1/3
    assert metrics["eval_accuracy_prompt"] == metrics["eval_accuracy"]
    # The trained router routes every full conversation of a validation pair as its prompt example.
    model.eval()
    conversations = list(validation["chosen_ids"]) + list(validation["rejected_ids"])
    collate = RouterCollator(tiny_tokenizer.pad_token_id)
    batch = collate([{"input_ids": ids, "labels": 0, "view": 1} for ids in conversations])
    prompts = collate(
        [{"input_ids": routing_prompt_ids(ids, opener), "labels": 0, "view": 0} for ids in conversations]
    )
    routed_full = model.route(batch["input_ids"], batch["attention_mask"]).argmax(-1)
    routed_prompt = model.route(prompts["input_ids"], prompts["attention_mask"]).argmax(-1)
    assert routed_full.tolist() == routed_prompt.tolist()


def test_router_trainer_without_a_prompt_boundary_trains_both_views(tmp_path, data, tiny_llama_path, tiny_tokenizer):
    pairs, _ = data
    labelled = pairs.filter(lambda r: r["category"] != "")
    model = tiny_dmoerm(tiny_llama_path, tiny_tokenizer)
    model.config.assistant_opener_ids = None  # routes on the whole text (e.g. a template without an opener)
    trainer = RouterTrainer(
        model, args=stage_args(tmp_path), train_dataset=labelled.select(range(6)), processing_class=tiny_tokenizer
    )
    views = trainer.train_dataset["view"]
    assert 0 < sum(views) < len(views)  # both the prompt-only and the full view


def test_aggregator_cache_gives_the_uncached_result_and_is_reused(
    tmp_path, data, tiny_llama_path, tiny_tokenizer, one_thread
):
    from dmoerm_trl.testing_utils import randomize_adapters

    pairs, _ = data
    train = category_pairs(pairs, "chitchat", columns=None).select(range(40))
    model = tiny_dmoerm(tiny_llama_path, tiny_tokenizer)
    randomize_adapters(model)  # experts that differ, as after phase 2
    initial = snapshot(model)
    calls = {"n": 0}
    compute = model.compute_expert_features

    def counting(*args, **kwargs):
        calls["n"] += 1
        return compute(*args, **kwargs)

    model.compute_expert_features = counting
    results = {}
    for cached in (True, False):
        model.load_state_dict(initial, strict=False)
        cache = tmp_path / "features.safetensors"
        trainer = AggregatorTrainer(
            model,
            "chitchat",
            args=stage_args(tmp_path / str(cached), num_train_epochs=2),
            train_dataset=train,
            processing_class=tiny_tokenizer,
            cache_expert_features=cached,
            feature_batch_size=16,
            feature_cache_path=str(cache) if cached else None,
        )
        calls["n"] = 0
        trainer.train()
        results[cached] = ({k: v.clone() for k, v in trainer.stage_state_dict().items()}, calls["n"])
    (cached_weights, cached_calls), (plain_weights, plain_calls) = results[True], results[False]
    assert cached_calls == 0  # features were computed once, before training
    assert plain_calls == 2 * len(train) // 8 + (1 if len(train) % 8 else 0) * 2  # every step recomputes them
    for name in cached_weights:
        if name not in initial:  # the statistics (buffers): computed from the same features either way
            torch.testing.assert_close(cached_weights[name], plain_weights[name], atol=1e-3, rtol=1e-3)
            continue
        # Same training up to float noise (padding differs between the two feature batchings, and Adam amplifies
        # the noise of near-zero gradients a little): the difference is tiny next to what training moved.
        moved = (cached_weights[name] - initial[name]).norm()
        assert (cached_weights[name] - plain_weights[name]).norm() <= 0.05 * moved + 1e-6  # (bias: no grad)

    # the cache file is reused as long as the pairs and the experts are the same, recomputed otherwise
    model.load_state_dict(initial, strict=False)
    calls["n"] = 0
    AggregatorTrainer(
        model,
        "chitchat",
        args=stage_args(tmp_path / "again"),
        train_dataset=train,
        processing_class=tiny_tokenizer,
        feature_cache_path=str(tmp_path / "features.safetensors"),
    )
    assert calls["n"] == 0
    with torch.no_grad():
        model.value_heads["chitchat__proactivity"].weight.add_(1.0)
    AggregatorTrainer(
        model,
        "chitchat",
        args=stage_args(tmp_path / "changed"),
        train_dataset=train,
        processing_class=tiny_tokenizer,
        feature_cache_path=str(tmp_path / "features.safetensors"),
    )
    assert calls["n"] > 0
