"""Engine: models, losses, the training loop and prediction. Knows nothing of recipes or the CLI."""
