"""LAWM: latent action pretraining through world modeling (training, export, evaluation)."""
