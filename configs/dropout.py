"""Modality dropout parts: per training batch, with probability p the audio features are
replaced by the learned placeholder, else with probability p the video features are."""

PRESETS = {
    "none": {"p": 0.0},
    "MD-0.1": {"p": 0.1},
    "MD-0.2": {"p": 0.2},
    "MD-0.3": {"p": 0.3},
}
