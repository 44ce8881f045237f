r"""One command on a GPU machine: the fast test tier, two train steps against their PyTorch peers,
the attention kernel, and data parallelism; one Markdown table, also written as JSON.

    python benchmarks/gpu_check.py [--output=runs/gpu_check.json] [--peer_dir=../shared/peer]
        [--parts=tests,fusion,bert,attention,parallel] [--tests_timeout=240] [--tests_workers=4]
    python benchmarks/gpu_check.py --dry_run        # every part briefly on the CPU (tiny sizes)
    bash benchmarks/gpu_check.sh                    # installs carried wheels first (docs/benchmarks.md)

The parts (each a row or two of the table; a part that fails says why in its row, the others go on):

* ``tests``: ``pytest -m "not slow"`` on the GPU (``--tests_workers`` pytest-xdist workers, GPU
  memory taken as needed, float32 matrix products at full precision since the tests' tolerances
  are float32's): passed / failed / skipped counts, stopped after ``--tests_timeout`` seconds.
  The dry run runs one small test file instead.
* ``fusion``: the DF-1.0 + attention train step (batch 32, T+A+V features of 768, AdamW), float32
  and bfloat16, against the PyTorch suite's own head (``fusion_step.py df`` in ``--peer_dir``
  with ``PEER_DEVICE=cuda``, and ``PEER_AMP=bf16`` for bfloat16).
* ``bert``: a BERT-base-sized full fine-tuning step (random weights, 12 layers, 768 wide, 32 x
  128 tokens, dropout on, linear head on the last position, AdamW) in bfloat16, against
  transformers' PyTorch ``BertModel`` under bfloat16 autocast (``finetune_step.py
  bert-base-random 32 128``).
* ``attention``: which kernel ``jax.nn.dot_product_attention`` uses for BERT-base's attention
  shape in bfloat16 (a cuDNN custom call in the compiled HLO, or XLA's fusion), whether
  ``implementation="cudnn"`` compiles there, and the forward + backward time of each.
* ``parallel``: the DF-1.0 + attention step (attention across the batch, so the devices must
  exchange rows) over every visible device against one device, same batch and state: the losses
  of three steps must agree to 1e-4. One visible device: skipped, saying so.

A peer row needs PyTorch in ``--peer_python`` (default: this Python); without it the row says
``peer not available (no torch)``. Ratios are emojax's samples/s over the peer's, both measured
by this command on the same machine one after the other.
"""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # configs/ is in the checkout, not installed

_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Every part briefly on the CPU: tiny sizes, two steps, one test file.")
_OUTPUT = flags.DEFINE_string("output", "runs/gpu_check.json", "JSON file for the table's rows.")
_PARTS = flags.DEFINE_list("parts", ["tests", "fusion", "bert", "attention", "parallel"], "Parts to run.")
_PEER_DIR = flags.DEFINE_string("peer_dir", "", "Folder of fusion_step.py and finetune_step.py "
                                "(default: ../shared/peer, else shared/peer in the checkout).")
_PEER_PYTHON = flags.DEFINE_string("peer_python", sys.executable, "Python that runs the PyTorch peers.")
_TESTS_TIMEOUT = flags.DEFINE_integer("tests_timeout", 240, "Seconds the fast tier may run before it is stopped.")
_TESTS_WORKERS = flags.DEFINE_integer("tests_workers", 4, "pytest-xdist workers for the fast tier (0: one process).")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed steps per round (the dry run: 2).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds; the table gives the best (the dry run: 1).")

PARTS = ("tests", "fusion", "bert", "attention", "parallel")
NO_TORCH = "peer not available (no torch)"


# -- sizes -------------------------------------------------------------------------------------

def sizes(dry_run: bool) -> dict:
    """Every size the parts use: the peers' on a GPU, tiny ones for the dry run."""
    if dry_run:
        return {"batch": 8, "dim": 48, "steps": 2, "rounds": 1,  # 48: divisible by the 12 attention heads
                "bert": {"layers": 2, "hidden": 64, "heads": 4, "intermediate": 128, "vocab": 1000, "batch": 4,
                         "tokens": 16}}
    return {"batch": 32, "dim": 768, "steps": _STEPS.value, "rounds": _ROUNDS.value,
            "bert": {"layers": 12, "hidden": 768, "heads": 12, "intermediate": 3072, "vocab": 30522, "batch": 32,
                     "tokens": 128}}


def best_rate(step, state, data, steps: int, rounds: int, items: int):
    """Items per second of ``step`` (the best of ``rounds`` rounds of ``steps`` steps, after two
    warm-up steps) and the state after them."""
    import jax

    for _ in range(2):
        state, loss = step(state, data)
    jax.block_until_ready(loss)
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            state, loss = step(state, data)
        jax.block_until_ready(loss)
        rates.append(items * steps / (time.perf_counter() - start))
    return max(rates), state


# -- the PyTorch peers ---------------------------------------------------------------------------

def peer_dir() -> pathlib.Path:
    if _PEER_DIR.value:
        return pathlib.Path(_PEER_DIR.value)
    for candidate in (ROOT.parent / "shared" / "peer", ROOT / "shared" / "peer"):
        if candidate.is_dir():
            return candidate
    return ROOT.parent / "shared" / "peer"


def run_peer(args: list[str], *, device: str, bf16: bool, timeout: float = 300) -> dict:
    """``{"samples_per_s": ...}`` of one peer script, or ``{"error": why}``."""
    folder = peer_dir()
    script = folder / args[0]
    if not script.is_file():
        return {"error": f"peer not available ({script} not found; see --peer_dir)"}
    probe = subprocess.run([_PEER_PYTHON.value, "-c", "import torch"], capture_output=True)
    if probe.returncode != 0:
        return {"error": NO_TORCH}
    env = dict(os.environ, PEER_DEVICE=device, PEER_AMP="bf16" if bf16 else "", PYTHONPATH=str(folder))
    try:
        done = subprocess.run([_PEER_PYTHON.value, *[str(a) for a in args]], cwd=folder, env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"peer {args[0]} ran past {timeout:.0f} s"}
    match = re.search(r"samples_per_s=([0-9.]+)", done.stdout)
    if done.returncode != 0 or match is None:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        return {"error": f"peer {args[0]} failed (exit {done.returncode}): {last[0][:200]}"}
    return {"samples_per_s": float(match.group(1)), "line": done.stdout.strip().splitlines()[-1]}


# -- the parts -------------------------------------------------------------------------------------

def part_tests(dry_run: bool) -> list[dict]:
    """The fast tier (the dry run: one small file), its counts parsed from pytest's summary line."""
    if dry_run:
        what, selection = "one small test file on the CPU (tests/test_metrics.py)", ["tests/test_metrics.py"]
    else:
        what, selection = 'fast tier, pytest -m "not slow"', ["-m", "not slow", "tests"]
        if _TESTS_WORKERS.value > 0:
            selection += [f"--numprocesses={_TESTS_WORKERS.value}", "--dist=loadfile"]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", JAX_DEFAULT_MATMUL_PRECISION="highest",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    if dry_run:
        env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection]
    start = time.perf_counter()
    # a session of its own: when stopped, its xdist workers are stopped with it
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, stopped = process.communicate(timeout=_TESTS_TIMEOUT.value)[0], False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, stopped = process.communicate()[0], True
    seconds = time.perf_counter() - start
    counts = {kind: 0 for kind in ("passed", "failed", "skipped", "errors")}
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    for number, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary[-1] if summary else ""):
        counts["errors" if kind.startswith("error") else kind] += int(number)
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)))
    if stopped:  # what -q's progress lines tell: one character per test
        progress = "".join(re.findall(r"^([.FEsxX]+)(?:\s+\[\s*\d+%\])?$", output, re.MULTILINE))
        counts.update(passed=progress.count("."), failed=progress.count("F"), errors=progress.count("E"),
                      skipped=progress.count("s"))
        result = (f"stopped after {_TESTS_TIMEOUT.value} s: so far {counts['passed']} passed, {counts['failed']} "
                  f"failed, {counts['errors']} errors, {counts['skipped']} skipped (raise --tests_timeout)")
        ok = False
    elif not summary:
        result, ok = "no summary from pytest: " + (output.strip().splitlines() or ["no output"])[-1][:200], False
    else:
        ok = counts["failed"] == 0 and counts["errors"] == 0 and counts["passed"] > 0
        result = (f"{'pass' if ok else 'FAIL'}: {counts['passed']} passed, {counts['failed']} failed, "
                  f"{counts['errors']} errors, {counts['skipped']} skipped")
    return [{"part": "tests", "what": what, "emojax": f"{seconds:.0f} s", "peer": "", "result": result, "ok": ok,
             "counts": counts, "failed_tests": failed[:50], "seconds": seconds}]


def _fusion_setup(precision: str, size: dict, devices=None, fusion: str = "DF-1.0+attn"):
    """DF-1.0 + attention (the suite's configuration; or another ``fusion`` preset): its step,
    returning ``(state, loss)``, its state and one batch."""
    from configs.compose import compose
    from emojax.benchmark import fusion_step_on_random_features

    cfg = compose(f"encoders=T+A+V,fusion={fusion},loss=focal")
    cfg.precision = precision
    if "project_inputs" in cfg.fusion:
        cfg.fusion.project_inputs = 0
    step, state, data, _ = fusion_step_on_random_features(cfg, batch=size["batch"], dim=size["dim"],
                                                          devices=devices, loss_only=True)
    return step, state, data


def part_fusion(dry_run: bool, device: str) -> list[dict]:
    size = sizes(dry_run)
    rows = []
    for precision in ("float32", "bfloat16"):
        step, state, data = _fusion_setup(precision, size)
        ours, _ = best_rate(step, state, data, size["steps"], size["rounds"], size["batch"])
        peer = run_peer(["fusion_step.py", "df"], device=device, bf16=precision == "bfloat16")
        rows.append(_compared("fusion", f"DF-1.0+attn train step, batch {size['batch']}, T+A+V {size['dim']}, "
                              f"{precision} (samples/s)", ours, peer))
    return rows


def _compared(part: str, what: str, ours: float, peer: dict) -> dict:
    row = {"part": part, "what": what, "emojax": f"{ours:,.1f}", "emojax_samples_per_s": ours}
    if "error" in peer:
        row.update(peer=peer["error"], result="no ratio", ok=None)
    else:
        row.update(peer=f"{peer['samples_per_s']:,.1f}", peer_samples_per_s=peer["samples_per_s"],
                   result=f"{ours / peer['samples_per_s']:.2f}x", ratio=ours / peer["samples_per_s"], ok=True)
    return row


def random_bert(config, seed: int = 0):
    """Random BERT parameters in emojax's layout (:func:`emojax.encoders.bert.params_from_state`):
    normal(0, 0.02) weights, zero biases, unit layer norms, as ``BertModel`` initialises them."""
    import jax
    import jax.numpy as jnp

    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 8 + 8 * config.num_layers))
    h, i = config.hidden_size, config.intermediate_size

    def normal(*shape):
        return 0.02 * jax.random.normal(next(keys), shape, jnp.float32)

    def dense(n_in, n_out):
        return {"w": normal(n_in, n_out), "b": jnp.zeros(n_out, jnp.float32)}

    def norm():
        return {"scale": jnp.ones(h, jnp.float32), "bias": jnp.zeros(h, jnp.float32)}

    return {"embeddings": {"word": normal(config.vocab_size, h), "position": normal(config.max_positions, h),
                           "token_type": normal(config.type_vocab_size, h), "norm": norm()},
            "layers": [{"query": dense(h, h), "key": dense(h, h), "value": dense(h, h), "attention_out": dense(h, h),
                        "attention_norm": norm(), "intermediate": dense(h, i), "output": dense(i, h),
                        "output_norm": norm()} for _ in range(config.num_layers)]}


def part_bert(dry_run: bool, device: str) -> list[dict]:
    """emojax's BERT fine-tuning step in bfloat16 (float32 parameters and AdamW state)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from emojax.encoders.bert import BertConfig, bert_apply

    size = sizes(dry_run)
    b = size["bert"]
    config = BertConfig(vocab_size=b["vocab"], hidden_size=b["hidden"], num_layers=b["layers"], num_heads=b["heads"],
                        intermediate_size=b["intermediate"], max_positions=512)
    params = {"encoder": random_bert(config), "head": {"w": jnp.zeros((b["hidden"], 7)), "b": jnp.zeros(7)}}
    optimizer = optax.adamw(1e-5)
    rng = np.random.default_rng(0)
    data = {"ids": rng.integers(1000 % b["vocab"], min(20000, b["vocab"]), (b["batch"], b["tokens"])).astype(np.int32),
            "labels": rng.integers(0, 7, b["batch"]).astype(np.int32)}

    def loss_fn(params, data, key):
        hidden = bert_apply(params["encoder"], data["ids"], jnp.ones_like(data["ids"]), config=config,
                            dtype=jnp.bfloat16, deterministic=False, rng=key)[:, -1]
        logits = hidden @ params["head"]["w"] + params["head"]["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, data["labels"]).mean()

    def step(state, data):
        params, opt_state, key = state
        key, use = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(params, data, use)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, key), loss

    state = jax.device_put((params, optimizer.init(params), jax.random.PRNGKey(1)))
    ours, _ = best_rate(jax.jit(step, donate_argnums=0), state, jax.device_put(data), size["steps"], size["rounds"],
                        b["batch"])
    shape = ["4", "16", "1"] if dry_run else ["32", "128", "5"]  # batch, tokens, timed steps
    peer = run_peer(["finetune_step.py", "bert-base-random", *shape], device=device, bf16=True)
    what = (f"BERT-base-sized fine-tuning step ({b['layers']} layers, {b['hidden']} wide, {b['batch']} x {b['tokens']} "
            "tokens), bfloat16 (samples/s)")
    return [_compared("bert", what, ours, peer)]


def part_attention(dry_run: bool) -> list[dict]:
    """The kernel behind ``jax.nn.dot_product_attention`` for BERT-base's attention in bfloat16."""
    import jax
    import jax.numpy as jnp

    b = sizes(dry_run)["bert"]
    shape = (b["batch"], b["tokens"], b["heads"], b["hidden"] // b["heads"])
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys)

    def program(implementation):
        def loss(q, k, v):
            return jax.nn.dot_product_attention(q, k, v, implementation=implementation).astype(jnp.float32).sum()
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))

    def timed(fn) -> float:
        jax.block_until_ready(fn(q, k, v))
        start, n = time.perf_counter(), 2 if dry_run else 50
        for _ in range(n):
            out = fn(q, k, v)
        jax.block_until_ready(out)
        return 1000 * (time.perf_counter() - start) / n

    results = {}
    for name in (None, "xla", "cudnn"):
        fn = program(name)
        try:
            hlo = fn.lower(q, k, v).compile().as_text()
        except Exception as err:  # noqa: BLE001 - cuDNN's refusal comes as several types
            results[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
            continue
        results[name] = {"cudnn": "cudnn" in hlo.lower() and "custom-call" in hlo, "ms": timed(fn)}
    default = results[None]
    kernel = "error" if "error" in default else ("cuDNN" if default["cudnn"] else "XLA")
    cudnn = results["cudnn"]
    cudnn_text = (f"cuDNN {cudnn['ms']:.2f} ms" if "error" not in cudnn else f"cuDNN not available ({cudnn['error']})")
    xla_text = f"XLA {results['xla']['ms']:.2f} ms" if "error" not in results["xla"] else results["xla"]["error"]
    default_text = f"{default['ms']:.2f} ms" if "error" not in default else default["error"]
    return [{"part": "attention", "what": f"jax.nn.dot_product_attention {shape} bfloat16, forward + backward",
             "emojax": f"default: {default_text}", "peer": "",
             "result": f"default kernel: {kernel}; {xla_text}; {cudnn_text}", "ok": "error" not in default,
             "default_kernel": kernel, "implementations": {str(k): v for k, v in results.items()}}]


def part_parallel(dry_run: bool) -> list[dict]:
    """The DF-1.0 + attention step over every visible device against one device (the dry run:
    the concat head, whose step compiles in seconds rather than a minute on the CPU)."""
    import jax
    import numpy as np

    devices = jax.local_devices()
    fusion = "vallina" if dry_run else "DF-1.0+attn"
    what = f"{fusion} loss over {len(devices)} device(s) against 1, 3 steps"
    if len(devices) < 2:
        return [{"part": "parallel", "what": what, "emojax": "", "peer": "",
                 "result": f"skipped: 1 device visible ({devices[0].device_kind})", "ok": None}]
    size = dict(sizes(dry_run))
    size["batch"] = -(-size["batch"] // len(devices)) * len(devices)
    losses = {}
    for name, chosen in (("one", devices[:1]), ("all", devices)):
        step, state, data = _fusion_setup("float32", size, chosen, fusion)
        losses[name] = []
        for _ in range(3):
            state, loss = step(state, data)
            losses[name].append(float(loss))
    gap = float(np.max(np.abs(np.subtract(losses["one"], losses["all"]))))
    ok = gap <= 1e-4
    return [{"part": "parallel", "what": what, "emojax": f"largest loss gap {gap:.2e}", "peer": "",
             "result": f"{'pass' if ok else 'FAIL'} ({len(devices)} devices, tolerance 1e-4)", "ok": ok,
             "losses": losses}]


# -- the report ------------------------------------------------------------------------------------

def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| part | what | emojax | peer (PyTorch) | result |", "|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['part']} | {r['what']} | {r['emojax']} | {r['peer']} | {r['result']} |")
    return "\n".join(lines)


def main(argv):
    del argv
    dry_run = _DRY_RUN.value
    unknown = [p for p in _PARTS.value if p not in PARTS]
    if unknown:
        raise app.UsageError(f"--parts: unknown part {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if dry_run:  # before JAX starts: the CPU, split in two devices so the parallel part compares something
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
    import jax

    from emojax.benchmark import machine_description, machine_line
    from emojax.files import write_json_atomic

    backend = jax.default_backend()
    device = "cuda" if backend == "gpu" else "cpu"
    if not dry_run and backend != "gpu":
        print(f"warning: JAX's backend is {backend}, not a GPU; the figures are this machine's", flush=True)
    machine = machine_description()
    rows = []
    for part in _PARTS.value:
        start = time.perf_counter()
        try:
            if part == "tests":
                new = part_tests(dry_run)
            elif part == "fusion":
                new = part_fusion(dry_run, device)
            elif part == "bert":
                new = part_bert(dry_run, device)
            elif part == "attention":
                new = part_attention(dry_run)
            else:
                new = part_parallel(dry_run)
        except Exception as err:  # noqa: BLE001 - one part's failure is its row; the others still run
            new = [{"part": part, "what": part, "emojax": "", "peer": "", "ok": False,
                    "result": f"FAIL: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"}]
        for row in new:
            row["part_seconds"] = time.perf_counter() - start
        rows += new
        for row in new:
            print(f"{row['part']}: {row['what']}: {row['emojax']} | {row['peer']} | {row['result']}", flush=True)
    header = (f"{machine_line(machine)}; devices {', '.join(machine['devices'])}"
              f"{'; dry run (tiny sizes on the CPU)' if dry_run else ''}")
    table = markdown(rows, header)
    print("\n" + table)
    output = pathlib.Path(_OUTPUT.value)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output, json.loads(json.dumps({"machine": machine, "dry_run": dry_run, "device": device,
                                                     "rows": rows, "markdown": table}, default=str)))
    print(f"\nwritten {output}")


if __name__ == "__main__":
    app.run(main)
