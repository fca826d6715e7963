"""What `bridgerl compare` computes from its runs: statistics over seeds (stats), cost axes (costs),
plots (plots) and the report (report). The stage that trains and evaluates is bridgerl.stages.compare."""
