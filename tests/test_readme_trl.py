"""The README's "Use it with TRL" snippets (PPO, GRPO, best-of-n) run as written, on tiny offline models.

Each snippet reads its model paths from ``*_path = "..."`` lines at its top. The test replaces exactly those lines
with the tiny assets' paths (and fails if the README's set of path variables changes, or if a README path is still
used after the substitution), executes the snippet, and checks that what TRL optimized is the DMoERM's own reward,
recomputed here with plain forward passes, one unpadded text at a time.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager

import pytest
import torch
from test_readme import readme_blocks
from transformers import AutoModelForCausalLM, AutoTokenizer

from dmoerm_trl.rl.ppo import is_ppo_available, ppo_unavailable_reason

PATH_LINE = re.compile(r'^(?P<name>\w+_path) = "(?P<value>[^"]*)"(?P<rest>.*)$', flags=re.MULTILINE)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from dmoerm_trl.rl.tiny_assets import make_tiny_rl_assets

    return make_tiny_rl_assets(tmp_path_factory.mktemp("readme-trl"), num_proxies=0, num_prompts=16)


def run_readme_snippet(tag: str, paths: dict[str, str], tmp_path, monkeypatch) -> dict:
    """Execute the README block ``tag`` with its ``*_path`` lines pointed at ``paths``; returns its globals."""
    blocks = readme_blocks(tag)
    assert len(blocks) == 1, f"README.md must have exactly one block tagged {tag!r}, found {len(blocks)}"
    code = blocks[0]
    found = [m["name"] for m in PATH_LINE.finditer(code)]
    assert sorted(found) == sorted(paths), f"{tag}: the snippet's path variables are {found}, expected {list(paths)}"
    readme_values = [m["value"] for m in PATH_LINE.finditer(code)]
    code = PATH_LINE.sub(lambda m: f"{m['name']} = {paths[m['name']]!r}{m['rest']}", code)
    for value in readme_values:  # nothing else in the snippet uses a README path (e.g. a hard-coded from_pretrained)
        assert f'"{value}"' not in code, f"{tag}: {value!r} is still used after substituting the path lines"
    for name, path in paths.items():
        assert f"{name} = {path!r}" in code
    monkeypatch.chdir(tmp_path)  # the snippets write under runs/
    namespace = {"__name__": "readme"}
    exec(compile(code, f"README.md:{tag}", "exec"), namespace)  # noqa: S102 (the README is ours)
    return namespace


@torch.no_grad()
def conversation_reward(model, tokenizer, prompt: list[dict], completion) -> float:
    """A reward model's reward of one conversation: chat template, no padding, eval mode, ``logits[0, 0]``."""
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    text = tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=False)
    batch = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    return model.eval()(**batch).logits[0, 0].item()


@torch.no_grad()
def rescore_rows(model, input_ids, attention_mask) -> torch.Tensor:
    """The model's ordinary forward on each row alone, padding removed (TRL's batches are padded left or right)."""
    return torch.tensor(
        [
            model.eval()(input_ids=ids[mask.bool()][None]).logits[0, 0].item()
            for ids, mask in zip(input_ids, attention_mask)
        ]
    )


@contextmanager
def recording_forwards(module_type):
    """Record ``(input_ids, attention_mask, output)`` of every forward of a ``module_type`` module in the block."""
    calls = []

    def record(module, args, kwargs, output):
        if isinstance(module, module_type):
            calls.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone(), output))

    handle = torch.nn.modules.module.register_module_forward_hook(record, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def assert_policy_changed(trained, initial_path: str) -> None:
    initial = AutoModelForCausalLM.from_pretrained(initial_path).state_dict()
    trained = trained.state_dict()
    assert any(not torch.equal(initial[k], trained[k].cpu()) for k in initial), "the policy did not change"


@pytest.mark.ppo
@pytest.mark.skipif(not is_ppo_available(), reason=ppo_unavailable_reason())
def test_readme_ppo_snippet(assets, tmp_path, monkeypatch):
    from dmoerm_trl.models.dmoerm._ppo_reward_view import SequenceRewardView

    paths = {"policy_path": assets["policy"], "reward_path": assets["dmoerm"], "prompts_path": assets["prompts"]}
    # Every call TRL makes to the DMoERM's PPO view: the token ids it scored and the rewards it read.
    with recording_forwards(SequenceRewardView) as calls:
        snippet = run_readme_snippet("trl-ppo", paths, tmp_path, monkeypatch)

    trainer, dmoerm = snippet["trainer"], snippet["dmoerm"]
    logs = [log for log in trainer.state.log_history if "objective/scores" in log]
    assert len(logs) == len(calls) == 2  # total_episodes=8, batch 4: two rollouts, one reward call each
    for log, (input_ids, attention_mask, output) in zip(logs, calls):
        per_position = output.last_hidden_state[..., 0]  # (B, T): one reward per sequence, broadcast over positions
        read_by_trl = per_position[:, -1]
        assert torch.equal(per_position, read_by_trl[:, None].expand_as(per_position))
        # The same sequences scored by the DMoERM's ordinary forward (router + experts + aggregator), one at a time.
        ours = rescore_rows(dmoerm, input_ids, attention_mask)
        torch.testing.assert_close(read_by_trl, ours, rtol=1e-4, atol=1e-5)
        assert log["objective/scores"] == pytest.approx(ours.mean().item(), abs=1e-5)
        assert ours.std() > 0
    assert_policy_changed(trainer.model.policy, assets["policy"])
    initial = AutoModelForCausalLM.from_pretrained(assets["policy"]).state_dict()
    assert all(torch.equal(initial[k], v) for k, v in snippet["ref_policy"].state_dict().items())  # frozen


def test_readme_grpo_snippet(assets, tmp_path, monkeypatch):
    from dmoerm_trl import DMoERMForSequenceClassification
    from dmoerm_trl.rl.scoring import completion_text

    paths = {"policy_path": assets["policy"], "reward_path": assets["dmoerm"], "prompts_path": assets["prompts"]}
    with recording_forwards(DMoERMForSequenceClassification) as calls:
        snippet = run_readme_snippet("trl-grpo", paths, tmp_path, monkeypatch)
    trainer, dmoerm = snippet["trainer"], snippet["dmoerm"]
    tokenizer = AutoTokenizer.from_pretrained(assets["dmoerm"])

    weights = trainer.args.reward_weights
    assert len(weights) == 2 and weights[1] != 0  # the DMoERM and the rule-based reward both count
    step_logs = [log for log in trainer.state.log_history if "rewards/dmoerm/mean" in log]
    assert len(step_logs) == len(calls) == 2  # max_steps=2, logging_steps=1: one reward call per step
    for log, (input_ids, attention_mask, output) in zip(step_logs, calls):
        assert input_ids.shape[0] == 8  # 2 prompts x num_generations=4
        ours = rescore_rows(dmoerm, input_ids, attention_mask)
        torch.testing.assert_close(output.logits[:, 0], ours, rtol=1e-4, atol=1e-5)
        assert log["rewards/dmoerm/mean"] == pytest.approx(ours.mean().item(), abs=1e-5)
        assert ours.std() > 0
        combined = weights[0] * log["rewards/dmoerm/mean"] + weights[1] * log["rewards/length_penalty/mean"]
        assert log["reward"] == pytest.approx(combined, abs=1e-5)
    # The texts TRL scored are the completions it logged for the last step, with the rewards it logged.
    input_ids, attention_mask, _ = calls[-1]
    completions = list(trainer._logs["completion"])[-8:]
    logged = torch.tensor(list(trainer._logs["rewards"]["dmoerm"])[-8:])
    torch.testing.assert_close(logged, ours, rtol=1e-4, atol=1e-5)
    for ids, mask, completion in zip(input_ids, attention_mask, completions):
        scored_text = tokenizer.decode(ids[mask.bool()])
        assert completion_text(completion).strip() in scored_text
    assert_policy_changed(trainer.model, assets["policy"])


def test_readme_best_of_n_snippet(assets, tmp_path, monkeypatch, capsys):
    paths = {
        "policy_path": assets["policy"],
        "reward_path": assets["dmoerm"],
        "gold_path": assets["gold"],
        "prompts_path": assets["prompts"],
    }
    snippet = run_readme_snippet("trl-best-of-n", paths, tmp_path, monkeypatch)
    out, result, prompts, dmoerm = snippet["out"], snippet["result"], snippet["prompts"], snippet["dmoerm"]
    tokenizer = AutoTokenizer.from_pretrained(assets["dmoerm"])

    # Best-of-n: 8 distinct candidates per prompt, and the chosen one has the DMoERM's highest reward among them.
    assert len(out.candidates) == 4 and all(len(c) == 8 for c in out.candidates)
    for i, (prompt, candidates) in enumerate(zip(prompts[:4], out.candidates)):
        assert len(set(candidates)) > 1
        rewards = torch.tensor([conversation_reward(dmoerm, tokenizer, prompt, c) for c in candidates])
        torch.testing.assert_close(out.candidate_scores[i], rewards, rtol=1e-4, atol=1e-5)
        assert out.best[i] == candidates[int(rewards.argmax())]
        assert out.scores[i][0] == pytest.approx(rewards.max().item(), abs=1e-5)

    # evaluate(): best-of-1, 2, 4, 8 from the same N=8 samples, against the gold reward model.
    assert [r["n"] for r in result.records] == [1, 2, 4, 8]
    assert result.records[0]["kl"] == 0 and result.records[-1]["kl"] == pytest.approx(math.log(8) - 7 / 8)
    gold, proxy = result.gold_scores.double(), result.proxy_scores["dmoerm"].double()
    assert gold.shape == proxy.shape == (8, 8)
    assert result.records[0]["gold_reward"] == pytest.approx(gold.mean().item(), abs=1e-6)  # n=1: a random sample
    best = proxy.argmax(dim=1, keepdim=True)  # n=N: the DMoERM's favourite of all 8
    assert result.records[-1]["gold_reward"] == pytest.approx(gold.gather(1, best).mean().item(), abs=1e-6)
    proxy_curve = [r["proxy_reward"] for r in result.records]
    assert proxy_curve == sorted(proxy_curve) and proxy_curve[-1] > proxy_curve[0]
    # The gold scores are the gold model's own (a different reward model from the DMoERM).
    gold_model, gold_tokenizer = snippet["gold"]
    first = [conversation_reward(gold_model, gold_tokenizer, prompts[4], c) for c in result.candidates[0]]
    torch.testing.assert_close(result.gold_scores[0], torch.tensor(first), rtol=1e-4, atol=1e-5)
    assert (tmp_path / "runs" / "bon-dmoerm" / "overoptimization.csv").read_text().count("\n") == 5
    assert out.best[0] in capsys.readouterr().out


def test_tiny_assets_help_builds_nothing(tmp_path, monkeypatch, capsys):
    """``python -m dmoerm_trl.rl.tiny_assets --help`` (the README points to it) prints usage, writes no folder."""
    from dmoerm_trl.rl.tiny_assets import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "output_dir" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
