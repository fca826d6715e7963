"""The embedded default's base model: a tokenizer trained locally and a tiny Llama built from a config.

It is briefly pre-trained on short problems answered *without* reasoning (plus a small share with
the steps written out), so it is weak but not hopeless on the multi-step task: RL from the base gets
some reward, and the SFT demonstrations teach step-by-step reasoning that RL alone finds slowly.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from bridgerl.config import Config
from bridgerl.model.prompts import render_prompt
from bridgerl.tasks import synthetic

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def _equation_chain(rng: random.Random, cfg: Config) -> str:
    """Bare arithmetic in the demonstrations' step format ("7 + 4 = 11. 11 - 3 = 8.")."""
    t = cfg.data.synthetic
    p = synthetic.make_problem(rng, rng.randint(1, t.max_ops), t.max_start, t.max_operand, "eq")
    return " ".join(s + "." for s in p.steps)


def _corpus(cfg: Config, n: int, seed: int) -> list[tuple[str, str, bool]]:
    """(problem, completion, instructed) triples. Three kinds of pre-training text:
    - bare arithmetic in the steps' format (problem ""): the atomic skill;
    - worked examples, a problem followed by its steps, *without* the instruction prompt: the base
      model knows how to reason, as real base models do from web text;
    - instructed problems (the evaluation prompt) answered directly, only `reasoning_fraction` of
      them with the steps: so under the instruction the base model mostly guesses the answer.
    """
    t, tc = cfg.data.synthetic, cfg.model.tiny
    rng = random.Random(seed)
    out = []
    for i in range(n):
        u = rng.random()
        if u < tc.arithmetic_fraction:
            out.append(("", _equation_chain(rng, cfg), False))
            continue
        ops = 1 if rng.random() < tc.one_step_fraction else rng.randint(t.min_ops, t.max_ops)
        p = synthetic.make_problem(rng, ops, t.max_start, t.max_operand, f"pre-{i}")
        if u < tc.arithmetic_fraction + tc.worked_fraction:
            out.append((p.problem, synthetic.reasoning(p), False))
        else:
            text = synthetic.reasoning(p) if rng.random() < tc.reasoning_fraction else synthetic.direct(p)
            out.append((p.problem, text, True))
    return out


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
    fast.padding_side = "left"
    return fast


def build(cfg: Config, out_dir: Path, progress: bool = True) -> dict:
    """Train the tokenizer, build the model from its config, pre-train it, save both to out_dir."""
    tc = cfg.model.tiny
    torch.manual_seed(cfg.seed)
    pairs = _corpus(cfg, tc.pretrain_examples, cfg.seed + 1)
    template = cfg.eval.prompt_template
    tok_texts = [(template.format(problem=p) + "\n" if p else "") + c for p, c, _ in pairs[:2000]]
    tokenizer = train_tokenizer(tok_texts, tc.vocab_size)
    mcfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=tc.hidden_size, intermediate_size=tc.intermediate_size,
        num_hidden_layers=tc.num_layers, num_attention_heads=tc.num_heads, num_key_value_heads=tc.num_heads,
        max_position_embeddings=tc.max_position, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(mcfg)
    stats = {"params": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer)}
    # pre-training: next-token loss on completions only, prompts rendered exactly as the trainer will
    examples = []
    for p, c, instructed in pairs:
        if not p:
            prompt = tokenizer.bos_token
        elif instructed:
            prompt = render_prompt(p, tokenizer, template)
        else:
            prompt = p + "\n"
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        comp_ids = tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        examples.append((prompt_ids, comp_ids))
    opt = torch.optim.AdamW(model.parameters(), lr=tc.pretrain_lr, weight_decay=0.0)
    rng = random.Random(cfg.seed + 2)
    model.train()
    losses = []
    bar = tqdm(range(tc.pretrain_steps), desc="pretrain tiny LM", disable=not progress)
    for step in bar:
        lr = tc.pretrain_lr * 0.5 * (1 + math.cos(math.pi * step / max(1, tc.pretrain_steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = rng.sample(examples, min(tc.pretrain_batch, len(examples)))
        L = max(len(a) + len(b) for a, b in batch)
        ids = torch.full((len(batch), L), tokenizer.pad_token_id)
        labels = torch.full((len(batch), L), -100)
        att = torch.zeros((len(batch), L), dtype=torch.long)
        for i, (a, b) in enumerate(batch):
            seq = a + b
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(a): len(seq)] = torch.tensor(b)
            att[i, : len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    stats["pretrain_final_loss"] = float(sum(losses[-20:]) / max(1, len(losses[-20:]))) if losses else None
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return stats
