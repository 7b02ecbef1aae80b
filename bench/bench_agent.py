"""The agent's step (V encode + M step + C act) four ways and batched, and whole-rollout throughput.

    python -m bench.bench_agent [--quick]

Weights are random at the paper's sizes (z = 32, h = 256, 5 mixtures): timing does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
    os.environ.setdefault(_var, "1")  # one core per agent, as in a rollout worker (before NumPy and TF load)

import numpy as np  # noqa: E402

from bench.common import machine_info, median_time  # noqa: E402


def _models():
    import keras

    from core.models.mdnrnn import MDNRNN
    from core.models.vae import ConvVAE
    keras.utils.set_random_seed(0)
    return ConvVAE(32), MDNRNN(32, 256, 5)


def agent_step_costs(repeats: int) -> dict[str, float]:
    """Milliseconds per agent step (encode one frame, one LSTM step, act) for each way of calling it."""
    import keras
    import tensorflow as tf

    from core.models.agent import Agent, extract_weights
    from core.models.controller import Controller
    vae, rnn = _models()
    controller = Controller(32, 256, np.random.default_rng(0).normal(scale=0.1, size=867))
    frame = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    obs = np.random.default_rng(2).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    x_in = keras.Input((64, 64, 3))
    encoder = keras.Model(x_in, vae.encode(x_in)[0])
    cell = rnn.lstm.cell
    z_in, h_in, c_in = keras.Input((35,)), keras.Input((256,)), keras.Input((256,))
    step_model = keras.Model([z_in, h_in, c_in], cell(z_in, [h_in, c_in])[1])
    h = np.zeros((1, 256), np.float32)
    c = np.zeros((1, 256), np.float32)

    def keras_step(call):
        z = np.asarray(call(encoder, frame.astype(np.float32) / 255.0))
        a = controller.act(z, h)
        call(step_model, [np.concatenate([z, a], 1), h, c])

    enc_fn = tf.function(lambda x: encoder(x))
    step_fn = tf.function(lambda x, hh, cc: step_model([x, hh, cc]))

    def tf_function_step():
        z = enc_fn(tf.constant(frame.astype(np.float32) / 255.0)).numpy()
        a = controller.act(z, h)
        step_fn(tf.constant(np.concatenate([z, a], 1)), tf.constant(h), tf.constant(c))

    weights = extract_weights(vae, rnn)
    agent = Agent(weights, controller.get_params())
    costs = {
        "Keras `predict`, excl. crop+resize": median_time(lambda: keras_step(lambda m, x: m.predict(x, verbose=0)),
                                       max(3, repeats // 20)),
        "Keras eager `model(x)`, excl. crop+resize": median_time(lambda: keras_step(lambda m, x: m(x)), max(5, repeats // 5)),
        "`tf.function`, excl. crop+resize": median_time(tf_function_step, repeats),
        "this project (NumPy), incl. crop+resize": median_time(lambda: agent.act(obs), repeats),
    }
    for n in BATCHES:
        batch = Agent(weights, controller.get_params(), n_envs=n)
        frames = np.random.default_rng(3).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
        costs[f"this project (NumPy), batch of {n} envs, per env, excl. crop+resize"] = median_time(
            lambda: batch.act_frames(frames), max(10, repeats // n)) / n
    return {k: v * 1000 for k, v in costs.items()}


BATCHES = (8, 32)  # envs stepped together by one batched agent

# (rows, inner, cols) of every matrix product in one agent step at the paper's sizes, one env:
# V's four 4x4 stride-2 convolutions as im2col products, V's mu head, M's LSTM step, C.
AGENT_MATMULS = (
    (31 * 31, 16 * 3, 32), (14 * 14, 16 * 32, 64), (6 * 6, 16 * 64, 128), (2 * 2, 16 * 128, 256),
    (1, 1024, 32), (1, 32 + 3, 1024), (1, 256, 1024), (1, 32, 3), (1, 256, 3),
)


def agent_floor(repeats: int) -> dict[str, float]:
    """What the agent step's arithmetic alone costs on one core of this machine.

    ``macs``: multiply-adds of one step; ``peak_gflops``: single-core float32 GEMM rate on a large
    product; ``matmuls_ms``: the agent's own products timed alone on ready, contiguous inputs (no
    im2col, bias, activations or Python), which is the least any float32 implementation of these
    layers pays here.
    """
    rng = np.random.default_rng(0)
    macs = float(sum(m * k * n for m, k, n in AGENT_MATMULS))
    big_a = rng.random((768, 768), dtype=np.float32)
    big_b = rng.random((768, 768), dtype=np.float32)
    peak = 2 * 768 ** 3 / median_time(lambda: big_a @ big_b, max(20, repeats // 10)) / 1e9
    pairs = [(rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32))
             for m, k, n in AGENT_MATMULS]

    def products():
        for a, b in pairs:
            a @ b

    return {"macs": macs, "peak_gflops": peak, "matmuls_ms": median_time(products, repeats) * 1000}


def _gemm_rate(seconds: float, start_at: float) -> float:
    """Large float32 GEMMs a second for ``seconds``, starting at ``start_at`` (a ``time.time()``)."""
    a = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    a @ a
    time.sleep(max(0.0, start_at - time.time()))
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        a @ a
        n += 1
    return n / (time.perf_counter() - t)


def parallel_compute_scaling(workers: int, seconds: float = 3.0) -> float:
    """Total GEMM rate of ``workers`` processes at once over one process's: 2.0 on two free cores."""
    from concurrent.futures import ProcessPoolExecutor

    from core.envs.env import spawn_context
    one = _gemm_rate(seconds, 0.0)
    with ProcessPoolExecutor(workers, mp_context=spawn_context()) as pool:
        start_at = time.time() + 5.0  # after every process has started and imported NumPy
        rates = list(pool.map(_gemm_rate, [seconds] * workers, [start_at] * workers))
    return sum(rates) / one


def rollout_throughput(steps: int, workers: int) -> dict[str, float]:
    """Env steps a second of whole rollouts (env + agent), fast env and stock env, 1 and N processes."""
    from core.envs.env import make_env
    from core.models.agent import Agent, extract_weights
    from core.pipeline.rollout import RolloutPool, RolloutSettings, rollout
    vae, rnn = _models()
    weights = extract_weights(vae, rnn)
    params = np.random.default_rng(0).normal(scale=0.1, size=867).astype(np.float32)
    out = {}
    for kind in ("fast", "stock"):
        env = make_env(kind)
        rollout(params, 0, RolloutSettings(kind, 5), weights, env=env)  # warm up
        agent = Agent(weights, params)
        obs, _ = env.reset(seed=1)
        actions = []
        t = time.perf_counter()
        for _ in range(steps):
            actions.append(agent.act(obs))
            obs, *_ = env.step(actions[-1])
        out[f"{kind} env + NumPy agent, 1 process"] = steps / (time.perf_counter() - t)
        env.reset(seed=1)  # the same track and the same actions: the env alone does the same work
        t = time.perf_counter()
        for a in actions:
            env.step(a)
        out[f"{kind} env alone (same actions), 1 process"] = steps / (time.perf_counter() - t)
        env.close()
    with RolloutPool(weights, RolloutSettings("fast", steps), workers) as pool:
        list(pool.map([(params, s) for s in range(workers)]))  # start the workers
        t = time.perf_counter()
        results = list(pool.map([(params, s) for s in range(2 * workers)]))
        out[f"fast env + NumPy agent, {workers} processes"] = sum(r.steps for r in results) / (
            time.perf_counter() - t)
    return out


def tf_function_rollout_rate(steps: int, start_at: float = 0.0) -> float:
    """Steps a second of the baseline: stock env + a `tf.function` agent, one process. With ``start_at``
    (a ``time.time()``), the timed loop waits for that moment, so several processes run it together."""
    import tensorflow as tf

    from core.envs.env import make_env, preprocess
    from core.models.controller import Controller
    vae, rnn = _models()
    controller = Controller(32, 256, np.random.default_rng(0).normal(scale=0.1, size=867))
    encode = tf.function(lambda x: vae.encode(tf.cast(x, tf.float32) / 255.0)[0])
    cell = rnn.lstm.cell
    step = tf.function(lambda x, h, c: cell(x, [h, c])[1])
    env = make_env("stock")
    obs, _ = env.reset(seed=1)
    h = c = tf.zeros((1, 256))
    encode(preprocess(obs)[None])  # trace both functions before the clock starts
    step(tf.zeros((1, 35)), h, c)
    time.sleep(max(0.0, start_at - time.time()))
    t = time.perf_counter()
    for _ in range(steps):
        z = encode(preprocess(obs)[None]).numpy()
        a = controller.act(z, h.numpy())
        h, c = step(tf.constant(np.concatenate([z, a], 1)), h, c)
        obs, *_ = env.step(a[0])
    rate = steps / (time.perf_counter() - t)
    env.close()
    return rate


def tf_function_rollout_rate_parallel(steps: int, workers: int) -> float:
    """Total steps a second of ``workers`` baseline processes running at the same time."""
    from concurrent.futures import ProcessPoolExecutor

    from core.envs.env import spawn_context
    start_at = time.time() + 40.0  # after every process has imported TensorFlow and traced its functions
    with ProcessPoolExecutor(workers, mp_context=spawn_context()) as pool:
        rates = list(pool.map(tf_function_rollout_rate, [steps] * workers, [start_at] * workers))
    return float(sum(rates))


def run(quick: bool = False) -> str:
    repeats = 100 if quick else 400
    steps = 200 if quick else 1000
    workers = max(1, os.cpu_count() or 1)
    costs = agent_step_costs(repeats)
    floor = agent_floor(repeats)
    scaling = parallel_compute_scaling(workers) if workers > 1 else 1.0
    rates = rollout_throughput(steps, workers)
    baseline = tf_function_rollout_rate(steps)
    baseline_n = tf_function_rollout_rate_parallel(steps, workers)
    fast_env = rates["fast env alone (same actions), 1 process"]
    ours = rates["fast env + NumPy agent, 1 process"]
    lines = ["## Agent step and rollouts", "", machine_info(), "",
             "Agent step = crop/resize + V encode + C act + one M (LSTM) step, one env, one core.", "",
             "| way | ms a step | vs NumPy |", "|---|---:|---:|"]
    numpy_ms = costs["this project (NumPy), incl. crop+resize"]
    for name, ms in costs.items():
        lines.append(f"| {name} | {ms:.3f} | {ms / numpy_ms:.1f}x |")
    lines += ["", f"Whole rollouts ({steps} steps, random controller, same run):", "",
              "| what | env steps/s |", "|---|---:|"]
    for name, rate in rates.items():
        lines.append(f"| {name} | {rate:.0f} |")
    lines.append(f"| stock env + `tf.function` agent, 1 process (baseline) | {baseline:.0f} |")
    lines.append(f"| stock env + `tf.function` agent, {workers} processes (baseline) | {baseline_n:.0f} |")
    eph_ours = rates[f"fast env + NumPy agent, {workers} processes"] / 1000 * 3600
    eph_base = baseline_n / 1000 * 3600
    lines += ["", f"- Rollout step / fast env step alone: **{fast_env / ours:.2f}x** the time "
                  f"(goal ≤ 1.25x).",
              f"- Evolution throughput on {workers} cores, 1000-step episodes: **{eph_ours:.0f} episodes/hour** "
              f"vs {eph_base:.0f} for stock env + `tf.function` agent ({workers} processes, measured): "
              f"**{eph_ours / eph_base:.1f}x** (goal ≥ 5x).",
              f"- Agent step: **{numpy_ms:.3f} ms** for one env (goal ≤ 0.5 ms); batched, "
              + ", ".join(f"{costs[f'this project (NumPy), batch of {n} envs, per env']:.3f} ms per env for {n}"
                          for n in BATCHES) + ".", ""]
    floor_ratio = (1000 / fast_env + floor["matmuls_ms"]) / (1000 / fast_env)
    lines += ["### How far these can go on this CPU", "",
              f"- One agent step is {floor['macs'] / 1e6:.1f} M multiply-adds, {2 * floor['macs'] / 1e6:.0f} MFLOP "
              f"(V's convolutions {sum(m * k * n for m, k, n in AGENT_MATMULS[:4]) / floor['macs']:.0%}).",
              f"- Single-core float32 GEMM peak, measured: **{floor['peak_gflops']:.0f} GFLOP/s**; "
              f"the step's FLOPs at that rate: {2 * floor['macs'] / floor['peak_gflops'] / 1e6:.3f} ms.",
              f"- The step's matrix products alone, on ready inputs: **{floor['matmuls_ms']:.3f} ms** "
              f"({floor['matmuls_ms'] / numpy_ms:.0%} of the whole NumPy step).",
              f"- So even an agent that were nothing but its products would make a rollout step "
              f"**{floor_ratio:.2f}x** the fast env step alone.",
              f"- {workers} processes doing nothing but GEMM reach **{scaling:.2f}x** one process's rate "
              f"(an upper bound on what {workers} rollout workers can gain over one).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args().quick))
