"""The agent's step (V encode + M step + C act) five ways and batched, and whole-rollout throughput: evolution's
episodes an hour on this machine's workers against stock env + `tf.function` agent, measured in one run.

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

from bench.common import machine_info  # noqa: E402
from bench.common import median_time as common_median_time  # noqa: E402


def median_time(fn, repeats: int, warmup: int = 3) -> float:
    """``bench.common.median_time`` in CPU time: a call preempted by other work on the machine counts only
    the time it ran, so the figures of a loaded machine stay close to those of a quiet one."""
    return common_median_time(fn, repeats, warmup, time.process_time)


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

    from core.envs.env import preprocess
    from core.models.agent import Agent, encode_mu, extract_weights, lstm_step
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

    def numpy_step():
        z = encode_mu(weights, preprocess(obs)[None])
        lstm_step(weights, np.concatenate([z, controller.act(z, h)], 1), h, c)

    agent = Agent(weights, controller.get_params())
    costs = {
        "Keras `predict`, excl. crop+resize": median_time(lambda: keras_step(lambda m, x: m.predict(x, verbose=0)),
                                                          max(3, repeats // 20)),
        "Keras eager `model(x)`, excl. crop+resize": median_time(lambda: keras_step(lambda m, x: m(x)),
                                                                 max(5, repeats // 5)),
        "`tf.function`, excl. crop+resize": median_time(tf_function_step, repeats),
        NUMPY: median_time(numpy_step, repeats),
        OURS: median_time(lambda: agent.act(obs), repeats),
        "crop+resize alone (OpenCV `INTER_AREA`)": median_time(lambda: preprocess(obs), repeats),
    }
    for n in BATCHES:
        frames = np.random.default_rng(3).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
        hn = np.zeros((n, 256), np.float32)

        def numpy_batch():
            z = encode_mu(weights, frames)
            lstm_step(weights, np.concatenate([z, controller.act(z, hn)], 1), hn, hn)

        batch = Agent(weights, controller.get_params(), n_envs=n)
        costs[f"NumPy mirror, batch of {n} envs, per env, excl. crop+resize"] = median_time(
            numpy_batch, max(10, repeats // n)) / n
        costs[f"ONNX Runtime step graph, batch of {n} envs, per env, excl. crop+resize"] = median_time(
            lambda: batch.act_frames(frames), max(10, repeats // n)) / n
    return {k: v * 1000 for k, v in costs.items()}


NUMPY = "NumPy mirror (`core.models.agent.encode_mu`, `lstm_step`), incl. crop+resize"
OURS = "this project: ONNX Runtime step graph (`core.models.step_graph`), incl. crop+resize"
BATCHES = (8, 32)  # envs stepped together by one batched agent

# (rows, inner, cols) of every matrix product in one agent step at the paper's sizes, one env:
# V's four 4x4 stride-2 convolutions as im2col products, V's mu head, M's LSTM step, C.
AGENT_MATMULS = (
    (31 * 31, 16 * 3, 32), (14 * 14, 16 * 32, 64), (6 * 6, 16 * 64, 128), (2 * 2, 16 * 128, 256),
    (1, 1024, 32), (1, 32 + 3, 1024), (1, 256, 1024), (1, 32, 3), (1, 256, 3),
)


def agent_floor(repeats: int) -> dict[str, float]:
    """What the agent step's arithmetic and weight reads alone cost on one core of this machine.

    ``macs``: multiply-adds of one step; ``weight_bytes``: float32 weights read in one step (every layer's
    kernel once, 4.1 MB: more than this CPU's 2 MB L2, so a step streams them from L3 or memory);
    ``peak_gflops``: single-core float32 GEMM rate on a large product; ``read_gbps``: single-core rate
    of reading a 4 MB float32 matrix once (a matrix-vector product, as M's LSTM step is); ``matmuls_ms``:
    the agent's own products timed alone on ready, contiguous inputs (no im2col, bias, activations or
    Python), which is about the least any float32 implementation of these layers pays here.
    """
    rng = np.random.default_rng(0)
    macs = float(sum(m * k * n for m, k, n in AGENT_MATMULS))
    weight_bytes = float(sum(4 * k * n for _, k, n in AGENT_MATMULS))
    big_a = rng.random((768, 768), dtype=np.float32)
    big_b = rng.random((768, 768), dtype=np.float32)
    peak = 2 * 768 ** 3 / median_time(lambda: big_a @ big_b, max(20, repeats // 10)) / 1e9
    matrices = [rng.random((1024, 1024), dtype=np.float32) for _ in range(8)]  # 32 MB: past L2 and most of L3
    vector = rng.random((1, 1024), dtype=np.float32)
    turn = iter(range(10 ** 9))
    read = median_time(lambda: vector @ matrices[next(turn) % len(matrices)], max(40, repeats // 5))
    pairs = [(rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32))
             for m, k, n in AGENT_MATMULS]

    def products():
        for a, b in pairs:
            a @ b

    return {"macs": macs, "weight_bytes": weight_bytes, "peak_gflops": peak, "read_gbps": 4 * 1024 ** 2 / read / 1e9,
            "matmuls_ms": median_time(products, repeats) * 1000}


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


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rates(steps: int, start: tuple[float, float]) -> tuple[float, float]:
    """Steps a second of wall clock and a second of this process's CPU time since ``start`` (``_clocks()``).
    The second counts only the time this process ran, so it hardly moves with the machine's load."""
    wall, cpu = _clocks()
    return steps / (wall - start[0]), steps / (cpu - start[1])


def rollout_throughput(steps: int) -> dict[str, tuple[float, float]]:
    """Env steps a second (of wall clock, of CPU time) of whole rollouts (env + the project's agent) and of the
    env alone on the same actions, fast env and stock env, one process."""
    from core.envs.env import make_env
    from core.models.agent import Agent, extract_weights
    from core.pipeline.rollout import RolloutSettings, rollout
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
        start = _clocks()
        for _ in range(steps):
            actions.append(agent.act(obs))
            obs, *_ = env.step(actions[-1])
        out[f"{kind} env + the project's agent, 1 process"] = _rates(steps, start)
        env.reset(seed=1)  # the same track and the same actions: the env alone does the same work
        start = _clocks()
        for a in actions:
            env.step(a)
        out[f"{kind} env alone (same actions), 1 process"] = _rates(steps, start)
        env.close()
    return out


def evolution_rate(steps: int, workers: int, episodes: int) -> tuple[float, float]:
    """Env steps a second of the project's rollouts as an evolution runs them: ``episodes`` episodes of at most
    ``steps`` steps on the fast env (the default of collect and evolve) through ``RolloutPool`` with ``workers``
    processes. Returns (steps a second, 1-minute load average at the end)."""
    from core.models.agent import extract_weights
    from core.pipeline.rollout import RolloutPool, RolloutSettings
    vae, rnn = _models()
    weights = extract_weights(vae, rnn)
    params = np.random.default_rng(0).normal(scale=0.1, size=867).astype(np.float32)
    with RolloutPool(weights, RolloutSettings("fast", steps), workers) as pool:
        list(pool.map([(params, s) for s in range(workers)]))  # start the workers, build their sessions
        t = time.perf_counter()
        results = list(pool.map([(params, s) for s in range(episodes)]))
        rate = sum(r.steps for r in results) / (time.perf_counter() - t)
    return rate, os.getloadavg()[0]


def tf_function_rollout_rate(steps: int, start_at: float = 0.0) -> tuple[float, float]:
    """Steps a second (of wall clock, of CPU time) of the baseline: stock env + a `tf.function` agent, one
    process. With ``start_at`` (a ``time.time()``), the timed loop waits for that moment, so several processes
    run it together."""
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
    start = _clocks()
    for _ in range(steps):
        z = encode(preprocess(obs)[None]).numpy()
        a = controller.act(z, h.numpy())
        h, c = step(tf.constant(np.concatenate([z, a], 1)), h, c)
        obs, *_ = env.step(a[0])
    rate = _rates(steps, start)
    env.close()
    return rate


def tf_function_rollout_rate_parallel(steps: int, workers: int) -> tuple[float, float]:
    """Total steps a second of ``workers`` baseline processes running at the same time, and the 1-minute
    load average at the end."""
    from concurrent.futures import ProcessPoolExecutor

    from core.envs.env import spawn_context
    start_at = time.time() + 40.0  # after every process has imported TensorFlow and traced its functions
    with ProcessPoolExecutor(workers, mp_context=spawn_context()) as pool:
        rates = list(pool.map(tf_function_rollout_rate, [steps] * workers, [start_at] * workers))
    return float(sum(wall for wall, _ in rates)), os.getloadavg()[0]


def run(quick: bool = False) -> str:
    repeats = 100 if quick else 400
    steps = 200 if quick else 1000
    workers = max(1, os.cpu_count() or 1)
    episodes = 2 * workers if quick else 6 * workers
    costs = agent_step_costs(repeats)
    floor = agent_floor(repeats)
    scaling = parallel_compute_scaling(workers) if workers > 1 else 1.0
    rates = rollout_throughput(steps)
    baseline = tf_function_rollout_rate(steps)  # (wall, CPU) steps a second
    # ours, the baseline, ours again: a change of load during the run shows as a gap between the two of ours
    ours_before, load_before = evolution_rate(steps, workers, episodes)
    baseline_n, load_baseline = tf_function_rollout_rate_parallel(steps, workers)
    ours_after, load_after = evolution_rate(steps, workers, episodes)
    fast_env = rates["fast env alone (same actions), 1 process"][0]
    ours = rates["fast env + the project's agent, 1 process"][0]
    rates["stock env + `tf.function` agent, 1 process (baseline)"] = baseline
    per_cpu = rates["fast env + the project's agent, 1 process"][1] / baseline[1]
    numpy_ms, ours_ms = costs[NUMPY], costs[OURS]
    import onnxruntime
    lines = ["## Agent step and rollouts", "", f"{machine_info()}, onnxruntime {onnxruntime.__version__}", "",
             "Agent step = crop/resize + V encode + C act + one M (LSTM) step, one env, one core "
             "(BLAS, OpenCV and ONNX Runtime on one thread each, as in a rollout worker); median CPU time of "
             "the process per call, which a busy machine hardly changes.", "",
             "| way | ms a step | vs NumPy mirror |", "|---|---:|---:|"]
    for name, ms in costs.items():
        lines.append(f"| {name} | {ms:.3f} | {ms / numpy_ms:.2f}x |")
    lines += ["", f"Whole rollouts ({steps} steps, random controller, same run). Steps a second of CPU time count "
                  "only the time the process ran, so they hardly move with the load of the machine:", "",
              "| what | env steps/s | env steps per CPU-second | load average (1 min) after |",
              "|---|---:|---:|---:|"]
    for name, (wall, cpu) in rates.items():
        lines.append(f"| {name} | {wall:.0f} | {cpu:.0f} | |")
    lines.append(f"| fast env + the project's agent, `RolloutPool` of {workers} processes, {episodes} episodes "
                 f"(1st) | {ours_before:.0f} | | {load_before:.1f} |")
    lines.append(f"| stock env + `tf.function` agent, {workers} processes (baseline) | {baseline_n:.0f} | | "
                 f"{load_baseline:.1f} |")
    lines.append(f"| fast env + the project's agent, `RolloutPool` of {workers} processes, {episodes} episodes "
                 f"(2nd) | {ours_after:.0f} | | {load_after:.1f} |")
    eph_ours = (ours_before + ours_after) / 2 / 1000 * 3600
    eph_base = baseline_n / 1000 * 3600
    lines += ["", f"- Evolution throughput on {workers} workers, 1000-step episodes: **{eph_ours:.0f} episodes/hour** "
                  f"(mean of the two runs of ours) vs **{eph_base:.0f}** for stock env + `tf.function` agent "
                  f"({workers} processes), measured in the same run: **{eph_ours / eph_base:.1f}x** (goal ≥ 5x; "
                  f"load average {load_before:.1f}, {load_baseline:.1f}, {load_after:.1f} after each).",
              f"- The same per second of CPU time, 1 process each (what a free core would give): "
              f"**{per_cpu:.1f}x**.",
              f"- Rollout step / fast env step alone, 1 process: **{fast_env / ours:.2f}x** the time "
              f"(goal ≤ 1.25x).",
              f"- Agent step: **{ours_ms:.3f} ms** for one env (goal ≤ 0.5 ms), from {numpy_ms:.3f} ms for the NumPy "
              "mirror; batched, "
              + ", ".join(f"{costs[f'ONNX Runtime step graph, batch of {n} envs, per env, excl. crop+resize']:.3f} ms "
                          f"per env for {n}" for n in BATCHES) + " (before crop+resize).", ""]
    flop_ms = 2 * floor["macs"] / floor["peak_gflops"] / 1e6
    read_ms = floor["weight_bytes"] / floor["read_gbps"] / 1e6
    floor_ratio = (1000 / fast_env + max(flop_ms, read_ms)) / (1000 / fast_env)
    lines += ["### How far these can go on this CPU", "",
              f"- One agent step is {floor['macs'] / 1e6:.1f} M multiply-adds, {2 * floor['macs'] / 1e6:.0f} MFLOP "
              f"(V's convolutions {sum(m * k * n for m, k, n in AGENT_MATMULS[:4]) / floor['macs']:.0%}), and "
              f"reads {floor['weight_bytes'] / 2 ** 20:.1f} MiB of float32 weights (V's last convolution "
              f"{4 * 16 * 128 * 256 / floor['weight_bytes']:.0%}, M's LSTM "
              f"{4 * (35 + 256) * 1024 / floor['weight_bytes']:.0%}).",
              f"- Single-core float32 GEMM peak, measured: **{floor['peak_gflops']:.0f} GFLOP/s**; "
              f"the step's FLOPs at that rate: {flop_ms:.3f} ms.",
              f"- Single-core read rate of a 4 MiB float32 matrix (matrix-vector product), measured: "
              f"**{floor['read_gbps']:.0f} GB/s**; the step's weights at that rate: {read_ms:.3f} ms.",
              f"- The step's matrix products alone, on ready inputs (NumPy, im2col form): "
              f"**{floor['matmuls_ms']:.3f} ms**; the whole ONNX Runtime step: {ours_ms:.3f} ms, "
              f"{ours_ms / max(flop_ms, read_ms):.1f}x the larger of the two floors above.",
              f"- An agent at that floor would make a rollout step **{floor_ratio:.2f}x** the fast env step alone; "
              f"the ONNX Runtime step makes it {(1000 / fast_env + ours_ms) / (1000 / fast_env):.2f}x.",
              f"- {workers} processes doing nothing but GEMM reach **{scaling:.2f}x** one process's rate "
              f"(an upper bound on what {workers} rollout workers can gain over one).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args().quick))
