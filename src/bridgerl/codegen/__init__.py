"""Files generated from the tables (`bridgerl generate`): dvc.yaml, docs/stages.md, docs/params.md (files),
and the code each stage imports, its DVC code dependencies (imports)."""
