"""The recognition head over per-modality features, and its losses.

    layers.py        bricks: projector, multi-head attention, cross attention, noisy router
    fusion.py        fusion layers (concat, attention, tensor, low-rank, mixtures, disentanglement)
    classifier.py    linear and mixture-of-experts classifiers
    dialogue.py      the dialogue-context head over a dialogue's utterance vectors
    model.py         EmotionModel: placeholders -> fusion -> [context] -> classifier
    losses.py        losses as pure functions with explicit state (focal, SPCL/APCL, CMCL, ...)
    suite_import.py  the PyTorch suite's trained heads loaded into these parameters
"""
