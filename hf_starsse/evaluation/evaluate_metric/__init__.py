"""An `evaluate` metric module shipped with hf_starsse: `evaluate.load(hf_starsse.metrics.EVALUATE_MODULE)`."""
