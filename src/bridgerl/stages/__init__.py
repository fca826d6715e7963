"""One module per pipeline stage; each exposes `run(cfg, ...)` and is called by `bridgerl <stage>`.

Each stage's contract (params, inputs, outputs, the files in between) is declared once in the stage table,
`bridgerl.core.stage_table`; `resolve_config` also owns the configuration slices and the local files a
configuration names; `compare` runs the whole comparison harness over the stages.
"""
