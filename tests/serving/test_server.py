"""``dmoerm serve`` as a real subprocess on 127.0.0.1: same rewards as in process, routing on prompts, the plain-RM
path, health/metrics, batching of concurrent requests, every kind of bad request, auth, back-pressure, client
disconnects, and SIGTERM draining (the last test: it stops the strict server)."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
import torch
from conftest import API_KEY
from serving_helpers import chat_texts, metrics, post, render, routed_on_prompts

from dmoerm_trl.rl import RemoteReward
from dmoerm_trl.rl.tiny_assets import tiny_prompts

AUTH = {"Authorization": f"Bearer {API_KEY}"}


# ------------------------------------------------------------------------------------------- same rewards
def test_get_reward_equals_in_process_compute_rewards(servers, dmoerm_local):
    model, tokenizer = dmoerm_local
    texts, _, _ = chat_texts(tokenizer, tiny_prompts(4))
    expected = [r["reward"] for r in model.compute_rewards(texts, tokenizer)]
    answer = post(servers["dmoerm"].url, "/get_reward", {"query": texts}).json()
    assert answer["rewards"] == pytest.approx(expected, abs=1e-5)
    assert answer["scores"] == answer["rewards"]  # OpenRLHF reads either key
    assert len(set(answer["rewards"])) > len(texts) // 2  # really per text, not a constant
    reversed_answer = post(servers["dmoerm"].url, "/get_reward", {"query": texts[::-1]}).json()
    assert reversed_answer["rewards"] == pytest.approx(expected[::-1], abs=1e-5)  # request order kept


def test_text_without_a_chat_template_is_scored_as_in_process(servers, dmoerm_local):
    """A DMoERM that records its chat template's assistant opener routes on the prompt and cannot split a plain text:
    400 naming the item (in process: an error too); one without (the whole text routed) scores it as in process."""
    model, tokenizer = dmoerm_local
    texts = ["A plain text, no chat template at all.", "Another one."]
    response = post(servers["dmoerm"].url, "/get_reward", {"query": texts})
    if getattr(model.config, "assistant_opener_ids", None):
        assert response.status_code == 400
        assert "query[0]: the text has no assistant-turn opener" in response.json()["error"]["message"]
        with pytest.raises(ValueError):
            model.compute_rewards(texts, tokenizer)
        with_prompts = post(servers["dmoerm"].url, "/get_reward", {"query": texts, "prompts": ["A plain", "Another"]})
        assert with_prompts.status_code == 200  # the prompt given: routed on it
    else:
        expected = [r["reward"] for r in model.compute_rewards(texts, tokenizer)]
        assert response.json()["rewards"] == pytest.approx(expected, abs=1e-5)


def test_get_reward_with_prompts_routes_on_the_prompt(servers, dmoerm_local):
    model, tokenizer = dmoerm_local
    url = servers["dmoerm"].url
    texts, prompt_texts, _ = chat_texts(tokenizer, tiny_prompts(8))
    expected, prompt_categories = routed_on_prompts(model, tokenizer, texts, prompt_texts)
    answer = post(url, "/get_reward", {"query": texts, "prompts": prompt_texts}).json()
    assert answer["rewards"] == pytest.approx(expected, abs=1e-5)
    per_prompt = len(texts) // 8  # every response to one prompt shares the prompt's category
    assert all(len(set(prompt_categories[i : i + per_prompt])) == 1 for i in range(0, len(texts), per_prompt))
    # The prompt decides: give each text the prompt of a prompt routed elsewhere, and the text is scored under that
    # category (the spread router sends the tiny prompts to both categories).
    other = {c: next(i for i, d in enumerate(prompt_categories) if d != c) for c in set(prompt_categories)}
    assert len(other) == 2
    swapped = [prompt_texts[other[c]] for c in prompt_categories]
    moved = post(url, "/get_reward", {"query": texts, "prompts": swapped}).json()["rewards"]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        forced = model(**batch, categories=[1 - c for c in prompt_categories]).logits[:, 0].tolist()
    assert moved == pytest.approx(forced, abs=1e-5)
    assert all(abs(a - b) > 1e-6 for a, b in zip(moved, answer["rewards"]))


def test_v1_rewards_equals_compute_rewards_and_categories_bypass_the_router(servers, dmoerm_local):
    model, tokenizer = dmoerm_local
    _, _, conversations = chat_texts(tokenizer, tiny_prompts(3))
    expected = model.compute_rewards(conversations, tokenizer)
    answer = post(servers["dmoerm"].url, "/v1/rewards", {"conversations": conversations}).json()
    assert answer["model"] == "dmoerm"
    for got, want in zip(answer["results"], expected, strict=True):
        assert got["reward"] == pytest.approx(want["reward"], abs=1e-5)
        assert got["category"] == want["category"]
        assert got["router_prob"] == pytest.approx(want["router_prob"], abs=1e-5)
        assert got["capability_rewards"] == pytest.approx(want["capability_rewards"], abs=1e-5)
    names = model.config.category_names
    categories = [names[i % len(names)] if i % 3 else None for i in range(len(conversations))]
    bypassed = post(
        servers["dmoerm"].url, "/v1/rewards", {"conversations": conversations, "categories": categories}
    ).json()["results"]
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        forced = model(**batch, categories=[c or expected[i]["category"] for i, c in enumerate(categories)])
    for i, result in enumerate(bypassed):
        assert result["category"] == (categories[i] or expected[i]["category"])
        assert result["reward"] == pytest.approx(float(forced.logits[i, 0]), abs=1e-5)
        assert (result["router_prob"] is None) == (categories[i] is not None)  # no router ran for bypassed rows
    one = post(servers["dmoerm"].url, "/v1/rewards", {"conversations": conversations[:2], "categories": names[0]})
    assert [r["category"] for r in one.json()["results"]] == [names[0], names[0]]


def test_plain_sequence_classification_reward_model(servers, gold_local):
    model, tokenizer = gold_local
    url = servers["gold"].url
    texts, _, conversations = chat_texts(tokenizer, tiny_prompts(3))
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)  # as TRL and OpenRLHF
    with torch.no_grad():
        expected = model(**batch).logits[:, 0].tolist()
    assert post(url, "/get_reward", {"query": texts}).json()["rewards"] == pytest.approx(expected, abs=1e-5)
    results = post(url, "/v1/rewards", {"conversations": conversations}).json()["results"]
    assert [r["reward"] for r in results] == pytest.approx(expected, abs=1e-5)
    assert all(r["category"] is None and r["router_prob"] is None and r["capability_rewards"] == {} for r in results)
    refused = post(url, "/v1/rewards", {"conversations": conversations[:1], "categories": ["chitchat"]})
    assert refused.status_code == 400 and "has no categories" in refused.json()["error"]["message"]
    health = httpx.get(url + "/health").json()
    assert health["ready"] and health["categories"] == [] and health["model_type"] == "llama"


# ------------------------------------------------------------------------------------------- health, metrics
def test_health_and_metrics(servers, dmoerm_local):
    url = servers["dmoerm"].url
    texts = [render(dmoerm_local[1], word) for word in ("one", "two", "three")]
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["ready"] is True
    assert health["model"] == "dmoerm" and health["categories"] == ["objective_qa", "chitchat"]
    assert health["capabilities"]["chitchat"] == ["empathy", "fluency"] and health["max_length"] == 256
    before = metrics(url)
    assert post(url, "/get_reward", {"query": texts}).status_code == 200
    post(url, "/get_reward", {"query": 3})
    after = metrics(url)
    batcher_keys = {
        "requests",
        "items",
        "batches",
        "mean_batch_size",
        "queue_depth",
        "errors",
        "latency_p50_ms",
        "latency_p99_ms",
        "dropped_cancelled",
    }
    assert batcher_keys <= set(after["batcher"])
    assert after["batcher"]["requests"] - before["batcher"]["requests"] == 1  # the bad one never reached the queue
    assert after["batcher"]["items"] - before["batcher"]["items"] == 3
    assert after["server"]["client_errors"] - before["server"]["client_errors"] == 1
    assert after["server"]["server_errors"] == 0
    assert after["batcher"]["latency_p50_ms"] <= after["batcher"]["latency_p99_ms"]


def test_concurrent_requests_share_batches(servers, dmoerm_local):
    model, tokenizer = dmoerm_local
    url = servers["dmoerm"].url
    texts, _, _ = chat_texts(tokenizer, tiny_prompts(4))
    expected = [r["reward"] for r in model.compute_rewards(texts, tokenizer)]
    before = metrics(url)["batcher"]

    async def fire():
        async with httpx.AsyncClient(timeout=120) as client:
            answers = await asyncio.gather(*(client.post(url + "/get_reward", json={"query": [t]}) for t in texts))
        return [a.json()["rewards"][0] for a in answers]

    assert asyncio.run(fire()) == pytest.approx(expected, abs=1e-5)
    after = metrics(url)["batcher"]
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests == len(texts) and batches < requests  # requests arriving together shared forward passes


# ------------------------------------------------------------------------------------------- bad requests
CONVERSATION = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
BAD_REQUESTS = [
    ("/get_reward", b"{not json", 400, "malformed JSON"),
    ("/get_reward", b"", 400, "empty request body"),
    ("/get_reward", b"[1, 2]", 400, "must be a JSON object, got array"),
    ("/get_reward", b'{"query": ["\xff"]}', 400, "not UTF-8"),
    ("/get_reward", {"prompts": ["a"]}, 400, "`query` is missing"),
    ("/get_reward", {"query": "one text"}, 400, "`query` must be an array of strings, got string"),
    ("/get_reward", {"query": []}, 400, "`query` is empty"),
    ("/get_reward", {"query": ["fine", 3]}, 400, "query[1]: expected a string, got number"),
    ("/get_reward", {"query": ["fine", None]}, 400, "query[1]: expected a string, got null"),
    ("/get_reward", {"query": ["a", "b"], "prompts": ["a"]}, 400, "`prompts` has 1 items but `query` has 2"),
    ("/get_reward", {"query": ["a"], "prompts": [{"x": 1}]}, 400, "prompts[0]: expected a string, got object"),
    ("/get_reward", {"query": [""]}, 400, "query[0]: the text is empty"),
    ("/get_reward", {"query": ["ok", "word " * 400]}, 400, "tokens, more than this server accepts (256"),
    ("/v1/rewards", {"conversations": {}}, 400, "`conversations` must be an array of message lists, got object"),
    ("/v1/rewards", {"conversations": []}, 400, "`conversations` is empty"),
    ("/v1/rewards", {"conversations": [[]]}, 400, "conversations[0]: expected a non-empty list of messages"),
    ("/v1/rewards", {"conversations": [["hi"]]}, 400, "conversations[0][0]: a message must be an object, got string"),
    ("/v1/rewards", {"conversations": [[{"role": "user"}]]}, 400, "needs string `role` and `content`"),
    ("/v1/rewards", {"conversations": [CONVERSATION[:1]]}, 400, "last message must be the assistant's response"),
    ("/v1/rewards", {"conversations": [CONVERSATION], "categories": ["nope"]}, 400, "unknown category 'nope'"),
    ("/v1/rewards", {"conversations": [CONVERSATION], "categories": ["chitchat"] * 2}, 400, "array of 1 names"),
    ("/v1/rewards", {"conversations": [CONVERSATION], "categories": [7]}, 400, "categories[0]: expected a category"),
]


@pytest.mark.parametrize("path, body, status, message", BAD_REQUESTS, ids=[m for *_, m in BAD_REQUESTS])
def test_bad_requests_get_one_line_json_errors(servers, path, body, status, message):
    response = post(servers["dmoerm"].url, path, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["status"] == status and message in error["message"]
    assert "Traceback" not in response.text and "\n" not in error["message"]


def test_unknown_paths_and_methods_and_no_server_errors(servers):
    url = servers["dmoerm"].url
    for response, status in (
        (httpx.get(url + "/nope"), 404),
        (httpx.get(url + "/get_reward"), 405),
        (httpx.post(url + "/health"), 405),
    ):
        assert response.status_code == status and response.json()["error"]["status"] == status
    assert metrics(url)["server"]["server_errors"] == 0
    assert "Traceback" not in servers["dmoerm"].output()


# ------------------------------------------------------------------------------------------- the strict server
def test_bearer_token_and_it_is_never_logged(servers, dmoerm_local):
    url = servers["strict"].url
    hi = render(dmoerm_local[1], "hi")
    assert httpx.get(url + "/health").status_code == 200  # probes need no token
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = post(url, "/get_reward", {"query": [hi]}, headers=headers)
        assert response.status_code == 401 and "bearer token" in response.json()["error"]["message"]
        assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url + "/metrics").status_code == 401
    assert post(url, "/get_reward", {"query": [hi]}, headers=AUTH).status_code == 200
    assert API_KEY not in servers["strict"].output()
    with pytest.raises(Exception, match="HTTP 401: missing or wrong bearer token"):
        RemoteReward(url, api_key="wrong").score_texts([hi])  # 4xx: no retry, the server's message


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"query": ["a"] * 9}, 413, "`query` has 9 items, more than this server accepts per request (8)"),
        ({"query": ["a" * 5000]}, 413, "exceeds the limit (4000"),
        ({"query": ["word " * 100]}, 400, "tokens, more than this server accepts (64, --max-length)"),
        ({"conversations": [CONVERSATION] * 9}, 413, "`conversations` has 9 items"),
    ],
)
def test_request_limits(servers, body, status, message):
    path = "/v1/rewards" if "conversations" in body else "/get_reward"
    response = post(servers["strict"].url, path, body, headers=AUTH)
    assert response.status_code == status and message in response.json()["error"]["message"]


def _wait_for(url, predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = metrics(url, AUTH)
        if predicate(state):
            return state
        time.sleep(0.05)
    raise AssertionError(f"condition not reached: {metrics(url, AUTH)}")


def test_queue_full_gives_503_and_remote_reward_retries_through_it(servers, dmoerm_local):
    model, tokenizer = dmoerm_local
    url = servers["strict"].url  # queue of 8 items, batches wait up to 3 s to fill
    texts = [render(tokenizer, f"filler {i}") for i in range(8)]
    one_more = render(tokenizer, "one more")
    filler: dict = {}
    thread = threading.Thread(target=lambda: filler.update(r=post(url, "/get_reward", {"query": texts}, AUTH)))
    thread.start()
    _wait_for(url, lambda m: m["batcher"]["queue_depth"] == 8)
    refused = post(url, "/get_reward", {"query": [one_more]}, AUTH)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "queue is full" in refused.json()["error"]["message"]
    remote = RemoteReward(url, api_key=API_KEY, max_retries=10, backoff=0.2)
    rewards = remote.score_texts([one_more])
    assert remote.retries >= 1  # it met the full queue, waited and got through
    assert rewards == pytest.approx([model.compute_rewards([one_more], tokenizer)[0]["reward"]], abs=1e-5)
    thread.join()
    assert filler["r"].status_code == 200 and len(filler["r"].json()["rewards"]) == 8


def test_disconnected_client_items_are_dropped_before_scoring(servers, dmoerm_local):
    url = servers["strict"].url
    texts = [render(dmoerm_local[1], "nobody waits for this"), render(dmoerm_local[1], "nor this")]
    before = metrics(url, AUTH)["batcher"]
    with pytest.raises(httpx.ReadTimeout):
        post(url, "/get_reward", {"query": texts}, AUTH, timeout=0.5)
    after = _wait_for(url, lambda m: m["batcher"]["dropped_cancelled"] >= before["dropped_cancelled"] + 2)
    assert after["batcher"]["items"] - before["items"] == 2
    assert after["batcher"]["batches"] == before["batches"]  # nothing was scored for the gone client
    assert after["batcher"]["queue_depth"] == 0


def test_remote_reward_gives_up_on_an_unreachable_server_after_its_retries():
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    remote = RemoteReward(f"http://127.0.0.1:{port}/get_reward", max_retries=2, backoff=0.01, timeout=5)
    with pytest.raises(Exception, match=r"cannot reach the reward server after 3 attempts .*ConnectError"):
        remote.score_texts(["hi"])
    assert remote.retries == 2 and remote.url == f"http://127.0.0.1:{port}"


def test_sigterm_finishes_requests_in_flight_then_exits(servers, dmoerm_local):
    """Runs last in this module: it stops the strict server."""
    model, tokenizer = dmoerm_local
    server = servers["strict"]
    texts = [render(tokenizer, f"{n} in flight") for n in ("first", "second", "third")]
    answers: dict = {}

    def send(i):
        answers[i] = post(server.url, "/get_reward", {"query": [texts[i]]}, AUTH)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    _wait_for(server.url, lambda m: m["batcher"]["queue_depth"] == 3)  # queued, waiting for the batch to fill
    assert server.terminate(timeout=120) == 0
    for thread in threads:
        thread.join()
    expected = [r["reward"] for r in model.compute_rewards(texts, tokenizer)]
    assert [answers[i].status_code for i in range(3)] == [200, 200, 200]
    assert [answers[i].json()["rewards"][0] for i in range(3)] == pytest.approx(expected, abs=1e-5)
    output = server.output()
    assert "dmoerm serve: stopped after" in output and "'errors': 0" in output and "Traceback" not in output
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health", timeout=5)
