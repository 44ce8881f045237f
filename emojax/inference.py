"""Class probabilities for new inputs from a finished run directory.

``Estimator(run_dir).predict(text=..., audio=..., video=...)`` rebuilds the run's frozen
encoders (with the speaker tokens and text format it trained with) and its best parameters;
any modality left out uses the model's learned placeholder for it.
"""
from __future__ import annotations

import json
import pathlib
from typing import Optional

import jax
import numpy as np

from emojax import checkpoint as ckpt_lib
from emojax import config as config_lib
from emojax.data.types import Sample
from emojax.features import Featurizer, standardize
from emojax.model import build_model
from emojax.train import make_eval_step, predict_proba


class Estimator:
    """A trained run, ready to score single utterances."""

    def __init__(self, run_dir: str | pathlib.Path):
        self.run_dir = pathlib.Path(run_dir)
        meta_path = self.run_dir / "meta.json"
        if not meta_path.exists():
            raise ckpt_lib.CheckpointError(f"{meta_path}: missing; {self.run_dir} is not a finished run directory")
        self.cfg = config_lib.load_config(self.run_dir / "config.json")
        self.cfg.progress = False
        meta = json.loads(meta_path.read_text())
        self.class_names = tuple(meta["class_names"])
        self.feature_stats = meta["feature_stats"]
        self.featurizer = Featurizer(self.cfg, meta.get("speaker_tokens", []), cache=None)
        self.model = build_model(self.cfg, meta["input_dims"], len(self.class_names))
        dims = meta["input_dims"]
        dummy = {m: np.zeros((1, dims[m]), np.float32) for m in self.model.modalities}
        present = {m: np.ones((1,), bool) for m in self.model.modalities}
        params = self.model.init({"params": jax.random.PRNGKey(0)}, dummy, present, deterministic=True)["params"]
        checkpoints = ckpt_lib.RunCheckpoints(self.run_dir)
        progress = checkpoints.progress()
        if not progress or not progress.get("finished"):
            checkpoints.close()
            raise ckpt_lib.CheckpointError(f"{self.run_dir / 'progress.json'}: the run has not finished; "
                                           "resume it with launch/train.py first")
        self.params = checkpoints.restore_best(params, progress["best_epoch"])
        checkpoints.close()
        self._eval_step = jax.jit(make_eval_step(self.model))

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.model.modalities

    def predict(self, text: Optional[str] = None, audio: Optional[str] = None,
                video: Optional[str] = None) -> dict:
        """``{"probabilities": {class: p}, "predicted": class}`` for one utterance."""
        for name, path in (("audio", audio), ("video", video)):
            if path is not None and not pathlib.Path(path).is_file():
                raise FileNotFoundError(f"--{name}: {path} does not exist")
        given = {"T": text is not None, "A": audio is not None, "V": video is not None}
        if not any(given[m] for m in self.modalities):
            raise ValueError(f"give at least one of the run's modalities ({'+'.join(self.modalities)})")
        sample = Sample(uid="infer/0", dialogue="infer", index=0, speaker="speaker", text=text or "",
                        audio=audio, video=video, label=0)
        data = self.featurizer.sample_features([sample])
        for m in self.modalities:
            data.present[m] = data.present[m] & given[m]
        data = standardize(data, self.feature_stats)
        probs = predict_proba(self._eval_step, self.params, data, batch_size=1)[0]
        return {"probabilities": {name: float(p) for name, p in zip(self.class_names, probs)},
                "predicted": self.class_names[int(np.argmax(probs))]}
