"""Phase 3 that trains (validation-loss selection, expert-feature standardisation) and one reward scale for all
categories (per-category calibration stored with the aggregators)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from trainer_helpers import stage_args, tiny_dmoerm, tokenized_data

from dmoerm_trl import DMoERMForSequenceClassification
from dmoerm_trl.models.dmoerm.modeling_dmoerm import CapabilityAggregator
from dmoerm_trl.testing_utils import randomize_adapters
from dmoerm_trl.trainers import AggregatorTrainer

PAIR_COLUMNS = ["chosen_ids", "rejected_ids"]


@pytest.fixture(scope="module")
def pairs(tiny_tokenizer):
    return tokenized_data(tiny_tokenizer)[0]


def category_pairs(pairs, category):
    return pairs.filter(lambda r: r["category"] == category).select_columns(PAIR_COLUMNS)


def rewards_of(model, pairs, category, pad_token_id):
    """Rewards of every chosen and rejected text of ``pairs`` through the model's inference path."""
    from dmoerm_trl.evaluation import score_sequences

    model.eval()
    sequences = list(pairs["chosen_ids"]) + list(pairs["rejected_ids"])
    scored = score_sequences(model, sequences, pad_token_id, categories=[category] * len(sequences))
    return torch.tensor(scored["rewards"], dtype=torch.float64)


def train_aggregator(model, category, train, validation, tokenizer, output_dir, **kwargs):
    args = stage_args(
        output_dir,
        num_train_epochs=kwargs.pop("epochs", 4),
        learning_rate=1e-3,
        eval_strategy="epoch" if validation is not None else "no",
        save_strategy="epoch" if validation is not None else "no",
        load_best_model_at_end=validation is not None,
        metric_for_best_model="eval_accuracy",
        logging_steps=100,
    )
    return AggregatorTrainer(
        model, category, args=args, train_dataset=train, eval_dataset=validation, processing_class=tokenizer, **kwargs
    )


def test_phase3_selects_on_validation_loss_moves_the_aggregator_and_lowers_validation_loss(
    tmp_path, pairs, tiny_llama_path, tiny_tokenizer, one_thread
):
    rows = category_pairs(pairs, "chitchat")
    train, validation = rows.select(range(len(rows) - 40)), rows.select(range(len(rows) - 40, len(rows)))
    torch.manual_seed(0)  # the heads' and the MLP's initialisation: not left to whichever tests ran before
    model = tiny_dmoerm(tiny_llama_path, tiny_tokenizer)
    randomize_adapters(model)  # experts that differ, as after phase 2
    aggregator = model.aggregators["chitchat"]
    initial = {name: p.detach().clone() for name, p in aggregator.named_parameters()}
    trainer = train_aggregator(model, "chitchat", train, validation, tiny_tokenizer, tmp_path)
    # the pipeline's default metric (accuracy) is replaced by the validation loss, with 40 >= 32 validation pairs
    assert trainer.selection == "validation loss"
    assert trainer.args.metric_for_best_model == "eval_loss" and trainer.args.greater_is_better is False
    # the input statistics were set from the training texts before training
    features = torch.cat([trainer.train_dataset.chosen, trainer.train_dataset.rejected])
    torch.testing.assert_close(aggregator.feature_mean, features.mean(0))
    initial_loss = trainer.evaluate()["eval_loss"]
    trainer.train()
    losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(losses) == 4
    final_loss = trainer.evaluate()["eval_loss"]
    assert final_loss == pytest.approx(min(losses), abs=1e-5)  # the kept weights are the best-loss epoch's
    assert final_loss < initial_loss - 0.1, (initial_loss, final_loss)
    # the MLP moved away from its random start by a clear amount (not 2-3 steps)
    for name in ("proj.weight", "out.weight"):
        moved = (aggregator.get_parameter(name) - initial[name]).norm() / initial[name].norm()
        assert moved > 0.3, (name, float(moved))


def test_small_validation_split_trains_a_fixed_schedule(tmp_path, pairs, tiny_llama_path, tiny_tokenizer, one_thread):
    from transformers import EarlyStoppingCallback

    rows = category_pairs(pairs, "chitchat")
    train, validation = rows.select(range(40)), rows.select(range(40, 47))
    model = tiny_dmoerm(tiny_llama_path, tiny_tokenizer)
    randomize_adapters(model)
    trainer = train_aggregator(
        model,
        "chitchat",
        train,
        validation,
        tiny_tokenizer,
        tmp_path,
        epochs=3,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=1)],
    )
    assert trainer.selection.startswith("fixed schedule (7 validation pairs")
    assert trainer.args.load_best_model_at_end is False and trainer.args.metric_for_best_model is None
    assert not any(isinstance(c, EarlyStoppingCallback) for c in trainer.callback_handler.callbacks)
    trainer.train()
    assert trainer.state.epoch == 3  # every epoch, whatever 7 pairs say


def test_feature_standardisation_lets_the_mlp_use_a_small_variation_on_a_dominant_direction():
    """Features as measured on the demo: a shared direction of norm ~55, text-to-text variation of norm ~3, the
    preference in one direction of it. In the same 10 optimiser steps the standardised MLP learns it, the raw one
    hardly (k=2 experts of H=288, the paper's MLP width, AdamW at 1e-3)."""
    generator = torch.Generator().manual_seed(0)
    dim, n = 576, 256
    shared = torch.randn(dim, generator=generator)
    shared = 55 * shared / shared.norm()
    signal = torch.randn(dim, generator=generator)
    signal /= signal.norm()
    quality = torch.randn(2 * n, generator=generator)
    noise = torch.randn(2 * n, dim, generator=generator)
    features = shared + quality[:, None] * signal + 3 * noise / noise.norm(dim=1, keepdim=True)
    chosen_first = quality[:n] > quality[n:]
    chosen = torch.where(chosen_first[:, None], features[:n], features[n:])
    rejected = torch.where(chosen_first[:, None], features[n:], features[:n])

    def loss_after_10_steps(normalize: bool) -> float:
        torch.manual_seed(0)
        aggregator = CapabilityAggregator(2, dim // 2, dim // 2)
        for module in (aggregator.proj, aggregator.out):  # the model's init (std 0.02, zero bias)
            torch.nn.init.normal_(module.weight, std=0.02)
            torch.nn.init.zeros_(module.bias)
        if normalize:
            aggregator.set_feature_statistics(torch.cat([chosen, rejected]))
        optimizer = torch.optim.AdamW(aggregator.parameters(), lr=1e-3)
        for _ in range(10):
            loss = -torch.nn.functional.logsigmoid(aggregator(chosen) - aggregator(rejected)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return loss.item()

    raw, standardised = loss_after_10_steps(False), loss_after_10_steps(True)
    assert standardised < 0.2 and raw > 0.3, (standardised, raw)


def test_calibration_puts_each_category_at_mean_0_std_1_and_keeps_the_order(
    tmp_path, pairs, tiny_llama_path, tiny_tokenizer, one_thread
):
    model = tiny_dmoerm(tiny_llama_path, tiny_tokenizer)
    randomize_adapters(model)
    pad = tiny_tokenizer.pad_token_id
    data = {}
    for category in ("chitchat", "objective_qa"):
        train = category_pairs(pairs, category).select(range(48))
        with torch.no_grad():  # a different arbitrary offset per category, as the pairwise loss leaves them
            model.aggregators[model._slug(category)].out.bias.fill_(5.0 if category == "chitchat" else -3.0)
        trainer = train_aggregator(model, category, train, None, tiny_tokenizer, tmp_path / category, epochs=2)
        trainer.train()
        data[category] = train
    model.set_training_stage(None)
    assert model.config.calibrate_rewards is True
    calibrated = {}
    for category, train in data.items():
        rewards = rewards_of(model, train, category, pad)
        assert abs(rewards.mean()) < 1e-3 and abs(rewards.std() - 1) < 1e-3, (category, rewards.mean(), rewards.std())
        calibrated[category] = rewards
        assert model.aggregators[model._slug(category)].is_calibrated

    # off switch (model config): the raw aggregator output, an affine image of the calibrated one
    model.config.calibrate_rewards = False
    for category, train in data.items():
        raw = rewards_of(model, train, category, pad)
        aggregator = model.aggregators[model._slug(category)]
        torch.testing.assert_close(
            raw,
            calibrated[category] * aggregator.reward_std.item() + aggregator.reward_mean.item(),
            atol=1e-4,
            rtol=1e-4,
        )
        assert abs(raw.mean()) > 0.5  # the offsets were really there
        # a monotone transform: every pair is ordered the same way (pairwise accuracy unchanged)
        n = len(train)
        assert torch.equal(raw[:n] > raw[n:], calibrated[category][:n] > calibrated[category][n:])
    model.config.calibrate_rewards = True

    # saved and loaded with the model
    model.save_pretrained(tmp_path / "saved")
    loaded = DMoERMForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert loaded.config.calibrate_rewards is True
    for category, train in data.items():
        torch.testing.assert_close(
            rewards_of(loaded, train, category, pad), calibrated[category], atol=1e-5, rtol=1e-5
        )
    heads = load_file(str(tmp_path / "saved" / "dmoerm_heads.safetensors"))
    assert {"aggregators.chitchat.reward_mean", "aggregators.chitchat.feature_std"} <= set(heads)


def test_calibrate_rewards_false_leaves_raw_rewards(tmp_path, pairs, tiny_llama_path, tiny_tokenizer, one_thread):
    model = tiny_dmoerm(tiny_llama_path, tiny_tokenizer)
    train = category_pairs(pairs, "chitchat").select(range(32))
    trainer = train_aggregator(
        model, "chitchat", train, None, tiny_tokenizer, tmp_path, epochs=1, calibrate_rewards=False
    )
    trainer.train()
    aggregator = model.aggregators["chitchat"]
    assert aggregator.reward_mean.item() == 0.0 and aggregator.reward_std.item() == 1.0
    assert not aggregator.is_calibrated
    assert "aggregators.chitchat.reward_mean" in trainer.stage_state_dict()  # the stage file holds the statistics


def test_a_model_saved_without_the_statistics_loads_and_scores_as_before(
    tmp_path, pairs, tiny_llama_path, tiny_tokenizer
):
    model = tiny_dmoerm(tiny_llama_path, tiny_tokenizer)
    randomize_adapters(model)
    model.save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / "dmoerm_heads.safetensors"
    heads = load_file(str(path))
    statistics = {f"aggregators.{name}" for name, _ in model.aggregators.named_buffers()}
    old = {k: v for k, v in heads.items() if k not in statistics}
    assert len(old) < len(heads)
    save_file(old, str(path))  # the layout written before the statistics existed
    loaded = DMoERMForSequenceClassification.from_pretrained(tmp_path / "old")
    rows = category_pairs(pairs, "chitchat").select(range(4))
    pad = tiny_tokenizer.pad_token_id
    torch.testing.assert_close(rewards_of(loaded, rows, "chitchat", pad), rewards_of(model, rows, "chitchat", pad))
    # a heads file that misses a real weight is still refused
    save_file({k: v for k, v in old.items() if k != "aggregators.chitchat.out.weight"}, str(path))
    with pytest.raises(ValueError, match="aggregators.chitchat.out.weight"):
        DMoERMForSequenceClassification.from_pretrained(tmp_path / "old")
