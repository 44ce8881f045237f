"""Training and evaluation: jit-compiled pure steps and the loop that owns them.

Read top to bottom, ``fit`` is the recipe: data -> features -> model -> optimizer -> resume ->
epochs (train, score dev, checkpoint, early stop) -> best epoch -> dev and test scored once.

``train_step(state, batch) -> (state, logs)`` and ``eval_step(params, features, present) -> logits``
are plain functions of their inputs; ``state`` carries parameters, optimizer state, step, RNG
and the loss state, so nothing lives outside it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import pathlib
import time
from typing import Any, Callable, Iterator, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from emojax import checkpoint as ckpt_lib
from emojax import config as config_lib
from emojax import losses as losses_lib
from emojax import metrics as metrics_lib
from emojax import store
from emojax.data.types import SPLITS
from emojax.features import FeatureSet, Featurizer, feature_stats, padded_batches, standardize
from emojax.model import EmotionModel, build_model
from emojax.paths import folder_problem

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# State and steps
# ---------------------------------------------------------------------------------------------
@flax.struct.dataclass
class TrainState:
    """``params``: the model's; ``loss_params``: the extra losses' own trainable parameters (FRL's
    projectors and predictors, the learned sigmas of uncertainty weighting; ``{}`` when none);
    ``opt_state`` covers both (``{"model": params, "losses": loss_params}``); ``loss_state``: the
    stateful losses' state (SPCL pools, APCL prototypes)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    loss_state: Any
    loss_params: Any = flax.struct.field(default_factory=dict)
    # The fine-tuned encoders' trainable parts by modality (mode trainable: their parameters;
    # lora: the adapters; {} when frozen). The optimizer covers them under "encoder".
    encoder: Any = flax.struct.field(default_factory=dict)


def learning_rate_schedule(cfg, total_steps: int, peak: Optional[float] = None) -> optax.Schedule:
    """Linear warm-up over ``warmup_ratio`` of the steps to ``peak`` (default ``train.lr``),
    then linear decay to zero."""
    peak = float(cfg.train.lr) if peak is None else float(peak)
    warmup = max(1, int(round(cfg.train.warmup_ratio * total_steps)))
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup),
         optax.linear_schedule(peak, 0.0, max(1, total_steps - warmup))],
        [warmup])


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    """AdamW with warm-up + linear decay and global-norm gradient clipping.

    When encoders are fine-tuned (``mode`` trainable / lora) the encoders' part of the
    trainable tree (key ``"encoder"``) gets its own AdamW with peak rate ``encoder.lr`` on the
    same schedule shape; the clipping norm covers everything."""
    head = optax.adamw(learning_rate_schedule(cfg, total_steps), weight_decay=cfg.train.weight_decay)
    if cfg.mode == "frozen":
        return optax.chain(optax.clip_by_global_norm(cfg.train.clip_norm), head)
    encoder = optax.adamw(learning_rate_schedule(cfg, total_steps, cfg.encoder.lr),
                          weight_decay=cfg.train.weight_decay)

    def labels(tree):
        return {k: jax.tree_util.tree_map(lambda _: "encoder" if k == "encoder" else "head", v)
                for k, v in tree.items()}

    return optax.chain(optax.clip_by_global_norm(cfg.train.clip_norm),
                       optax.multi_transform({"head": head, "encoder": encoder}, labels))


def trainable_tree(state: "TrainState", tuning=None) -> dict:
    """What the optimizer updates: the model's and the losses' parameters, and the fine-tuned
    encoders' trainable parts."""
    tree = {"model": state.params, "losses": state.loss_params}
    if tuning is not None:
        tree["encoder"] = state.encoder
    return tree


def compute_params(params, dtype):
    """The parameters as the forward pass uses them: float32 masters cast to ``dtype``
    (bfloat16 mixed precision), so every matrix product runs in ``dtype`` while gradients,
    optimizer state and updates stay float32. LayerNorm, softmax and the losses compute in float32."""
    if jnp.dtype(dtype) == jnp.float32:
        return params
    return jax.tree_util.tree_map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)


def make_train_step(model: EmotionModel, optimizer: optax.GradientTransformation, *,
                    loss_kind: str, class_weights: Optional[np.ndarray], extras: dict,
                    combine: str = "sum", teacher: Optional[EmotionModel] = None, tuning=None) -> Callable:
    """``train_step(state, batch[, teacher_params][, encoder_base=...]) -> (state, logs)``; ``batch``
    has features, present, labels (and, with a ``teacher``, ``teacher_features`` /
    ``teacher_present``, the teacher's inputs for the same samples; with ``tuning``, a
    :class:`emojax.finetune.Tuning`, ``inputs``: the tuned modalities' features are then computed
    inside the step by the encoders being fine-tuned, from ``state.encoder`` and, for LoRA, the
    frozen base weights ``encoder_base``).

    With a ``teacher`` model the teacher's logits are computed inside the step from
    ``teacher_params`` (frozen: stop-gradient, never optimised) and feed the ``dist`` loss.

    The total loss is ``classification + auxiliary (fusion, classifier) + sum_i weight_i extra_i``;
    with ``combine="uncertainty"`` the classification and extra losses are weighed by learned
    sigmas instead (``emojax.losses.combine_losses``) and the auxiliary loss is added as is.
    """
    weights = None if class_weights is None else jnp.asarray(class_weights)
    modalities = model.modalities
    wants_inputs = any(name in losses_lib.MULTIMODAL_LOSSES for name in extras)

    def train_step(state: TrainState, batch: dict, teacher_params=None, encoder_base=None):
        rng, dropout_rng, router_rng, modality_rng, loss_rng = jax.random.split(state.rng, 5)
        teacher_logits = None
        if teacher is not None:
            teacher_logits, _, _ = teacher.apply({"params": compute_params(teacher_params, teacher.dtype)},
                                                 batch["teacher_features"], batch["teacher_present"],
                                                 deterministic=True)
            teacher_logits = jax.lax.stop_gradient(teacher_logits)
        rngs = {"dropout": dropout_rng, "router": router_rng, "modality": modality_rng}

        def loss_fn(trainable):
            params, loss_params = compute_params(trainable["model"], model.dtype), trainable["losses"]
            features = batch["features"]
            if tuning is not None:
                # A separate stream (folded from the loss key) keeps frozen runs' RNG unchanged.
                features = {**features, **tuning.features(trainable["encoder"], encoder_base, batch["inputs"],
                                                          batch["present"], rng=jax.random.fold_in(loss_rng, 1),
                                                          deterministic=False)}
            if wants_inputs:
                (logits, aux, fused), inter = model.apply(
                    {"params": params}, features, batch["present"], deterministic=False, rngs=rngs,
                    mutable=["intermediates"])
                inputs = inter["intermediates"]["fusion_inputs"][0]
            else:
                logits, aux, fused = model.apply({"params": params}, features, batch["present"],
                                                 deterministic=False, rngs=rngs)
                inputs = None
            classification = losses_lib.classification_loss(loss_kind, logits, batch["labels"], weights)
            logs = {"classification": classification, "auxiliary": aux}
            loss_state = state.loss_state
            extra = jnp.zeros((), jnp.float32)
            if extras:
                extra, loss_state, extra_logs = losses_lib.extra_losses(
                    extras, state.loss_state, embeddings=fused, labels=batch["labels"], features=inputs,
                    fused=fused, logits=logits, rng=loss_rng, present_modalities=modalities,
                    loss_params=loss_params, teacher_logits=teacher_logits)
                logs.update(extra_logs)
            if combine == "uncertainty":
                named = {"classification": classification, **{k: logs[k] for k in extras if k in logs}}
                total = losses_lib.combine_losses(named, loss_params) + aux
            else:
                total = classification + aux + extra
            return total, (logs, loss_state)

        trainable = trainable_tree(state, tuning)
        (loss, (logs, loss_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        logs = {"loss": loss, **logs}
        new_state = state.replace(step=state.step + 1, params=trainable["model"], opt_state=opt_state, rng=rng,
                                  loss_state=loss_state, loss_params=trainable["losses"],
                                  encoder=trainable.get("encoder", state.encoder))
        return new_state, logs

    return train_step


def make_eval_step(model: EmotionModel) -> Callable:
    """``eval_step(params, features, present, batch_mask=None) -> logits (batch, classes)``;
    ``batch_mask`` marks the real rows of a padded batch."""

    def eval_step(params, features, present, batch_mask=None):
        logits, _, _ = model.apply({"params": compute_params(params, model.dtype)}, features, present,
                                   deterministic=True,
                                   batch_mask=batch_mask)
        return logits

    return eval_step


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of an epoch: a pure function of seed and epoch, so a resumed run replays it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_of(data: FeatureSet, index: np.ndarray) -> dict:
    batch = {
        "features": {m: data.features[m][index] for m in data.features},
        "present": {m: data.present[m][index] for m in data.present},
        "labels": data.labels[index],
    }
    if data.inputs is not None:
        batch["inputs"] = {m: rows.batch(index) for m, rows in data.inputs.items()}
    return batch


def train_batches(data: FeatureSet, batch_size: int, seed: int, epoch: int) -> Iterator[dict]:
    """The training batches of an epoch; each also carries ``index``, its rows in ``data``."""
    order = epoch_order(seed, epoch, len(data))
    # The last short batch is dropped in training (one compiled shape); every sample is still
    # seen across epochs because the order changes.
    for start in range(0, len(order) - batch_size + 1, batch_size):
        index = order[start:start + batch_size]
        yield {**batch_of(data, index), "index": index}


def predict_proba(eval_step: Callable, params, data: FeatureSet, batch_size: int,
                  parallel: Optional["DataParallel"] = None) -> np.ndarray:
    """Class probabilities ``(n, classes)`` for every sample, in batches of ``batch_size`` (the
    last one padded to that size and masked, so one compiled shape serves every batch and padding
    rows never reach the real rows through attention across the batch). With ``parallel``, every
    batch is padded to a multiple of the device count and split across the devices."""
    out = []
    for index, padded in padded_batches(len(data), batch_size, parallel.count if parallel is not None else 1):
        batch = batch_of(data, padded)
        mask = np.arange(len(padded)) < len(index)
        if parallel is not None:
            batch, mask = parallel.shard(batch), parallel.shard(mask)
        logits = eval_step(params, batch["features"], batch["present"], mask)
        out.append(np.asarray(jax.nn.softmax(logits, axis=-1))[:len(index)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def score(eval_step: Callable, params, data: FeatureSet, num_classes: int, batch_size: int,
          parallel: Optional["DataParallel"] = None) -> dict:
    probs = predict_proba(eval_step, params, data, batch_size, parallel)
    return metrics_lib.classification_scores(data.labels, probs.argmax(-1), num_classes)


# ---------------------------------------------------------------------------------------------
# Data parallelism
# ---------------------------------------------------------------------------------------------
class DataParallel:
    """Data parallelism over ``devices`` with ``jax.sharding``: the training state is replicated
    on every device, every batch is split along its first axis, and the jit-compiled steps run
    on all devices at once, XLA inserting the cross-device reductions (the gradient mean, the
    loss states' updates, attention across the batch). The steps keep global-batch semantics,
    so N devices compute what one device computes on the same batch, up to float rounding.

    This is the successor of ``jax.pmap`` for this use: one program, sharded arrays, no
    per-device code. In a multi-host run (:mod:`emojax.distributed`) the devices are those of
    every process; each process passes the same global batch and contributes its own rows.
    Build it with :func:`data_parallel`.
    """

    def __init__(self, devices):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        self.devices = list(devices)
        self.mesh = Mesh(np.array(self.devices), ("data",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.split = NamedSharding(self.mesh, PartitionSpec("data"))
        self.processes = jax.process_count()

    @property
    def count(self) -> int:
        return len(self.devices)

    def replicate(self, tree):
        if self.processes == 1:
            return jax.device_put(tree, self.replicated)
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)), tree)

    def shard(self, tree):
        if self.processes == 1:
            return jax.device_put(tree, self.split)
        index, count = jax.process_index(), self.processes

        def local_rows(x):
            x = np.asarray(x)
            rows = x.shape[0] // count
            return jax.make_array_from_process_local_data(self.split, x[index * rows:(index + 1) * rows], x.shape)

        return jax.tree_util.tree_map(local_rows, tree)


def data_parallel(cfg) -> Optional[DataParallel]:
    """The :class:`DataParallel` for ``cfg.train.devices`` (0 = every local device; in a
    multi-host run every device of every process), or ``None`` for one device. The training
    batch must split evenly across the devices."""
    if jax.process_count() > 1:
        devices = jax.devices()
        if int(cfg.train.batch_size) % len(devices):
            raise config_lib.ConfigError(f"train.batch_size: {cfg.train.batch_size} does not split evenly across "
                                         f"the {len(devices)} devices of {jax.process_count()} processes")
        return DataParallel(devices)
    wanted = int(cfg.train.get("devices", 0))
    local = jax.local_devices()
    if wanted < 0 or wanted > len(local):
        raise config_lib.ConfigError(f"train.devices: {wanted} devices asked for, {len(local)} available "
                                     f"({local[0].platform}); 0 uses them all")
    count = wanted or len(local)
    if count == 1:
        return None
    if int(cfg.train.batch_size) % count:
        raise config_lib.ConfigError(f"train.batch_size: {cfg.train.batch_size} does not split evenly across "
                                     f"{count} devices; choose a multiple of {count} or set train.devices")
    return DataParallel(local[:count])


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Prepared:
    """Everything a run needs besides its parameters: data, features, model, steps."""

    cfg: Any
    run_dir: pathlib.Path
    class_names: tuple[str, ...]
    features: dict[str, FeatureSet]
    not_scored: tuple[str, ...]
    featurizer: Featurizer
    model: EmotionModel
    feature_seconds: float
    feature_stats: dict  # modality -> {"mean", "std"} of the training split
    tuning: Any = None  # emojax.finetune.Tuning when encoders are fine-tuned


def load_data(cfg):
    from emojax.data import load_dataset

    path = pathlib.Path(cfg.dataset.path)
    if cfg.dataset.generate:
        from emojax.data.demo import generate_demo

        generate_demo(path, seed=0)
    if not path.exists():
        raise FileNotFoundError(f"dataset.path: {path} does not exist (dataset {cfg.dataset.name}); "
                                f"set --config.dataset.path to the dataset folder")
    return load_dataset(cfg.dataset.kind, str(path), target=cfg.dataset.target,
                        allow_outside_paths=bool(cfg.dataset.get("allow_outside_paths", False)))


def feature_cache(cfg, workdir: pathlib.Path):
    from emojax.cache import FeatureCache

    root = pathlib.Path(cfg.cache.dir) if cfg.cache.dir else pathlib.Path(workdir) / "cache" / "features"
    return FeatureCache(root, host_bytes=int(cfg.cache.host_bytes), device_bytes=int(cfg.cache.device_bytes))


def prepare(cfg, workdir: str | pathlib.Path, category: str = "training") -> Prepared:
    """Validate, load the dataset, compute (or read cached) features and build the model."""
    from emojax.data.context import all_speaker_tokens

    config_lib.validate(cfg)
    workdir = pathlib.Path(workdir)
    run_dir = config_lib.run_dir(cfg, workdir, category)
    dataset = load_data(cfg)
    cache = feature_cache(cfg, workdir)
    start = time.perf_counter()
    featurizer = Featurizer(cfg, all_speaker_tokens(dataset), cache=cache)
    raw = {name: featurizer.split_features(split) for name, split in dataset.splits.items()}
    feature_seconds = time.perf_counter() - start
    stats = feature_stats(raw["train"])
    features = {name: standardize(data, stats) for name, data in raw.items()}
    for name, split in dataset.splits.items():
        missing = {m: int((~features[name].present[m]).sum()) for m in featurizer.modalities if m != "T"}
        if any(missing.values()):
            log.info("%s: samples without %s", name,
                     ", ".join(f"{m}: {c}/{len(split)}" for m, c in missing.items() if c))
    model = build_model(cfg, featurizer.dims, dataset.num_classes)
    tuning = None
    if cfg.mode != "frozen":
        from emojax.finetune import Tuning

        tuning = Tuning(cfg, featurizer, stats)
        features = {name: tuning.attach(features[name], split, root=cache.inputs_root, progress=featurizer.progress)
                    for name, split in dataset.splits.items()}
    return Prepared(cfg, run_dir, dataset.class_names, features, tuple(dataset.not_scored), featurizer,
                    model, feature_seconds, stats, tuning)


def tuned_features(prep: Prepared, encoder, batch_size: int, splits=None) -> dict[str, FeatureSet]:
    """``prep.features`` with the tuned modalities' features of ``splits`` (default all)
    recomputed by the fine-tuned encoders ``encoder`` (their trainable parts); unchanged for a
    frozen run."""
    if prep.tuning is None:
        return dict(prep.features)
    return {name: prep.tuning.refresh(data, encoder, batch_size) if splits is None or name in splits else data
            for name, data in prep.features.items()}


def best_target(state: "TrainState", tuning=None):
    """What the best checkpoint holds: the model's parameters, plus the fine-tuned encoders'
    trainable parts (``{"params", "encoder"}``)."""
    return state.params if tuning is None else {"params": state.params, "encoder": state.encoder}


def init_state(prep: Prepared, optimizer: optax.GradientTransformation, extras: Optional[dict] = None) -> TrainState:
    """The initial training state; ``extras`` are the extra losses this run uses (default: the
    config's)."""
    cfg = prep.cfg
    rng = jax.random.PRNGKey(int(cfg.seed))
    init_rng, state_rng, loss_rng = jax.random.split(rng, 3)
    sample = batch_of(prep.features["train"], np.arange(min(2, len(prep.features["train"]))))
    params = prep.model.init({"params": init_rng}, sample["features"], sample["present"],
                             deterministic=True)["params"]
    extras = cfg.loss.extras.to_dict() if extras is None else extras
    combine = cfg.loss.get("combine", "sum")
    loss_state, loss_params = {}, {}
    if extras or combine != "sum":
        (_, _, fused), inter = prep.model.apply({"params": params}, sample["features"], sample["present"],
                                                deterministic=True, mutable=["intermediates"])
        inputs = inter["intermediates"]["fusion_inputs"][0]
        state_rng_, params_rng = jax.random.split(loss_rng)
        loss_state = losses_lib.init_loss_state(extras, num_classes=len(prep.class_names),
                                                embed_dim=int(fused.shape[-1]), rng=state_rng_)
        loss_params = losses_lib.init_loss_params(
            extras, fused_dim=int(fused.shape[-1]), input_dims={m: int(x.shape[-1]) for m, x in inputs.items()},
            rng=params_rng, combine=combine, loss_names=("classification", *extras))
    encoder, tuning = {}, getattr(prep, "tuning", None)
    if tuning is not None:
        encoder = tuning.init(jax.random.fold_in(init_rng, 1))
        log.info(tuning.describe(encoder))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=None,
                       rng=state_rng, loss_state=loss_state, loss_params=loss_params, encoder=encoder)
    return state.replace(opt_state=optimizer.init(trainable_tree(state, tuning)))


def _scores_summary(scores: dict) -> dict:
    return {k: scores[k] for k in ("accuracy", "weighted_f1", "macro_f1")}


def _run_category(category: str, teacher) -> str:
    """The run's category: ``distillation`` with a teacher (and only then)."""
    if teacher is not None:
        return "distillation"
    if category == "distillation":
        raise config_lib.ConfigError("a distillation run needs a teacher run directory (--teacher=RUN_DIR)")
    return category


def _check_run_paths(cfg, workdir: str | pathlib.Path, run_dir: pathlib.Path) -> None:
    """Refuse, before anything is computed, folders that cannot be written: the workdir, the run
    directory, the feature cache or the demo dataset's folder being (under) a file would otherwise
    fail only once the features are computed."""
    workdir = pathlib.Path(workdir)
    problem = folder_problem(workdir) or folder_problem(run_dir)
    if problem:
        raise ckpt_lib.CheckpointError(f"workdir: {problem}; give a folder for the runs (it is created if missing)")
    problem = folder_problem(cfg.cache.dir or workdir / "cache" / "features")
    if problem and cfg.cache.dir:
        raise config_lib.ConfigError(f"cache.dir: {problem}; give a folder for the feature cache, or leave it "
                                     "empty for WORKDIR/cache/features")
    if problem:
        raise ckpt_lib.CheckpointError(f"workdir: {problem}; the feature cache goes there: move the file or set "
                                       "cache.dir")
    path = pathlib.Path(cfg.dataset.path)
    if cfg.dataset.get("generate"):
        problem = folder_problem(path)
        if problem:
            raise config_lib.ConfigError(f"dataset.path: {problem}; the demo dataset is generated there: "
                                         "give a new or empty folder")
    elif path.exists() and not path.is_dir():
        raise config_lib.ConfigError(f"dataset.path: {path} is a file; give the dataset's folder")


def _one_process_per_run(fit_fn: Callable[..., pathlib.Path]) -> Callable[..., pathlib.Path]:
    """``fit`` holding its run directory's lock (:class:`emojax.checkpoint.RunLock`) from before
    any work to the end, after the cheap checks of the config and paths: a second identical
    command is refused at once, naming the holder, instead of writing the same checkpoints. In a
    multi-host run process 0 holds it for all."""
    @functools.wraps(fit_fn)
    def locked(cfg, workdir: str | pathlib.Path, *, category: str = "training", max_epochs: Optional[int] = None,
               teacher: Optional[str | pathlib.Path] = None) -> pathlib.Path:
        config_lib.validate(cfg)
        run_dir = config_lib.run_dir(cfg, workdir, _run_category(category, teacher))
        _check_run_paths(cfg, workdir, run_dir)
        lock = ckpt_lib.RunLock(run_dir) if jax.process_index() == 0 else contextlib.nullcontext()
        with lock:
            return fit_fn(cfg, workdir, category=category, max_epochs=max_epochs, teacher=teacher)

    return locked


def progress_at(progress: dict, epoch: int, metric: str) -> dict:
    """``progress`` as it stood after ``epoch``: its history cut there, the best epoch and the
    early-stopping count replayed from it. Used when a run resumes from an older training state
    than progress.json names (the newer ones were damaged), so the replayed epochs select and
    stop exactly as the uninterrupted run did."""
    replayed = {"epoch": 0, "history": [], "best_epoch": 0, "best_score": -1.0, "bad_epochs": 0, "finished": False}
    for row in progress["history"][:epoch]:
        replayed["history"].append(row)
        replayed["epoch"] = row["epoch"]
        if row["dev"][metric] > replayed["best_score"]:
            replayed.update(best_epoch=row["epoch"], best_score=row["dev"][metric], bad_epochs=0)
        else:
            replayed["bad_epochs"] += 1
    return {**progress, **replayed}


@_one_process_per_run
def fit(cfg, workdir: str | pathlib.Path, *, category: str = "training", max_epochs: Optional[int] = None,
        teacher: Optional[str | pathlib.Path] = None) -> pathlib.Path:
    """Train (or resume) the run ``cfg`` describes under ``workdir``; returns its run directory.

    ``max_epochs`` stops after that many epochs of this call without finishing the run (used
    to exercise resuming); the run then continues when ``fit`` is called again.

    ``teacher`` (a finished run directory, typically a text-only run) makes this a distillation
    run, placed under ``checkpoints/distillation/``: the teacher is scored and its test metrics
    printed first; the student starts from the teacher's parameters wherever a tensor of the
    same path and shape exists; the teacher's logits, computed inside the jitted step from its
    frozen parameters, feed the configured ``dist`` loss for all student modalities at once.

    The run records its data (``data.json``: :func:`data_record`); started again on other data
    (another folder, a changed CSV) it raises :class:`DataChangedError` before anything is
    computed or written, finished or not.
    """
    category = _run_category(category, teacher)
    if teacher is not None and "dist" not in cfg.loss.extras:
        raise config_lib.ConfigError("loss: a distillation run needs the dist loss; add it, e.g. loss=focal+dist")
    # -- data, features, model ------------------------------------------------------------
    # The data is checked against the run's record before the (costly) features are computed;
    # a dataset generated on first use exists only after prepare, so it is checked then.
    data = None
    if pathlib.Path(cfg.dataset.path).is_dir():
        data = check_data_record(cfg, config_lib.run_dir(cfg, workdir, category))
    prep = prepare(cfg, workdir, category)
    run_dir = prep.run_dir
    if data is None:
        data = check_data_record(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_same_config(cfg, run_dir)
    primary = jax.process_index() == 0  # in a multi-host run only process 0 writes files
    if primary:
        config_lib.save_config(cfg, run_dir / "config.json")
        if not (run_dir / DATA_RECORD).exists():  # a new run, or one from before runs recorded their data
            ckpt_lib.write_json_atomic(run_dir / DATA_RECORD, data)
        _write_meta(prep)
        store.link_run_encoders(run_dir, prep.featurizer, workdir)
    train_data, dev_data = prep.features["train"], prep.features.get("dev")
    if dev_data is None:
        raise ValueError(f"{cfg.dataset.path}: no dev split; model selection needs one")
    distill = load_teacher(teacher, prep, workdir) if teacher is not None else None

    # -- optimizer and state --------------------------------------------------------------
    batch_size = min(int(cfg.train.batch_size), len(train_data))
    steps_per_epoch = max(1, len(train_data) // batch_size)
    total_steps = steps_per_epoch * int(cfg.train.epochs)
    optimizer = make_optimizer(cfg, total_steps)
    extras = _usable_extras(cfg, prep.model.modalities, distillation=distill is not None)
    state = init_state(prep, optimizer, extras)
    if distill is not None:
        params, copied = transfer_matching(state.params, distill.params)
        log.info("student: %d of %d parameter tensors start from the teacher's", copied,
                 len(jax.tree_util.tree_leaves(state.params)))
        state = state.replace(params=params)
        state = state.replace(opt_state=optimizer.init(trainable_tree(state, prep.tuning)))
    class_weights = None
    if cfg.loss.classification == "weighted":
        from emojax.data.types import inverse_frequency_weights

        class_weights = inverse_frequency_weights(train_data.labels, len(prep.class_names))
    parallel = data_parallel(cfg)
    # Multi-device: every output replicated, so each process reads the same numbers.
    outputs = {} if parallel is None else {"out_shardings": parallel.replicated}
    train_step = jax.jit(make_train_step(prep.model, optimizer, loss_kind=cfg.loss.classification,
                                         class_weights=class_weights, extras=extras,
                                         combine=cfg.loss.get("combine", "sum"),
                                         teacher=distill.model if distill is not None else None,
                                         tuning=prep.tuning),
                         donate_argnums=0, **outputs)
    base_kw = {}
    if prep.tuning is not None and prep.tuning.base_args is not None:
        base_kw["encoder_base"] = (prep.tuning.base_args if parallel is None
                                   else parallel.replicate(prep.tuning.base_args))
    teacher_args = (distill.params,) if distill is not None else ()
    if distill is not None and parallel is not None:
        teacher_args = (parallel.replicate(distill.params),)
    if parallel is not None and batch_size % parallel.count:
        raise config_lib.ConfigError(f"train.batch_size: the {len(train_data)} training samples give batches of "
                                     f"{batch_size}, which do not split across {parallel.count} devices")
    eval_step = jax.jit(make_eval_step(prep.model), **outputs)
    eval_batch = int(cfg.train.eval_batch_size)
    metric = cfg.train.select_metric

    # -- resume ---------------------------------------------------------------------------
    checkpoints = ckpt_lib.RunCheckpoints(run_dir, keep_epochs=int(cfg.train.keep_epochs), primary=primary)
    progress = checkpoints.progress() or {"epoch": 0, "history": [], "best_epoch": 0, "best_score": -1.0,
                                          "bad_epochs": 0, "finished": False}
    if progress["epoch"] > 0 and not progress["finished"]:
        # The newest intact state: damaged ones are moved aside (logged) and the run replays the
        # epochs after the one it resumes from. A finished run needs only its best parameters.
        try:
            resumed, state = checkpoints.restore_latest(progress["epoch"], state)
        except ckpt_lib.CheckpointError:
            checkpoints.close()
            raise
        if resumed < progress["epoch"]:
            log.warning("%s: progress.json names epoch %d but its training state is damaged or missing; "
                        "resuming after epoch %d", run_dir, progress["epoch"], resumed)
            progress = progress_at(progress, resumed, metric)
            if primary:
                ckpt_lib.write_json_atomic(checkpoints.progress_path, progress)
        if resumed:
            log.info("resuming %s after epoch %d", run_dir, resumed)
    if parallel is not None:
        state = parallel.replicate(state)
        log.info("data parallel over %d %s devices", parallel.count, parallel.devices[0].platform)

    # -- epochs ---------------------------------------------------------------------------
    epochs_run = 0
    total_epochs = int(cfg.train.epochs)
    while not progress["finished"] and progress["epoch"] < total_epochs:
        if max_epochs is not None and epochs_run >= max_epochs:
            break
        epoch = progress["epoch"] + 1
        start = time.perf_counter()
        losses = []
        last_dev = progress["history"][-1]["dev"] if progress["history"] else None
        bar = tqdm(train_batches(train_data, batch_size, int(cfg.seed), epoch), total=steps_per_epoch,
                   desc=f"epoch {epoch}/{total_epochs}", disable=not cfg.progress, leave=False)
        for batch in bar:
            if distill is not None:
                batch.update(distill.batch(batch["index"]))
            batch.pop("index", None)
            if parallel is not None:
                batch = parallel.shard(batch)
            state, logs = train_step(state, batch, *teacher_args, **base_kw)
            losses.append(logs["loss"])
            if len(losses) % 10 == 0 or len(losses) == steps_per_epoch:
                postfix = {"loss": f"{float(np.mean(jax.device_get(losses[-10:]))):.4f}"}
                if last_dev:
                    postfix.update(dev_acc=f"{100 * last_dev['accuracy']:.2f}",
                                   dev_wf1=f"{100 * last_dev['weighted_f1']:.2f}")
                bar.set_postfix(postfix)
        train_loss = float(np.mean(jax.device_get(losses))) if losses else float("nan")
        if not np.isfinite(train_loss):
            raise FloatingPointError(f"epoch {epoch}: training loss is {train_loss}; lower train.lr "
                                     f"(now {cfg.train.lr}) or check the features")
        if prep.tuning is not None:
            dev_data = prep.tuning.refresh(prep.features["dev"], state.encoder, eval_batch)
        dev_scores = score(eval_step, state.params, dev_data, len(prep.class_names), eval_batch, parallel)
        seconds = time.perf_counter() - start
        row = {"epoch": epoch, "train_loss": train_loss, "dev": _scores_summary(dev_scores),
               "seconds": seconds, "steps": int(state.step)}
        if epoch == 1 and progress["epoch"] == 0:
            row["feature_seconds"] = prep.feature_seconds
        improved = dev_scores[metric] > progress["best_score"]
        progress.update(epoch=epoch, history=progress["history"] + [row])
        if improved:
            progress.update(best_epoch=epoch, best_score=dev_scores[metric], bad_epochs=0)
        else:
            progress["bad_epochs"] += 1
        if progress["bad_epochs"] >= int(cfg.train.patience) or epoch >= total_epochs:
            progress["finished"] = True
        if cfg.progress and primary:
            tqdm.write(f"epoch {epoch}: loss {train_loss:.4f}  dev acc {100 * dev_scores['accuracy']:.2f}  "
                       f"dev wF1 {100 * dev_scores['weighted_f1']:.2f}  ({seconds:.1f}s)"
                       + ("  *" if improved else ""))
        checkpoints.save_epoch(epoch, state, progress,
                               best_params=best_target(state, prep.tuning) if improved else None)
        epochs_run += 1

    if not progress["finished"]:
        checkpoints.close()
        return run_dir

    # -- the selected epoch, scored once on dev and test -----------------------------------
    try:
        best = checkpoints.restore_best(best_target(state, prep.tuning), progress["best_epoch"])
    finally:
        checkpoints.close()
    best_params = best
    if prep.tuning is not None:
        best_params = best["params"]
        prep.features = tuned_features(prep, best["encoder"], eval_batch, splits=("dev", "test"))
    write_results(prep, eval_step, best_params, progress, parallel=parallel, write=primary)
    return run_dir


# ---------------------------------------------------------------------------------------------
# Distillation from a teacher run
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Teacher:
    """A finished run used as a frozen teacher: its model, parameters and, for the student's
    training split, its inputs row-aligned with the student's samples."""

    run_dir: pathlib.Path
    model: EmotionModel
    params: Any
    train: FeatureSet  # the teacher's features, in the student's training order of samples
    scores: dict

    def batch(self, index: np.ndarray) -> dict:
        rows = batch_of(self.train, index)
        return {"teacher_features": rows["features"], "teacher_present": rows["present"]}


def transfer_matching(student, teacher) -> tuple[Any, int]:
    """``student`` with every tensor replaced by the teacher's of the same path and shape;
    returns the new tree and how many tensors were copied."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    flat_teacher = flatten_dict(jax.device_get(dict(teacher)))
    flat = flatten_dict(dict(student))
    copied = 0
    for path, value in flat.items():
        source = flat_teacher.get(path)
        if source is not None and np.shape(source) == np.shape(value):
            flat[path] = jnp.asarray(source, dtype=value.dtype)
            copied += 1
    return unflatten_dict(flat), copied


def load_teacher(teacher_dir, prep: Prepared, workdir) -> Teacher:
    """Load the teacher run, check it fits the student's dataset, score it on dev and test
    (printed, as the suite did) and align its training features with the student's."""
    teacher_dir = pathlib.Path(teacher_dir)
    if not (teacher_dir / "results.json").exists():
        raise ckpt_lib.CheckpointError(f"{teacher_dir}: not a finished run (no results.json); train the teacher first")
    t_prep, t_eval, t_params, _ = load_run(teacher_dir, workdir)
    cfg, t_cfg = prep.cfg, t_prep.cfg
    if (t_cfg.dataset.name, t_cfg.dataset.target) != (cfg.dataset.name, cfg.dataset.target) or \
            tuple(t_prep.class_names) != tuple(prep.class_names):
        raise config_lib.ConfigError(f"teacher {teacher_dir}: trained on {t_cfg.dataset.name} ({t_cfg.dataset.target}), "
                                     f"the student on {cfg.dataset.name} ({cfg.dataset.target}); they must match")
    scores = {}
    for split in ("dev", "test"):
        if split in t_prep.features:
            scores[split] = _scores_summary(score(t_eval, t_params, t_prep.features[split], len(t_prep.class_names),
                                                  int(t_cfg.train.eval_batch_size)))
    line = "  ".join(f"{split} acc {100 * v['accuracy']:.2f} wF1 {100 * v['weighted_f1']:.2f}"
                     for split, v in scores.items())
    message = f"teacher {config_lib.run_label(t_cfg)}: {line}"
    log.warning(message)
    if cfg.progress:
        tqdm.write(message)
    student_train, teacher_train = prep.features["train"], t_prep.features["train"]
    position = {uid: i for i, uid in enumerate(teacher_train.uids)}
    missing = [uid for uid in student_train.uids if uid not in position]
    if missing:
        raise config_lib.ConfigError(f"teacher {teacher_dir}: has no training sample {missing[0]} of the student's "
                                     f"dataset ({len(missing)} missing); train the teacher on the same data")
    order = np.array([position[uid] for uid in student_train.uids])
    aligned = FeatureSet({m: v[order] for m, v in teacher_train.features.items()},
                         {m: v[order] for m, v in teacher_train.present.items()},
                         teacher_train.labels[order], list(student_train.uids))
    if jax.process_index() == 0:
        ckpt_lib.write_json_atomic(prep.run_dir / "teacher.json", {"run_dir": str(teacher_dir.resolve()),
                                                               "label": config_lib.run_label(t_cfg),
                                                               "scores": scores})
    return Teacher(teacher_dir, t_prep.model, t_params, aligned, scores)


def _usable_extras(cfg, modalities, distillation: bool = False) -> dict:
    """The configured extra losses this run can use: those comparing modalities are skipped, with
    a logged note, on a unimodal run (as is CMCL/SCL without its main modality)."""
    extras = cfg.loss.extras.to_dict() if cfg.loss.extras else {}
    usable = {}
    for name, options in extras.items():
        if name in losses_lib.MULTIMODAL_LOSSES and len(modalities) < 2:
            log.warning("loss %s needs several modalities; skipped on this %s run", name, "+".join(modalities))
            continue
        if name in ("cmcl", "scl") and options.get("main_modal", "T") not in modalities:
            log.warning("loss %s: its main modality %s is not in this %s run; skipped", name,
                        options.get("main_modal", "T"), "+".join(modalities))
            continue
        if name == "dist" and not distillation:
            raise config_lib.ConfigError("loss.extras.dist: distillation needs a teacher's logits; give a teacher "
                                         "run (--teacher=RUN_DIR) or remove dist from loss")
        usable[name] = options
    return usable


# ---------------------------------------------------------------------------------------------
# What a run was trained on
# ---------------------------------------------------------------------------------------------
DATA_RECORD = "data.json"

# The CSV files each dataset loader reads (emojax.data.meld / iemocap / sims).
_DATASET_CSVS = {"meld": tuple(f"{split}_sent_emo.csv" for split in SPLITS),
                 "iemocap": tuple(f"IEMOCAP_{split}.csv" for split in SPLITS),
                 "sims": ("label.csv",)}


class DataChangedError(ckpt_lib.CheckpointError):
    """The dataset a run recorded (folder, CSV contents) is not the one given now: resuming would
    mix two datasets' epochs and normalisation statistics, and rescoring a finished run would
    overwrite its results with scores of other data."""


def dataset_files(kind: str, path: str | pathlib.Path) -> list[pathlib.Path]:
    """The CSV files the loader of ``kind`` reads in the dataset folder ``path`` (those present;
    every ``*.csv`` directly in the folder for a kind without a known layout)."""
    path = pathlib.Path(path)
    names = _DATASET_CSVS.get(str(kind))
    if names is None:
        return sorted(p for p in path.glob("*.csv") if p.is_file())
    return [path / name for name in names if (path / name).is_file()]


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_record(cfg) -> dict:
    """What a run is trained and scored on: the dataset folder (absolute) and the SHA-256 of each
    CSV file its loader reads (``{"path", "kind", "files": {name: sha256}}``)."""
    path = pathlib.Path(cfg.dataset.path).resolve()
    return {"path": str(path), "kind": str(cfg.dataset.kind),
            "files": {p.name: _sha256(p) for p in dataset_files(cfg.dataset.kind, path)}}


def check_data_record(cfg, run_dir: pathlib.Path) -> dict:
    """The data record of ``cfg``'s dataset now; :class:`DataChangedError` when ``run_dir`` holds
    a record (``data.json``) of other data: another folder, or a CSV file changed, added or
    removed. A run without a record (new, or written before runs recorded their data) passes."""
    current = data_record(cfg)
    record_path = pathlib.Path(run_dir) / DATA_RECORD
    if not record_path.exists():
        return current
    try:
        recorded = json.loads(record_path.read_text())
    except json.JSONDecodeError as err:
        raise ckpt_lib.CheckpointError(f"{record_path}: unreadable ({err}); delete it to record the "
                                       "current data with the next start") from err
    old_path, new_path = recorded.get("path"), current["path"]
    if old_path != new_path:
        raise DataChangedError(f"{record_path}: this run was trained on {old_path}, not {new_path}; give "
                               f"--config.dataset.path={old_path}, or use a new --workdir to train on {new_path}")
    old_files, new_files = recorded.get("files", {}), current["files"]
    for name in sorted(set(old_files) | set(new_files)):
        old, new = old_files.get(name), new_files.get(name)
        if old == new:
            continue
        if old is None:
            change = "is new"
        elif new is None:
            change = "is gone"
        else:
            change = f"has changed (sha256 {old[:12]} in {record_path}, now {new[:12]})"
        raise DataChangedError(f"{pathlib.Path(new_path) / name}: {change} since the run {run_dir} was trained "
                               "on it; restore the data, or use a new --workdir to train on the new data")
    return current


def _check_same_config(cfg, run_dir: pathlib.Path) -> None:
    path = run_dir / "config.json"
    if path.exists():
        old = config_lib.load_config(path)
        if config_lib.config_hash(old) != config_lib.config_hash(cfg):
            raise ckpt_lib.CheckpointError(f"{path}: this run directory holds a run of another config "
                                           f"(hash {config_lib.config_hash(old)}, not {config_lib.config_hash(cfg)})")


def _write_meta(prep: Prepared) -> None:
    meta = {"class_names": list(prep.class_names), "input_dims": prep.featurizer.dims,
            "label": config_lib.run_label(prep.cfg), "hash": config_lib.config_hash(prep.cfg),
            "feature_stats": prep.feature_stats}
    text = prep.featurizer.encoders.get("T")
    if text is not None:
        meta["speaker_tokens"] = list(getattr(text, "speaker_tokens", []))
        text.encoder.save_preprocessing(prep.run_dir / "preprocessing" / "T")
    ckpt_lib.write_json_atomic(prep.run_dir / "meta.json", meta)


def write_results(prep: Prepared, eval_step: Callable, params, progress: dict, *,
                  parallel: Optional[DataParallel] = None, write: bool = True) -> dict:
    """Score dev and test with ``params``; write results.json, history, tables and plots
    (unless ``write`` is false: the other processes of a multi-host run score, and stay silent)."""
    cfg, run_dir, names = prep.cfg, prep.run_dir, prep.class_names
    results: dict = {"best_epoch": progress["best_epoch"], "label": config_lib.run_label(cfg),
                     "hash": config_lib.config_hash(cfg), "seed": int(cfg.seed), "class_names": list(names)}
    report = [f"# {results['label']}", "", f"selected epoch (dev {cfg.train.select_metric}): {progress['best_epoch']}", ""]
    for split in ("dev", "test"):
        if split not in prep.features:
            results[split] = {"scored": False, "reason": f"no {split} split in {cfg.dataset.path}"}
            report += [f"### {split}", "", f"not scored: no {split} split in {cfg.dataset.path}", ""]
            continue
        scores = score(eval_step, params, prep.features[split], len(names), int(cfg.train.eval_batch_size),
                       parallel)
        scores["class_names"] = list(names)
        results[split] = {"scored": True, **scores}
        if not write:
            continue
        metrics_lib.plot_confusion(scores["confusion"], names, run_dir / f"confusion_{split}.png",
                                   title=f"{split}: acc {100 * scores['accuracy']:.2f}, "
                                         f"wF1 {100 * scores['weighted_f1']:.2f}")
        report += [metrics_lib.format_table(scores, names, title=split), "",
                   metrics_lib.format_confusion(scores["confusion"], names), ""]
    if not write:
        return results
    ckpt_lib.write_json_atomic(run_dir / "results.json", results)
    ckpt_lib.write_json_atomic(run_dir / "history.json", progress["history"])
    metrics_lib.plot_history(progress["history"], run_dir / "history.png", cfg.train.select_metric)
    (run_dir / "metrics.md").write_text("\n".join(report))
    return results


def load_run(run_dir: str | pathlib.Path, workdir: Optional[str | pathlib.Path] = None):
    """Rebuild a finished run: ``(prep, eval_step, best_params)``."""
    run_dir = pathlib.Path(run_dir)
    progress = ckpt_lib.finished_run(run_dir)  # before any model is loaded
    cfg = config_lib.load_config(run_dir / "config.json")
    cfg.progress = False
    workdir = pathlib.Path(workdir) if workdir else _workdir_of(run_dir)
    prep = prepare(cfg, workdir)
    prep.run_dir = run_dir
    eval_step = jax.jit(make_eval_step(prep.model))
    optimizer = make_optimizer(cfg, 1)
    state = init_state(prep, optimizer)
    with ckpt_lib.RunCheckpoints(run_dir, keep_epochs=int(cfg.train.keep_epochs)) as checkpoints:
        params = checkpoints.restore_best(best_target(state, prep.tuning), progress["best_epoch"])
    if prep.tuning is not None:
        # Every split's tuned features from the fine-tuned encoders of the selected epoch.
        prep.features = tuned_features(prep, params["encoder"], int(cfg.train.eval_batch_size))
        params = params["params"]
    return prep, eval_step, params, progress


def _workdir_of(run_dir: pathlib.Path) -> pathlib.Path:
    """``{workdir}/checkpoints/{category}/...`` -> ``workdir`` (six levels up)."""
    parts = run_dir.resolve().parts
    if "checkpoints" in parts:
        return pathlib.Path(*parts[:len(parts) - 1 - parts[::-1].index("checkpoints")])
    return run_dir.parent
