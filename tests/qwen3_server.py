"""A loopback OpenAI-compatible server that answers question prompts the way Qwen3 does when nobody cleans up.

Each answer wraps known questions (the server's ground truth, recorded per chunk) in what Qwen3 and its relatives
write around them: think blocks (closed, empty, unclosed), lead-ins ("以下是生成的问题："), role prefixes (问题：,
生成的问题：, Q1:), numbering, markdown, quotes, and explanations after the question. The first attempt (a request
seeded under ``first_seed``, see ``run_seed``) of some chunks gives nothing usable (empty text, only thinking, a
refusal, an English question); another seed answers properly, as a real model does with other sampling.

A dataset question is clean exactly when it is one of the ground-truth questions of its chunk, so tests and the
benchmark measure cleanliness without trusting the extraction they test. Used by tests/test_clean_llm.py and
scripts/bench_clean_questions.py; it listens on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from offline_embft.generate.llm.transformers_backend import prompt_seed

DELIMITER = "---------------------"  # both our built-in prompt and LlamaIndex's default put the chunk between these
_WANTED = re.compile(r"(\d+)\s*(?:个问题|questions)")
_CJK_RUN = re.compile(r"[\u4e00-\u9fff]{6,}")
_ASKS = ("在法律上应当如何理解？", "适用于哪些情形？", "由谁负责落实？", "有哪些具体要求？")

# How the answer is wrapped, chosen per chunk; each returns the raw text for the given questions.
STYLES = {
    "empty_think": lambda qs: "<think>\n\n</think>\n\n" + "\n".join(qs),
    "role_prefix": lambda qs: "\n".join(f"问题：{q}" for q in qs),
    "generated_prefix": lambda qs: "<think>\n\n</think>\n\n" + "\n".join(f"生成的问题：{q}" for q in qs),
    "thinking_numbered": lambda qs: (
        "<think>\n好的，用户希望我根据资料提问。先找出关键概念，再组织问题。\n</think>\n\n"
        + "\n".join(f"{i}. {q}" for i, q in enumerate(qs, 1))
    ),
    "lead_in_list": lambda qs: (
        "以下是根据资料生成的问题：\n\n"
        + "\n".join(f"{i}、{q}" for i, q in enumerate(qs, 1))
        + "\n\n希望这些问题对您有帮助！"
    ),
    "quoted": lambda qs: "\n".join(f"“{q}”" for q in qs),
    "explained": lambda qs: "\n".join(f"{q}（这个问题考查对资料中关键规定的理解。）" for q in qs),
    "explained_next_line": lambda qs: "\n".join(f"{q}\n解释：该问题直接对应资料中的规定。" for q in qs),
    "markdown": lambda qs: "\n".join(f"**问题{i}：** {q}" for i, q in enumerate(qs, 1)),
    "plain": lambda qs: "\n".join(qs),
}
# What some chunks get on the first attempt: nothing usable.
FIRST_TRY_FAILURES = {
    "empty": lambda qs: "",
    "only_thinking": lambda qs: "<think>\n\n</think>\n\n",
    "unclosed_thinking": lambda qs: "<think>\n好的，我需要仔细阅读这段资料，找出其中的关键概念",
    "refusal": lambda qs: "抱歉，我无法根据这段内容提出问题。",
    "english": lambda qs: "What does this provision regulate?",
}


def chunk_of(prompt: str) -> str:
    """The chunk inside a prompt (the text between the two delimiter lines)."""
    parts = prompt.split(DELIMITER)
    return parts[1].strip() if len(parts) >= 3 else prompt.strip()


def wanted_of(prompt: str) -> int:
    """How many questions the prompt asks for (1 when it does not say)."""
    match = _WANTED.search(prompt.split(DELIMITER)[-1])
    return int(match.group(1)) if match else 1


def _hash(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def true_questions(chunk: str, count: int, seed: int | None) -> list[str]:
    """The questions the model 'means' for a chunk: a 6-character term of the chunk and a question ending."""
    runs = _CJK_RUN.findall(chunk) or [chunk[:6]]
    questions = []
    for i in range(count):
        run = runs[_hash(chunk, seed, i) % len(runs)]
        start = _hash(chunk, seed, i, "start") % (len(run) - 5)
        questions.append(run[start : start + 6] + _ASKS[(i + _hash(chunk, seed)) % len(_ASKS)])
    return questions


# Tries a request's seed is traced back over (first try and retries): far more than any test's retry limit.
MAX_TRIES = 32


class Qwen3LikeServer:
    """The server; ``truth[chunk]`` holds every question it meant for that chunk, ``requests`` every request body."""

    def __init__(
        self,
        model: str = "Qwen3-8B",
        *,
        first_seed: int = 42,
        failure_share: float = 0.3,
        hopeless: frozenset[str] = frozenset(),
    ) -> None:
        self.model = model
        self.first_seed = first_seed
        self.failure_share = failure_share
        self.hopeless = hopeless  # chunks that never get a usable answer (refusals on every seed)
        self.truth: dict[str, set[str]] = defaultdict(set)
        self.requests: list[dict[str, Any]] = []
        self.answers: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                prompt = body["messages"][-1]["content"]
                text = server.answer(prompt, body.get("seed"))
                with server.lock:
                    server.requests.append({**body, "run_seed": server.run_seed(prompt, body.get("seed"))})
                    server.answers.append(text)
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{len(server.requests)}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    },
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def run_seed(self, prompt: str, seed: int | None) -> int | None:
        """The run's seed behind a request's seed: the backends send ``prompt_seed(run seed, prompt)`` (the first try
        under the run's seed, each retry under the next), so the server reads the try back from it; a seed that is no
        such hash is taken as it is."""
        if seed is None:
            return None
        for run_seed in range(self.first_seed, self.first_seed + MAX_TRIES):
            if prompt_seed(run_seed, prompt) == seed:
                return run_seed
        return seed

    def answer(self, prompt: str, seed: int | None) -> str:
        """The raw answer to one prompt with one seed (deterministic)."""
        seed = self.run_seed(prompt, seed)
        chunk, count = chunk_of(prompt), wanted_of(prompt)
        if chunk in self.hopeless:
            return "抱歉，我无法根据这段内容提出问题。"
        if seed == self.first_seed and _hash(chunk, "fails") % 1000 < self.failure_share * 1000:
            failures = list(FIRST_TRY_FAILURES.values())
            return failures[_hash(chunk, "how") % len(failures)]([])
        questions = true_questions(chunk, count, seed)
        with self.lock:
            self.truth[chunk].update(questions)
        styles = list(STYLES.values())
        return styles[_hash(chunk, seed, "style") % len(styles)](questions)

    def style_counts(self) -> dict[str, int]:
        """How many answers had each wrapping (for the benchmark's table)."""
        counts: dict[str, int] = defaultdict(int)
        for text in self.answers:
            counts["usable" if any(q in text for qs in self.truth.values() for q in qs) else "unusable"] += 1
        return dict(counts)

    def dirty(self, queries: dict[str, str], relevant_docs: dict[str, list[str]], corpus: dict[str, str]) -> list[str]:
        """The dataset questions that are not exactly one of their chunk's ground-truth questions."""
        bad = []
        for query_id, question in queries.items():
            chunk = corpus[relevant_docs[query_id][0]]
            if question not in self.truth.get(chunk.strip(), set()):
                bad.append(question)
        return bad

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
