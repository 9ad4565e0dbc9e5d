"""RemoteReward against real ``dmoerm serve`` processes: a real GRPO step whose reward comes from the server (TRL's
logged rewards equal the in-process model's), best-of-n and the gold-reward callback with served rewards, the text
path routing on prompts, batching of large calls, and bad arguments."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from serving_helpers import RESPONSES, chat_texts, metrics, routed_on_prompts
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, GenerationConfig

from dmoerm_trl.rl import BestOfNSampler, GoldRewardCallback, RemoteReward
from dmoerm_trl.rl.tiny_assets import tiny_prompts

GEN = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)


@pytest.fixture(scope="module")
def policy_tokenizer(serve_assets):
    return AutoTokenizer.from_pretrained(serve_assets["policy"], padding_side="left")


def test_grpo_step_with_the_reward_from_the_server(tmp_path, servers, serve_assets, policy_tokenizer):
    """TRL scores every completion twice, through the server and with the same DMoERM in process (weight 0)."""
    from trl import GRPOConfig, GRPOTrainer

    served = RemoteReward(servers["dmoerm"].url, name="served_dmoerm")
    local = AutoModelForSequenceClassification.from_pretrained(serve_assets["dmoerm"])
    local_tokenizer = AutoTokenizer.from_pretrained(serve_assets["dmoerm"])
    policy = AutoModelForCausalLM.from_pretrained(serve_assets["policy"])
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=1,
        bf16=False,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
        learning_rate=1e-3,
        reward_weights=[1.0, 0.0],
    )
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=[served, local],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": tiny_prompts(4)}),
        processing_class=policy_tokenizer,
        reward_processing_classes=[None, local_tokenizer],
    )
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())  # it really trained
    served_rewards = list(trainer._logs["rewards"]["served_dmoerm"])
    local_rewards = list(trainer._logs["rewards"]["dmoerm"])
    assert len(served_rewards) == 4 and served_rewards == pytest.approx(local_rewards, abs=1e-5)
    assert torch.tensor(served_rewards).std() > 0  # different completions, different rewards
    log = trainer.state.log_history[0]
    assert log["rewards/served_dmoerm/mean"] == pytest.approx(log["rewards/dmoerm/mean"], abs=1e-5)
    assert log["reward"] == pytest.approx(log["rewards/served_dmoerm/mean"], abs=1e-5)  # trained on the served one


def test_best_of_n_with_served_rewards_picks_what_the_local_models_pick(
    servers, serve_assets, policy_tokenizer, dmoerm_local, gold_local
):
    policy = AutoModelForCausalLM.from_pretrained(serve_assets["policy"])
    prompts = tiny_prompts(3)
    served = BestOfNSampler(
        policy,
        policy_tokenizer,
        RemoteReward(servers["dmoerm"].url),
        n=4,
        generation_config=GEN,
        seed=0,
        show_progress=False,
    )
    local = BestOfNSampler(
        policy,
        policy_tokenizer,
        dmoerm_local[0],
        dmoerm_local[1],
        n=4,
        generation_config=GEN,
        seed=0,
        show_progress=False,
    )
    got, want = served(prompts), local(prompts)
    assert got.candidates == want.candidates
    torch.testing.assert_close(got.candidate_scores, want.candidate_scores, atol=1e-5, rtol=1e-4)
    assert got.completions == want.completions
    served_eval = served.evaluate(prompts, gold=RemoteReward(servers["gold"].url), ns=[1, 2, 4])
    local_eval = local.evaluate(prompts, gold=gold_local, ns=[1, 2, 4])
    torch.testing.assert_close(served_eval.gold_scores, local_eval.gold_scores, atol=1e-5, rtol=1e-4)


def test_gold_reward_callback_with_served_gold_and_proxy(
    tmp_path, servers, serve_assets, policy_tokenizer, dmoerm_local, gold_local
):
    policy = AutoModelForCausalLM.from_pretrained(serve_assets["policy"])
    prompts = tiny_prompts(3)
    reference = AutoModelForCausalLM.from_pretrained(serve_assets["policy"]).eval()
    kwargs = {
        "eval_steps": 1,
        "samples_per_prompt": 2,
        "generation_config": GEN,
        "output_dir": tmp_path,
        "plot": False,
        "ref_model": reference,
    }
    served = GoldRewardCallback(
        prompts,
        gold=RemoteReward(servers["gold"].url),
        proxy=RemoteReward(servers["dmoerm"].url, name="served"),
        **kwargs,
    )
    local = GoldRewardCallback(prompts, gold=gold_local, proxy=dmoerm_local, **kwargs)
    got, want = served.evaluate(policy, policy_tokenizer, step=0), local.evaluate(policy, policy_tokenizer, step=0)
    assert got["proxy"] == "served"
    assert got["gold_reward"] == pytest.approx(want["gold_reward"], abs=1e-5)
    assert got["proxy_reward"] == pytest.approx(want["proxy_reward"], abs=1e-5)
    assert got["kl"] == pytest.approx(want["kl"])


def test_text_prompts_route_on_the_prompt_and_large_calls_are_split(servers, dmoerm_local):
    model, tokenizer = dmoerm_local
    url = servers["dmoerm"].url
    _, prompt_texts, _ = chat_texts(tokenizer, tiny_prompts(4))
    completions = [response + "<|im_end|>\n" for response in RESPONSES] * 4
    texts = [p + c for p, c in zip(prompt_texts, completions)]
    expected, _ = routed_on_prompts(model, tokenizer, texts, prompt_texts)
    remote = RemoteReward(url, batch_size=5, max_concurrency=3)
    before = metrics(url)["batcher"]
    assert remote(prompts=prompt_texts, completions=completions) == pytest.approx(expected, abs=1e-5)
    after = metrics(url)["batcher"]
    assert after["requests"] - before["requests"] == 5  # 24 items in requests of at most 5
    full_text = RemoteReward(url, route_on_prompts=False)(prompts=prompt_texts, completions=completions)
    assert full_text == pytest.approx([r["reward"] for r in model.compute_rewards(texts, tokenizer)], abs=1e-5)
    assert remote(prompts=[], completions=[]) == []


def test_score_conversations_and_health(servers, dmoerm_local):
    model, tokenizer = dmoerm_local
    remote = RemoteReward(servers["dmoerm"].url + "/")
    assert remote.health()["categories"] == model.config.category_names
    _, _, conversations = chat_texts(tokenizer, tiny_prompts(1))
    results = remote.score_conversations(conversations, categories="chitchat")
    assert {r["category"] for r in results} == {"chitchat"}
    assert set(results[0]["capability_rewards"]) == {"empathy", "fluency"}


def test_an_over_long_text_is_refused_not_truncated(servers):
    from dmoerm_trl.rl.remote import RemoteRewardError

    remote = RemoteReward(servers["dmoerm"].url, max_retries=0)
    with pytest.raises(RemoteRewardError, match=r"HTTP 400: .*tokens, more than this server accepts \(256"):
        remote(prompts=["Hi"], completions=["word " * 400])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"url": "127.0.0.1:5000"}, ValueError, "must start with http:// or https://"),
        ({"url": "http://127.0.0.1:5000", "batch_size": 0}, ValueError, "batch_size must be an integer >= 1"),
        ({"url": "http://127.0.0.1:5000", "max_retries": -1}, ValueError, "max_retries must be an integer >= 0"),
        ({"url": "http://127.0.0.1:5000", "timeout": 0}, ValueError, "timeout must be > 0"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        RemoteReward(**kwargs)


def test_mismatched_calls_and_the_token_stays_out_of_repr():
    remote = RemoteReward("http://127.0.0.1:9", api_key="s3cret")
    assert "s3cret" not in repr(remote) and remote.__name__ == "remote_reward"
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        remote(prompts=["a", "b"], completions=["c"])
    with pytest.raises(TypeError, match="prompt 1 is not a message list"):
        remote(prompts=[[{"role": "user", "content": "a"}], "b"], completions=["c", "d"])
