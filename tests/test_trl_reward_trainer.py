"""TRL's own RewardTrainer trains one DMoERM stage (the contract every phase builds on)."""

from __future__ import annotations

import torch
from datasets import Dataset
from trl import RewardConfig, RewardTrainer

from dmoerm_trl import DMoERMForSequenceClassification
from dmoerm_trl.testing_utils import randomize_adapters


def preference_data(n=16):
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"What is {i} + {i}?"}]
        rows.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": f"The answer is {2 * i} because {i} plus {i}."}],
                "rejected": [{"role": "assistant", "content": "no"}],
            }
        )
    return Dataset.from_list(rows)


def test_reward_trainer_trains_exactly_one_capability_expert(
    tiny_llama_path, tiny_tokenizer, tiny_categories, tmp_path
):
    model = DMoERMForSequenceClassification.from_backbone(tiny_llama_path, tiny_categories, tokenizer=tiny_tokenizer)
    randomize_adapters(model, std=0.1)
    trainable = set(model.set_training_stage("capability", category="objective_qa", capability="logic"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = RewardConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=6,
        learning_rate=5e-3,
        logging_steps=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_length=128,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=preference_data(), processing_class=tiny_tokenizer)
    result = trainer.train()
    assert result.training_loss > 0
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= trainable, sorted(changed - trainable)[:3]
    assert any("value_heads.objective_qa__logic" in k for k in changed)
    assert any(".lora_B.objective_qa__logic" in k for k in changed)
    # TRL's own metrics are logged for the expert run.
    assert any("accuracy" in entry and "loss" in entry for entry in trainer.state.log_history)
    # Trainer-style save of the whole model, then load it as a reward model.
    model.set_training_stage(None)
    trainer.save_model(str(tmp_path / "final"))
    reloaded = DMoERMForSequenceClassification.from_pretrained(tmp_path / "final")
    torch.testing.assert_close(
        reloaded.value_heads["objective_qa__logic"].weight, model.value_heads["objective_qa__logic"].weight
    )
