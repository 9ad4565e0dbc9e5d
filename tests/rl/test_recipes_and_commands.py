"""The recipes (accelerate launch really launching processes) and the dmoerm ppo/grpo/rloo/bon/overopt/push commands."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dmoerm_trl.cli import main as dmoerm
from dmoerm_trl.rl.ppo import is_ppo_available, ppo_unavailable_reason

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "recipes" / "configs"
_skip_without_ppo = pytest.mark.skipif(not is_ppo_available(), reason=ppo_unavailable_reason())


def requires_ppo(test):
    """Mark a test ``ppo`` and skip it, with the reason naming the supported range and extra, where PPO is missing."""
    return pytest.mark.ppo(_skip_without_ppo(test))


def asset_flags(assets, reward="dmoerm"):
    reward_paths = assets["proxies"] if reward == "proxies" else [assets[reward]]
    return [
        "--policy_model_path",
        assets["policy"],
        "--reward_model_paths",
        *reward_paths,
        "--gold_model_path",
        assets["gold"],
        "--dataset_path",
        assets["prompts"],
    ]


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@requires_ppo
@pytest.mark.slow
def test_ppo_recipe_under_accelerate_launch_two_processes(tmp_path, rl_assets):
    accelerate_config = REPO / "accelerate_configs" / "cpu_multi_process.yaml"
    out = tmp_path / "ppo"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(accelerate_config),
        "--num_processes",
        "2",
        str(REPO / "recipes" / "ppo.py"),
        "--config",
        str(CONFIGS / "ppo_tiny.yaml"),
        *asset_flags(rl_assets),
        "--output_dir",
        str(out),
        "--total_episodes",
        "16",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dmoerm ppo:" in result.stdout
    # Two processes really ran (torchrun ranks 0 and 1), and the policy was saved once, as a plain causal LM.
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["global_step"] == 2  # 16 episodes / (4 per device x 2 processes)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    from transformers import AutoModelForCausalLM

    assert type(AutoModelForCausalLM.from_pretrained(out)).__name__ == "LlamaForCausalLM"
    rows = read_csv(out / "overoptimization.csv")
    assert [int(r["step"]) for r in rows] == [0, 2]
    assert float(rows[1]["kl"]) > 0


def test_grpo_and_rloo_commands(tmp_path, rl_assets, capsys):
    common = ["--max_steps", "2", "--gold_eval_steps", "2", "--num_heldout_prompts", "4", "--logging_steps", "1"]
    out = tmp_path / "grpo"
    code = dmoerm(
        [
            "grpo",
            "--config",
            str(CONFIGS / "grpo_tiny.yaml"),
            *asset_flags(rl_assets),
            "--output_dir",
            str(out),
            *common,
        ]
    )
    assert code == 0
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["global_step"] == 2 and "rewards/dmoerm/mean" in summary["last_log"]
    assert "rewards/length_penalty/mean" in summary["last_log"]
    assert [int(r["step"]) for r in read_csv(out / "overoptimization.csv")] == [0, 2]
    (tmp_path / "probe").touch()  # the policy's weights get the permissions of any new file (umask), not 0o600
    assert (out / "model.safetensors").stat().st_mode == (tmp_path / "probe").stat().st_mode
    out = tmp_path / "rloo"
    code = dmoerm(
        [
            "rloo",
            "--config",
            str(CONFIGS / "rloo_tiny.yaml"),
            *asset_flags(rl_assets, "proxies"),
            "--output_dir",
            str(out),
            *common,
        ]
    )
    assert code == 0
    summary = json.loads((out / "run_summary.json").read_text())
    assert "rewards/ensemble_uwo/mean" in summary["last_log"]
    assert "dmoerm rloo:" in capsys.readouterr().out


def test_rl_commands_report_bad_input(tmp_path, rl_assets, capsys, monkeypatch):
    flags = [*asset_flags(rl_assets), "--output_dir", str(tmp_path / "x"), "--max_steps", "1"]
    assert dmoerm(["grpo", "--config", str(CONFIGS / "grpo_tiny.yaml"), *flags, "--reward_weights", "1.0"]) == 2
    assert "reward_weights has 1 entries but there are 2 reward functions" in capsys.readouterr().err
    assert dmoerm(["grpo", "--config", str(CONFIGS / "grpo_tiny.yaml"), *flags, "--max_prompt_length", "250"]) == 2
    assert "exceeds the policy's 256 positions" in capsys.readouterr().err
    assert dmoerm(["grpo", "--config", str(CONFIGS / "grpo_tiny.yaml"), *flags, "--max_prompt_length", "5"]) == 2
    assert "every prompt is longer than max_prompt_length=5" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "trl.experimental.ppo", None)
    assert dmoerm(["ppo", "--config", str(CONFIGS / "ppo_tiny.yaml"), *flags]) == 2
    assert 'pip install "dmoerm-trl[ppo]"' in capsys.readouterr().err


def test_bon_command_samples_and_compares_proxies(tmp_path, rl_assets, capsys):
    out = tmp_path / "bon"
    code = dmoerm(
        [
            "bon",
            "--config",
            str(CONFIGS / "best_of_n_tiny.yaml"),
            "--policy_model_path",
            rl_assets["policy"],
            "--reward_model_paths",
            rl_assets["dmoerm"],
            "--dataset_path",
            rl_assets["prompts"],
            "--num_prompts",
            "3",
            "--n",
            "4",
            "--max_new_tokens",
            "6",
            "--output_dir",
            str(out),
        ]
    )
    assert code == 0
    lines = [json.loads(line) for line in (out / "best_of_n.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(len(x["completions"]) == 2 and x["scores"][0] >= x["scores"][1] for x in lines)
    out = tmp_path / "compare"
    proxies = [
        f"dmoerm={rl_assets['dmoerm']}",
        f"single={rl_assets['proxies'][0]}",
        *(f"ensemble_{mode}={mode}:{','.join(rl_assets['proxies'])}" for mode in ("mean", "wco", "uwo")),
    ]
    code = dmoerm(
        [
            "bon",
            "--config",
            str(CONFIGS / "compare_proxies_tiny.yaml"),
            "--policy_model_path",
            rl_assets["policy"],
            "--gold_model_path",
            rl_assets["gold"],
            "--dataset_path",
            rl_assets["prompts"],
            "--proxies",
            *proxies,
            "--num_prompts",
            "4",
            "--n",
            "8",
            "--max_new_tokens",
            "6",
            "--output_dir",
            str(out),
        ]
    )
    assert code == 0
    rows = read_csv(out / "overoptimization.csv")
    assert {r["proxy"] for r in rows} == {"dmoerm", "single", "ensemble_mean", "ensemble_wco", "ensemble_uwo"}
    assert sorted({int(r["n"]) for r in rows}) == [1, 2, 4, 8]
    # The same samples for every proxy: the n = 1 gold reward (the mean over all samples) is shared.
    assert len({r["gold_reward"] for r in rows if r["n"] == "1"}) == 1
    assert (out / "overoptimization.png").stat().st_size > 5000
    assert "ensemble_wco" in capsys.readouterr().out
    # dmoerm overopt re-plots and re-fits from the CSV.
    assert dmoerm(["overopt", str(out), "--output", str(tmp_path / "again.png")]) == 0
    printed = capsys.readouterr().out
    assert "d(a - b d)" in printed and (tmp_path / "again.png").is_file()
    assert len(json.loads((tmp_path / "again_fits.json").read_text())) == 5
    assert dmoerm(["overopt", str(tmp_path / "nothing-here")]) == 2
    assert dmoerm(["bon", "--config", str(CONFIGS / "best_of_n_tiny.yaml"), "--n", "2", "--ns", "1", "4"]) == 2
    assert "ns asks for best-of-4 but only n=2" in capsys.readouterr().err


def test_push_uploads_adapters_card_with_metrics_and_tokenizer(tmp_path, rl_assets, monkeypatch, capsys):
    from huggingface_hub import HfApi

    commits = []

    def fake_create_repo(self, repo_id, **kwargs):
        class Url(str):
            pass

        url = Url(f"https://huggingface.co/{repo_id}")
        url.repo_id = repo_id
        return url

    def fake_create_commit(self, repo_id, operations, commit_message, **kwargs):
        files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        commits.append((repo_id, commit_message, files))
        return f"https://huggingface.co/{repo_id}/commit/{len(commits)}"

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(
        json.dumps({"eval": {"pairwise_accuracy": 0.71, "note": "text is dropped"}, "bon_gold_gain": 0.05})
    )
    # The tiny base is a local folder: refused unless --save-base uploads it (tests/test_hub.py has the hub-id case).
    command = ["push", rl_assets["dmoerm"], "me/tiny-dmoerm", "--metrics", str(metrics), "--metric", "kl_at_peak=1.5"]
    assert dmoerm(command) == 2 and "--save-base" in capsys.readouterr().err and not commits
    assert dmoerm([*command, "--save-base"]) == 0
    [(repo, _, model_files)] = commits  # model, base and tokenizer in one commit
    tokenizer_files = model_files
    assert repo == "me/tiny-dmoerm" and "base/model.safetensors" in model_files
    assert "config.json" in model_files and "README.md" in model_files
    adapters = [p for p in model_files if p.startswith("adapters/") and p.endswith("adapter_model.safetensors")]
    assert len(adapters) >= 6  # router + task + capability experts of both categories
    assert not any(p.endswith((".bin", ".pt", ".pkl")) for p in model_files)
    card = model_files["README.md"].decode()
    assert (
        "eval/pairwise_accuracy" in card
        and "0.7100" in card
        and "kl_at_peak" in card
        and "text is dropped" not in card
    )
    assert "tokenizer.json" in tokenizer_files
    assert dmoerm(["push", rl_assets["gold"], "me/gold"]) == 2
    assert "uploads DMoERM models" in capsys.readouterr().err
