"""LIBERO simulation: environment wrapper, scripted experts, data generation, evaluation."""
