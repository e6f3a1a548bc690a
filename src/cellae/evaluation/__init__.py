"""Evaluation: reconstruction metrics (``metrics``), latent-space quality (``latent``)
and the run-level driver (``run``)."""
