"""The Dream page's frame rate: how fast dream frames are made, and how fast they play.

    python -m bench.bench_dream [--quick]

A dream frame costs one M step (NumPy LSTM + mixture sampling), C's action when C drives, V's decoder
(Keras, ``tf.function``) and its share of the animated GIF the page plays. Weights are random at the paper's
sizes (z = 32, h = 256, 5 mixtures): timing does not depend on their values.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bench.common import machine_info, median_time  # noqa: E402


def _world_model():
    import keras

    from core.models.agent import extract_weights
    from core.models.controller import Controller
    from core.models.mdnrnn import MDNRNN
    from core.models.vae import ConvVAE
    from core.pipeline.dream import WorldModel
    keras.utils.set_random_seed(0)
    vae, rnn = ConvVAE(32), MDNRNN(32, 256, 5)
    controller = Controller(32, 256, np.random.default_rng(0).normal(scale=0.1, size=867))
    return WorldModel(vae, extract_weights(vae, rnn), controller, "random weights")


def _fresh_dream(model, seed: int = 0):
    from core.pipeline.dream import Dream
    dream = Dream(model, tau=1.0, seed=seed)
    dream.reset_random()
    return dream


def step_costs(model, repeats: int) -> dict[str, float]:
    """Milliseconds per frame of each part of a dream."""
    from core.pipeline.dream import KEY_ACTIONS, dream_captions, gif, upscale, with_captions
    dream = _fresh_dream(model)
    costs = {
        "M step + sampling (NumPy), user drives": median_time(lambda: dream.step(KEY_ACTIONS["gas"]), repeats),
        "M step + sampling + C action, controller drives": median_time(
            lambda: dream.step(dream.controller_action()), repeats),
    }
    z1 = np.zeros((1, 32), np.float32)
    z150 = np.random.default_rng(1).standard_normal((150, 32)).astype(np.float32)
    costs["V decode, one frame a call"] = median_time(lambda: model.decode(z1), repeats)
    costs["V decode, 150 frames a call (per frame)"] = median_time(lambda: model.decode(z150),
                                                                   max(3, repeats // 50)) / 150
    frames = model.decode(z150)
    chunk = _fresh_dream(model)
    chunk.run(len(frames) - 1, "gas", stop_at_end=False)
    captions = dream_captions(chunk)
    costs["GIF: 4x upscale + caption + encode (per frame)"] = median_time(
        lambda: gif(with_captions(upscale(frames), captions)), max(3, repeats // 100)) / len(frames)
    return {k: v * 1000 for k, v in costs.items()}


def page_frame_rates(model, repeats: int) -> dict[str, float]:
    """Frames a second the page makes for its three ways to drive, everything included
    (dream steps, decoding, GIF encoding)."""
    from core.pipeline.dream import dream_captions, gif, upscale, with_captions

    def key_press(chunk: int = 10):
        dream = _fresh_dream(model)
        t0 = dream.t
        dream.run(chunk, "left", stop_at_end=False)
        gif(with_captions(upscale(dream.frames(t0)), dream_captions(dream, t0)))
        return chunk + 1

    def controller(steps: int = 150):
        dream = _fresh_dream(model)
        dream.run(steps, "controller", stop_at_end=False)
        gif(with_captions(upscale(dream.frames()), dream_captions(dream)))
        return steps + 1

    def frame_by_frame(steps: int = 100):
        dream = _fresh_dream(model)
        for _ in range(steps):
            dream.step(dream.controller_action())
            model.decode(dream.z[None])
        return steps

    rates = {}
    for name, fn in (("a key press: 10 steps, decoded and encoded as one GIF", key_press),
                     ("the controller: 150 steps, decoded and encoded as one GIF", controller),
                     ("streaming: one M step + one V decode at a time (no GIF)", frame_by_frame)):
        n = fn()  # warm up
        seconds = median_time(fn, max(3, repeats // 100), warmup=1)
        rates[name] = n / seconds
    return rates


def run(quick: bool = False) -> str:
    from core.pipeline.dream import DREAM_FPS
    repeats = 100 if quick else 500
    model = _world_model()
    costs = step_costs(model, repeats)
    rates = page_frame_rates(model, repeats)
    lines = ["## Dream frame rate", "", machine_info(), "",
             f"The Dream page plays dreams as animated GIFs at {DREAM_FPS} frames a second (20 and 50 can be "
             "chosen). Below: what one frame costs to make, and how many frames a second each way of "
             "driving makes, everything included. Paper sizes, random weights.", "",
             "| part of a dream frame | ms a frame |", "|---|---:|"]
    for name, ms in costs.items():
        lines.append(f"| {name} | {ms:.3f} |")
    lines += ["", "| way of dreaming | frames made a second | x playback rate |", "|---|---:|---:|"]
    for name, rate in rates.items():
        lines.append(f"| {name} | {rate:.0f} | {rate / DREAM_FPS:.1f}x |")
    slowest = min(rates.values())
    lines += ["", f"- Slowest way: **{slowest:.0f} frames/s**, {slowest / DREAM_FPS:.1f}x the {DREAM_FPS} "
                  f"frames/s the page plays at (goal ≥ 20 frames/s).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args().quick))
