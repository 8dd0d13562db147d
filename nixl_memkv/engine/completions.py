"""Requests to vLLM's OpenAI completions endpoint, timed the way a user sees
them: greedy, streamed, time to first token measured at the first streamed
token, with every generated token and its logprob kept so two runs can be
compared exactly."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request


@dataclasses.dataclass
class Completion:
    tokens: list[str]
    logprobs: list[float]
    ttft_s: float    # request sent → first generated token received
    total_s: float
    prompt_tokens: int

    def same_output(self, other: "Completion", logprob_tolerance: float = 1e-3) -> bool:
        """Identical greedy tokens and logprobs within tolerance (a cache hit
        runs a different kernel path, so the last bits may differ)."""
        return self.tokens == other.tokens and len(self.logprobs) == len(other.logprobs) and all(
            abs(a - b) <= logprob_tolerance for a, b in zip(self.logprobs, other.logprobs))

    def difference(self, other: "Completion") -> str:
        if self.tokens != other.tokens:
            return f"tokens {self.tokens} vs {other.tokens}"
        worst = max((abs(a - b) for a, b in zip(self.logprobs, other.logprobs)), default=0.0)
        return f"same tokens, logprobs differ by up to {worst:.3g}"


class CompletionError(RuntimeError):
    pass


def complete(base_url: str, model: str, prompt: str | list[int], max_tokens: int = 8, timeout: float = 600.0) -> Completion:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                       "logprobs": 1, "stream": True, "stream_options": {"include_usage": True},
                       "ignore_eos": True}).encode()
    req = urllib.request.Request(f"{base_url}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    tokens: list[str] = []
    logprobs: list[float] = []
    prompt_tokens = 0
    ttft = None
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("usage"):
                    prompt_tokens = event["usage"].get("prompt_tokens", 0)
                for choice in event.get("choices", []):
                    lp = choice.get("logprobs") or {}
                    new = lp.get("tokens") or []
                    if new and ttft is None:
                        ttft = time.perf_counter() - t0
                    tokens += new
                    logprobs += [float(x) for x in lp.get("token_logprobs") or []]
    except OSError as e:
        detail = e.read().decode(errors="replace")[:500] if hasattr(e, "read") else ""
        raise CompletionError(f"completion request to {base_url} failed: {e} {detail}".strip()) from e
    if ttft is None:
        raise CompletionError(f"completion from {base_url} returned no tokens")
    return Completion(tokens, logprobs, ttft, time.perf_counter() - t0, prompt_tokens)
