"""Baselines: each modality alone, and the modality pairs and triple with concat fusion."""
