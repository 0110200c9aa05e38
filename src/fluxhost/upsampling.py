"""Prompt upsampling: a language model rewrites a short prompt into a richer one before generation.

Two backends: any OpenAI-compatible chat-completions endpoint (vLLM, Ollama, llama.cpp's server,
OpenAI itself), or a transformers causal language model run in this process.
"""

from __future__ import annotations

import threading
from typing import Protocol

import httpx

INSTRUCTIONS = (
    "You rewrite prompts for a text-to-image model. Keep the subject, the intent and every detail the user "
    "gave; add concrete visual detail: composition, setting, lighting, colour, materials, style. Answer with "
    "the rewritten prompt only, one paragraph of at most 120 words, no preamble and no quotes."
)
MAX_NEW_TOKENS = 200


class UpsamplingFailed(RuntimeError):
    """The backend gave no usable rewrite; the message says why, never the prompt."""


class Upsampler(Protocol):
    description: str

    def rewrite(self, prompt: str, seed: int) -> str: ...


def _usable(text: str | None) -> str:
    text = (text or "").strip().strip('"').strip()
    if not text:
        raise UpsamplingFailed("the language model answered with an empty prompt")
    return text


class ChatCompletions:
    """``POST {base_url}/chat/completions`` with the rewriting instructions; the seed is passed on
    (servers that honour it give the same rewrite for the same task)."""

    def __init__(self, base_url: str, model: str, api_key: str = "", timeout: float = 30.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.description = f"{model} at {base_url}"
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(headers=headers, timeout=timeout, follow_redirects=False)

    def rewrite(self, prompt: str, seed: int) -> str:
        body = {"model": self.model, "seed": seed, "temperature": 0.7, "max_tokens": 400,
                "messages": [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": prompt}]}
        try:
            answer = self._http.post(self.url, json=body)
        except httpx.TimeoutException:
            raise UpsamplingFailed(f"{self.description} did not answer within {self._http.timeout.read}s") from None
        except httpx.HTTPError as error:
            raise UpsamplingFailed(f"{self.description} could not be reached ({type(error).__name__})") from None
        if answer.status_code != 200:
            raise UpsamplingFailed(f"{self.description} answered HTTP {answer.status_code}")
        try:
            return _usable(answer.json()["choices"][0]["message"]["content"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise UpsamplingFailed(f"{self.description} sent no chat completion") from None


class LocalLanguageModel:
    """A transformers causal LM (folder or hub id) with a chat template, greedy decoding: the same
    prompt is rewritten the same way."""

    def __init__(self, model: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.description = f"{model} (in process)"
        self._tokenizer = AutoTokenizer.from_pretrained(model)
        self._model = AutoModelForCausalLM.from_pretrained(model)
        self._model.eval()
        self._lock = threading.Lock()

    def rewrite(self, prompt: str, seed: int) -> str:
        import torch

        messages = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": prompt}]
        inputs = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                     return_dict=True)
        with self._lock, torch.inference_mode():
            output = self._model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                          pad_token_id=self._tokenizer.pad_token_id or self._tokenizer.eos_token_id)
        new_tokens = output[0, inputs["input_ids"].shape[1]:]
        return _usable(self._tokenizer.decode(new_tokens, skip_special_tokens=True))
