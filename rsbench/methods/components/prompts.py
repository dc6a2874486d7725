"""Caption prompts ("a satellite image of ...") for the CLIP-family methods, applied at tokenisation.

A prompt is part of what the text tower sees, so it lives with the tokenizer (it runs in the
DataLoader workers and must pickle), not in the loss.
"""

from __future__ import annotations

from typing import Any

import torch


def format_caption(caption: str, prompt: str = "") -> str:
    """Prepend a prompt such as "a satellite image of" (first letter of the caption lower-cased).

    With an empty prompt the caption is returned unchanged, so the default changes nothing.
    """
    if not prompt:
        return caption
    text = caption.strip()
    text = text[:1].lower() + text[1:]
    return f"{prompt.rstrip()} {text}"


class PromptTokenizer:
    """Picklable tokenizer wrapper: applies `format_caption` then a picklable inner tokenizer."""

    def __init__(self, inner: Any, prompt: str = ""):
        self.inner = inner
        self.prompt = prompt

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        return self.inner([format_caption(c, self.prompt) for c in captions])
