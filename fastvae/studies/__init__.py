"""Studies of trained models: evaluation (test NELBO, importance-weighted NLL), FID, and the
experiments of the classic VAE reports (:mod:`fastvae.studies.experiments`). Checkpoints are
read through :mod:`fastvae.train.checkpoint`."""
