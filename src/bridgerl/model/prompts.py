"""How a problem becomes a model prompt: one place for RL rollouts, SFT demos and evaluation."""

from __future__ import annotations


def render_prompt(problem: str, tokenizer, template: str, use_chat_template: bool = True) -> str:
    """The instruction template filled with the problem, through the chat template if there is one."""
    text = template.format(problem=problem)
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text + "\n"
