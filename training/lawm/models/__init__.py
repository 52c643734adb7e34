"""LAWM models: the BAKU-style policy and the latent-action world model."""
