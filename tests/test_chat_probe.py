"""The plain-chat probe of `bridgerl compare` (bridgerl.comparison.chat): greedy answers to fixed chat prompts and
KL(trained ‖ base) along them, checked against its formula on the tiny model and a perturbed copy of it."""

from __future__ import annotations

import torch


def test_kl_to_base_is_the_exact_per_token_kl_along_the_answers(tiny_project, tmp_path):
    from bridgerl.comparison import chat
    from bridgerl.model.loading import load_model

    base_dir = tiny_project / "models" / "base"
    same = chat.probe(base_dir, base_dir, max_new_tokens=8)
    assert same["prompts"] == list(chat.PROMPTS) and len(same["responses"]) == len(chat.PROMPTS)
    assert same["kl_to_base"] == 0.0 and same["kl_per_prompt"] == [0.0] * len(chat.PROMPTS)
    assert all(1 <= n <= 8 for n in same["response_tokens"])

    # a trained model: the base with one weight matrix moved
    torch.manual_seed(0)
    moved = load_model(str(base_dir))
    with torch.no_grad():
        moved.lm_head.weight.add_(0.3 * torch.randn_like(moved.lm_head.weight))
    moved.save_pretrained(tmp_path / "moved")
    from bridgerl.model.loading import load_tokenizer

    load_tokenizer(str(base_dir)).save_pretrained(tmp_path / "moved")
    res = chat.probe(tmp_path / "moved", base_dir, max_new_tokens=8)
    assert res["kl_to_base"] > 0 and all(k > 0 for k in res["kl_per_prompt"])
    # the formula, by hand for the first prompt: mean over its answer positions of Σ_v p (log p − log q)
    moved, base = load_model(str(tmp_path / "moved")).eval(), load_model(str(base_dir)).eval()
    tok = load_tokenizer(str(base_dir))
    ans = chat._answers(moved, tok, chat.PROMPTS[:1], 8)  # the same greedy answer the probe scored
    p_ids, r_ids = ans["prompt_ids"][0], ans["response_ids"][0]
    assert len(r_ids) == res["response_tokens"][0]
    ids = torch.tensor([p_ids + r_ids])
    with torch.no_grad():
        lp = torch.log_softmax(moved(ids).logits[0].double(), -1)[len(p_ids) - 1: len(p_ids) - 1 + len(r_ids)]
        lq = torch.log_softmax(base(ids).logits[0].double(), -1)[len(p_ids) - 1: len(p_ids) - 1 + len(r_ids)]
    by_hand = float((lp.exp() * (lp - lq)).sum(-1).mean())
    assert abs(res["kl_per_prompt"][0] - by_hand) <= 1e-9 * max(1.0, by_hand)
    n = res["response_tokens"]
    assert abs(res["kl_to_base"] - sum(k * m for k, m in zip(res["kl_per_prompt"], n)) / sum(n)) < 1e-12
