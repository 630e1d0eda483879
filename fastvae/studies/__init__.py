"""Studies of trained models: evaluation (test NELBO, importance-weighted NLL), FID, and the
VAE experiments of :mod:`fastvae.studies.experiments`. Checkpoints are
read through :mod:`fastvae.train.checkpoint`."""
