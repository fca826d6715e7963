"""One module per pipeline stage; each exposes `run(cfg, ...)` and is called by `bridgerl <stage>`.

Each stage's contract (params, inputs, outputs) is declared once in `contracts.py`.
"""
