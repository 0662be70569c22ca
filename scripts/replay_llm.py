"""A local OpenAI-compatible server that answers question-generation prompts like Qwen3 would, from a QA set.

No LLM runs on the benchmark machine, so this server stands in for one: for each prompt it finds the statute articles
the chunk in the prompt holds (data/laws/articles/*.jsonl, matched by shared 8-character shingles) and answers with
the shared QA set's questions of those articles (data/laws/qa/*.json: one LLM-written question per article), as many
as the prompt asks for (fewer when the chunk holds fewer articles: a replay cannot invent questions), wrapped the
way chat models wrap them: an empty ``<think>`` block, a lead-in line, numbering, bold, quotes, a closing remark.
The wrapping and the choice among a chunk's articles are seeded by the request's seed and the prompt, so a retry with
another seed gets another answer, and a rerun gets the same one.

    python scripts/replay_llm.py --laws company_law,insurance_law --port 8011
    offline-embft generate chunks.jsonl --backend openai --base-url http://127.0.0.1:8011/v1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LAWS_DIR = REPO / "data" / "laws"
MODEL_NAME = "Qwen3-8B-replay"
SHINGLE = 8
HELD_SHARE = 0.5  # an article is in a chunk when half of its shingles are
_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)
_ASKED = re.compile(r"提出\s*(\d+)\s*个问题")

LEAD_INS = ("", "", "以下是根据资料生成的问题：", "根据上述资料，可以提出以下问题：", "好的，以下是问题：\n")
CLOSINGS = ("", "", "", "以上问题均可根据资料回答。", "希望这些问题对您有帮助！")
NUMBERING = (
    lambda i, q: f"{i}. {q}",
    lambda i, q: f"{i}、{q}",
    lambda i, q: f"**问题{i}：** {q}",
    lambda i, q: f"问题{i}：{q}",
    lambda i, q: f"- {q}",
    lambda i, q: f"“{q}”",
    lambda i, q: q,
    lambda i, q: f"Q{i}: {q}",
)


def normalize(text: str) -> str:
    return _NOT_WORD.sub("", text)


def shingles(text: str) -> set[str]:
    text = normalize(text)
    return {text[i : i + SHINGLE] for i in range(max(1, len(text) - SHINGLE + 1))}


class QuestionBank:
    """The QA sets' questions by article, and which articles a piece of text holds."""

    def __init__(self, laws: list[str]) -> None:
        self.articles: list[tuple[str, set[str]]] = []  # (article id, shingles) in statute order
        self.questions: dict[str, list[str]] = {}
        for law in laws:
            qa = json.loads((LAWS_DIR / "qa" / f"{law}.json").read_text(encoding="utf-8"))
            for query_id, docs in qa["relevant_docs"].items():
                for doc in docs:
                    self.questions.setdefault(doc, []).append(qa["queries"][query_id])
            for line in (LAWS_DIR / "articles" / f"{law}.jsonl").read_text(encoding="utf-8").splitlines():
                if line.strip():
                    article = json.loads(line)
                    if article["id"] in self.questions:
                        self.articles.append((article["id"], shingles(article["text"])))
        self.index: dict[str, list[int]] = {}
        for number, (_, grams) in enumerate(self.articles):
            for gram in grams:
                self.index.setdefault(gram, []).append(number)

    def held(self, text: str) -> list[str]:
        """Ids of the articles at least half of whose text is in ``text``, in statute order."""
        hits: Counter[int] = Counter()
        for gram in shingles(text):
            for number in self.index.get(gram, ()):
                hits[number] += 1
        return [self.articles[n][0] for n in sorted(hits) if hits[n] >= HELD_SHARE * max(1, len(self.articles[n][1]))]


def answer(bank: QuestionBank, prompt: str, seed: int | None) -> str:
    """What a Qwen3 instruct model, asked with ``prompt``, might have written."""
    rng = random.Random(hashlib.sha256(f"{seed}|{prompt}".encode()).hexdigest())
    asked = int(m.group(1)) if (m := _ASKED.search(prompt)) else 1
    articles = bank.held(prompt)
    questions = [q for article in articles for q in bank.questions.get(article, [])]
    if len(questions) > asked:
        picked = sorted(rng.sample(range(len(questions)), asked))
        questions = [questions[i] for i in picked]
    if not questions:
        return "资料中没有足够的信息来提出问题。"
    style = rng.choice(NUMBERING)
    lines = [style(i, q) for i, q in enumerate(questions, start=1)]
    parts = []
    if rng.random() < 0.5:
        parts.append("<think>\n\n</think>\n")  # what Qwen3 leaves behind with /no_think
    lead = rng.choice(LEAD_INS)
    if lead:
        parts.append(lead)
    parts.append("\n".join(lines))
    closing = rng.choice(CLOSINGS)
    if closing:
        parts.append("\n" + closing)
    return "\n".join(parts)


class ReplayServer:
    """The server on 127.0.0.1 (port 0: any free port), in a daemon thread."""

    def __init__(self, laws: list[str], port: int = 0) -> None:
        bank = QuestionBank(laws)
        self.requests = 0
        lock = threading.Lock()
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
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if body.get("model") != MODEL_NAME:
                    self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
                    return
                with lock:
                    server.requests += 1
                content = answer(bank, body["messages"][-1]["content"], body.get("seed"))
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{server.requests}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": MODEL_NAME,
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                    },
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--laws", default="company_law,insurance_law", help="QA sets in data/laws/qa to answer from")
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    server = ReplayServer([law.strip() for law in args.laws.split(",") if law.strip()], args.port)
    print(f"serving {MODEL_NAME} at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.thread.join()
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()
