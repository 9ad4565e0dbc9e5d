"""Each private API of another library that dmoerm_trl/_compat.py uses still exists and behaves as relied on, on the
installed transformers / PEFT / openai. A failure here names what changed upstream."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dmoerm_trl import _compat


def test_trainer_has_the_private_hooks_with_the_known_signatures():
    assert _compat.trainer_hooks_missing() is None, _compat.trainer_hooks_missing()


@pytest.mark.parametrize(
    "hook",
    [
        "self._save(",
        "self._load_from_checkpoint(",
        "self._load_best_model()",
        "self._set_signature_columns_if_needed()",
        "self._signature_columns",
    ],
)
def test_trainer_still_calls_the_hooks_the_stage_trainers_override(hook):
    # The stage trainers' checkpoints and column handling only work if the Trainer goes through these hooks.
    from transformers import Trainer

    assert hook in inspect.getsource(Trainer), f"transformers' Trainer no longer calls {hook}"


def test_the_stage_trainers_route_the_hooks_to_their_own_methods():
    from dmoerm_trl.trainers import AggregatorTrainer, CapabilityExpertTrainer, RouterTrainer, TaskTrainer

    for trainer in (AggregatorTrainer, CapabilityExpertTrainer, RouterTrainer, TaskTrainer):
        for hook in ("_save", "_load_from_checkpoint", "_load_best_model"):
            assert getattr(trainer, hook) is getattr(_compat.TrainerCheckpointHooks, hook), (trainer, hook)
    assert (
        RouterTrainer._set_signature_columns_if_needed is _compat.SignatureColumnsHook._set_signature_columns_if_needed
    )


def test_task_and_expert_trainers_are_siblings_on_the_stage_reward_trainer():
    from trl import RewardTrainer

    from dmoerm_trl.trainers import CapabilityExpertTrainer, TaskTrainer
    from dmoerm_trl.trainers._stage_reward_trainer import _StageRewardTrainer

    assert not issubclass(TaskTrainer, CapabilityExpertTrainer) and not issubclass(
        CapabilityExpertTrainer, TaskTrainer
    )
    for trainer in (TaskTrainer, CapabilityExpertTrainer):
        assert issubclass(trainer, _StageRewardTrainer) and issubclass(trainer, RewardTrainer)


def test_without_zero3_init_detaches_the_live_deepspeed_config():
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    config = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}
    args = TrainingArguments(output_dir="unused", deepspeed=config, use_cpu=True, report_to="none")
    try:
        assert (
            args.hf_deepspeed_config.is_zero3() and is_deepspeed_zero3_enabled()
        )  # the weak reference transformers keeps to the live config
        with _compat.without_zero3_init():
            assert not is_deepspeed_zero3_enabled()
        assert is_deepspeed_zero3_enabled()
    finally:
        unset_hf_deepspeed_config()


def test_peft_has_what_the_one_pass_adapter_injection_calls():
    assert _compat.peft_lora_api_missing() is None, _compat.peft_lora_api_missing()


def test_peft_wrappers_add_an_adapter_like_peft(tiny_llama_path):
    # The one-pass injection (its own tests compare it with PEFT's loop bit for bit) through the three wrappers.
    from peft import LoraConfig
    from transformers import AutoModel

    from dmoerm_trl.models.dmoerm._lora_injection import wrap_with_adapters

    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    model = wrap_with_adapters(AutoModel.from_pretrained(tiny_llama_path), ["a1", "b2", "c3"], config)
    assert sorted(model.peft_config) == ["a1", "b2", "c3"] and model.active_adapter == "a1"
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".a1." in name for name in trainable)
    assert any(".c3." in name for name, _ in model.named_parameters())


class _JsonHandler(BaseHTTPRequestHandler):
    def _answer(self, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._answer({"path": self.path, "echo": body, "auth": self.headers.get("Authorization")})

    def do_GET(self):
        self._answer({"path": self.path, "data": []})

    def log_message(self, *args):
        pass


def test_openai_generic_requests_return_the_raw_json():
    import openai

    server = ThreadingHTTPServer(("127.0.0.1", 0), _JsonHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:

        async def main():
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.server_port}/v1", api_key="k-test")
            try:
                posted = await _compat.openai_post_json(client, "/chat/completions", {"model": "m", "n": 1}, 5.0)
                got = await _compat.openai_get_json(client, "/models", 5.0)
            finally:
                await client.close()
            return posted, got

        posted, got = asyncio.run(main())
    finally:
        server.shutdown()
        server.server_close()
    assert posted == {"path": "/v1/chat/completions", "echo": {"model": "m", "n": 1}, "auth": "Bearer k-test"}
    assert got == {"path": "/v1/models", "data": []}
