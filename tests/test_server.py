"""`llamette serve` as a real process: the official openai client, concurrency, disconnects, bad input, the API key,
SIGTERM, and the web page in headless Chromium."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

ARTIFACTS = Path(__file__).parent / "artifacts"
PROMPT_WORDS = [
    "Paris",
    "Water",
    "Music",
    "Bread",
    "Snow",
    "Gold",
    "Tea",
    "Rivers",
    "Mountains",
    "Winter",
    "Summer",
    "Coffee",
    "Dogs",
    "Cats",
    "Birds",
    "Trees",
    "Oceans",
    "Stars",
    "Books",
    "Cars",
    "Trains",
    "Bicycles",
    "Apples",
    "Oranges",
    "Bananas",
    "Lemons",
    "Gardens",
    "Flowers",
    "Castles",
    "Kings",
    "Queens",
    "Dragons",
    "Robots",
    "Computers",
    "Phones",
    "Clocks",
    "Maps",
    "Ships",
    "Pirates",
    "Islands",
    "Deserts",
    "Forests",
    "Volcanoes",
    "Rain",
    "Thunder",
    "Clouds",
    "Wind",
    "Fire",
    "Ice",
    "Salt",
    "Sugar",
    "Honey",
    "Cheese",
    "Milk",
    "Eggs",
    "Rice",
    "Soup",
    "Pizza",
    "Pasta",
    "Chocolate",
    "Cookies",
    "Cake",
    "Bees",
    "Frogs",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llamette", "serve", "--port", str(self.port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def server():
    s = Server("-np", "8", "-c", "8192", "--metrics")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused")


def test_openai_models_and_completion(client) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["SmolLM2-135M-Instruct.Q4_1"]
    out = client.completions.create(model=models.data[0].id, prompt="The capital of France is", max_tokens=8,
                                    temperature=0)  # fmt: skip
    assert out.choices[0].text.startswith(" Paris")
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == 5 and out.usage.completion_tokens == 8 and out.usage.total_tokens == 13
    stopped = client.completions.create(model="SmolLM2-135M-Instruct.Q4_1", prompt="The capital of France is",
                                        max_tokens=20, temperature=0, stop=["."])  # fmt: skip
    assert stopped.choices[0].finish_reason == "stop" and "." not in stopped.choices[0].text
    lp = client.completions.create(model="x" * 0 or models.data[0].id, prompt="The capital of France is",
                                   max_tokens=3, temperature=0, logprobs=2)  # fmt: skip
    assert len(lp.choices[0].logprobs.tokens) == 3 and len(lp.choices[0].logprobs.top_logprobs[0]) == 2


def test_openai_seeded_sampling_repeats(client) -> None:
    kw = {"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "Once upon a time", "max_tokens": 16, "seed": 7}
    assert client.completions.create(**kw).choices[0].text == client.completions.create(**kw).choices[0].text


def test_openai_chat_and_stream(client) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]
    full = client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=messages, max_tokens=16,
                                          temperature=0)  # fmt: skip
    assert full.choices[0].message.role == "assistant" and full.choices[0].message.content
    stream = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", messages=messages, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_openai_completion_stream_ends_with_done(server) -> None:
    with httpx.stream("POST", server.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 5, "stream": True},
                      timeout=30) as r:  # fmt: skip
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_openai_embeddings(client) -> None:
    out = client.embeddings.create(model="SmolLM2-135M-Instruct.Q4_1", input=["a cat", "a dog", "tax law"])
    assert [d.index for d in out.data] == [0, 1, 2] and len(out.data[0].embedding) == 576
    import numpy as np

    v = np.array([d.embedding for d in out.data])
    assert v[0] @ v[1] > v[0] @ v[2]
    assert out.usage.prompt_tokens > 0


def test_native_routes(server) -> None:
    url = server.url
    assert httpx.post(url + "/tokenize", json={"content": "Hello world!"}).json() == {"tokens": [19556, 905, 17]}
    assert httpx.post(url + "/detokenize", json={"tokens": [19556, 905, 17]}).json() == {"content": "Hello world!"}
    done = httpx.post(url + "/completion", json={"prompt": "The capital of France is", "n_predict": 4,
                                                  "temperature": 0}, timeout=30).json()  # fmt: skip
    assert (
        done["content"].startswith(" Paris") and done["tokens_predicted"] == 4 and done["timings"]["predicted_n"] == 4
    )
    props = httpx.get(url + "/props").json()
    assert props["total_slots"] == 8 and props["n_ctx"] == 1024 and "im_start" in props["chat_template"]
    slots = httpx.get(url + "/slots").json()
    assert len(slots) == 8 and all({"id", "is_processing", "n_ctx"} <= set(s) for s in slots)
    metrics = httpx.get(url + "/metrics").text
    for name in ("prompt_tokens_total", "tokens_predicted_total", "requests_processing", "requests_deferred",
                 "kv_cache_usage_ratio", "prompt_tokens_seconds", "predicted_tokens_seconds"):  # fmt: skip
        assert f"llamacpp:{name} " in metrics
    assert httpx.get(url + "/health").json() == {"status": "ok"}


def _greedy(url: str, prompt: str) -> str:
    r = httpx.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": 20, "temperature": 0}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_sixteen_clients_match_requests_run_alone(server) -> None:
    """16 clients x 4 greedy requests at once: all succeed, each equals the same request run alone (prompts start
    with different tokens, so no slot's prompt cache changes how a prompt is evaluated)."""
    prompts = [f"{word} are" for word in PROMPT_WORDS[:64]]
    alone = {p: _greedy(server.url, p) for p in prompts}

    def client_run(i: int) -> list[tuple[str, str]]:
        return [(p, _greedy(server.url, p)) for p in prompts[4 * i : 4 * i + 4]]

    with ThreadPoolExecutor(16) as pool:
        results = [r for batch in pool.map(client_run, range(16)) for r in batch]
    assert len(results) == 64
    for prompt, text in results:
        assert text == alone[prompt], prompt


def _busy(url: str) -> int:
    return sum(s["is_processing"] for s in httpx.get(url + "/slots").json())


def test_disconnect_frees_the_slot(server) -> None:
    body = {"prompt": "Tell a long story.", "max_tokens": 4000, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        for _ in range(6):  # a few events, then the client goes away without reading the rest
            next(lines)
        assert _busy(server.url) == 1
    closed = time.time()
    while _busy(server.url) and time.time() - closed < 1.0:
        time.sleep(0.05)
    assert _busy(server.url) == 0, "the slot is still busy 1 s after the client left"
    assert _greedy(server.url, "Hello") is not None


BAD = [
    ("/v1/completions", b'{"prompt": "x", "max_tokens": ', 400, "not valid JSON"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "top_p": -0.1}, 400, "top_p"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt"),
    ("/v1/completions", {}, 400, "prompt"),
    ("/v1/completions", {"prompt": "word " * 1500}, 400, "longer than the context"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "gpt-4"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"99999999": 1}}, 400, "logit_bias"),
    ("/v1/completions", {"prompt": "x", "seed": -5}, 400, "seed"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "no role"}]}, 400, "role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400, "stream"),
    ("/v1/embeddings", {"input": 3}, 400, "input"),
    ("/detokenize", {"tokens": [-1]}, 400, "out of range"),
]


@pytest.mark.parametrize(("path", "body", "status", "mention"), BAD, ids=[f"{b[0]}-{b[3]}" for b in BAD])
def test_bad_input_is_a_clear_error(server, path, body, status, mention) -> None:
    if isinstance(body, bytes):
        r = httpx.post(server.url + path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = httpx.post(server.url + path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert mention in error["message"] and error["type"]


def test_oversized_body_and_it_keeps_serving(server) -> None:
    r = httpx.post(
        server.url + "/v1/completions", content=b"x" * (9 << 20), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]
    assert httpx.get(server.url + "/health").status_code == 200
    assert _greedy(server.url, "The capital of France is").startswith(" Paris")


def test_api_key() -> None:
    s = Server("-np", "1", "-c", "512", "--api-key", "s3cret")
    try:
        assert httpx.get(s.url + "/health").status_code == 200  # open
        for path in ("/v1/models", "/props", "/slots", "/stats"):
            r = httpx.get(s.url + path)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", path
        assert httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.post(s.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2},
                        headers={"Authorization": "Bearer s3cret"}, timeout=30)  # fmt: skip
        assert ok.status_code == 200
        from openai import AuthenticationError, OpenAI

        assert OpenAI(base_url=s.url + "/v1", api_key="s3cret").models.list().data
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=s.url + "/v1", api_key="nope").models.list()
    finally:
        s.stop()


def test_sigterm_finishes_running_requests_and_exits() -> None:
    s = Server("-np", "2", "-c", "1024")
    got: dict = {}

    def stream() -> None:
        body = {"prompt": "Count:", "max_tokens": 200, "ignore_eos": True, "stream": True, "temperature": 0}
        try:
            with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=30) as r:
                got["lines"] = [line for line in r.iter_lines() if line]
        except httpx.HTTPError as e:
            got["error"] = e

    t = threading.Thread(target=stream)
    t.start()
    deadline = time.time() + 10
    while _busy(s.url) == 0 and time.time() < deadline:
        time.sleep(0.02)
    s.proc.send_signal(signal.SIGTERM)
    code = s.proc.wait(20)
    t.join(10)
    assert code == 0
    assert got.get("lines", [""])[-1] == "data: [DONE]", got  # the running request was finished, not cut
    with pytest.raises(httpx.ConnectError):
        httpx.get(s.url + "/health", timeout=2)
    assert "stopped" in s.proc.stdout.read()


def test_binds_localhost_by_default(server) -> None:
    addrs = [a for a in ("127.0.0.1",)]
    assert server.url.startswith(f"http://{addrs[0]}")
    out = subprocess.run([sys.executable, "-m", "llamette", "serve", "--help"], capture_output=True, text=True)
    assert "this machine only" in out.stdout


@pytest.mark.slow
def test_web_page_in_chromium(server) -> None:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,800"):  # fmt: skip
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "model").text.startswith("SmolLM2"))
        temperature = driver.find_element(By.ID, "temperature")
        temperature.clear()
        temperature.send_keys("0")
        max_tokens = driver.find_element(By.ID, "max_tokens")
        max_tokens.clear()
        max_tokens.send_keys("40")
        driver.find_element(By.ID, "input").send_keys("Write a short poem about the sea.")
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: "tok/s" in d.find_element(By.ID, "gen-tps").text)
        reply = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .body")[-1].text
        expected = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "Write a short poem about the sea."}], "temperature": 0,
            "max_tokens": 40, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.0, "seed": -1,
        }).json()["choices"][0]["message"]["content"]  # fmt: skip
        assert reply == expected  # the page streamed the whole greedy reply
        assert "tok/s" in driver.find_element(By.CSS_SELECTOR, ".msg.assistant .meta").text
        assert "MiB" in driver.find_element(By.ID, "rss").text
        wait.until(lambda d: "tokens" in d.find_element(By.ID, "kv").text)
        ttft = driver.find_element(By.ID, "ttft").text
        assert ttft.endswith(" ms")
        driver.execute_script("document.querySelector('aside').scrollTop = 0")
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "web_page.png"))
    finally:
        driver.quit()
