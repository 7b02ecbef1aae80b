"""The agent's step (V encode, C act, one M LSTM step) as one ONNX Runtime graph on one CPU thread.

Built in memory from the same float32 arrays as the NumPy mirror (``core.models.agent``), so nothing on disk
changes and nothing is unpickled: the graph is made with ``onnx.helper`` at load time and handed to ONNX
Runtime as bytes. ONNX Runtime's convolution kernels (MLAS) take V's encoder from 0.63-0.67 ms to 0.33 ms a
frame on this project's 2-core benchmark machine, and the whole step, crop and resize included, from 0.81-0.84
to 0.45 ms (BENCHMARKS.md, "Agent step and rollouts"). The NumPy functions stay the reference the tests hold
both against, and serve the dream, which encodes in large batches.

Graph inputs: ``frames`` uint8 (N, 64, 64, 3), ``h`` and ``c`` float32 (N, hidden), C's ``c_w`` float32
(z + hidden, 3) and ``c_b`` (3,). Outputs: ``action`` float32 (N, 3) in [-1,0,0]..[1,1,1], ``z`` (N, z),
``h_new`` and ``c_new`` (N, hidden).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

ONNX_OPSET = 18  # ONNX operator set the graph is written in (Split with num_outputs needs 18)
ONNX_IR_VERSION = 8  # the file-format version: any ONNX Runtime since 1.10 reads it
CACHED_SESSIONS = 4  # sessions kept (one per set of weights): the race server holds up to a few world models


def build_step_graph(w: dict) -> bytes:
    """The serialized ONNX model of one agent step for the weights ``w`` (``core.models.agent.extract_weights``)."""
    from onnx import TensorProto, checker, helper, numpy_helper

    nodes, inits = [], []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    z_size, hidden = w["mu_w"].shape[1], w["lstm_recurrent"].shape[0]
    x = node("Cast", ["frames"], "x_float", to=TensorProto.FLOAT)
    x = node("Mul", [x, const("inv_255", np.float32(1.0 / 255.0))], "x_scaled")
    x = node("Transpose", [x], "x_nchw", perm=[0, 3, 1, 2])
    for i in range(4):
        kernel = w[f"conv{i}_w"]  # (16 c_in, c_out), rows ordered (kh, kw, c_in): see extract_weights
        c_out = kernel.shape[1]
        oihw = kernel.reshape(4, 4, -1, c_out).transpose(3, 2, 0, 1)
        x = node("Conv", [x, const(f"conv{i}_w", oihw), const(f"conv{i}_b", w[f"conv{i}_b"])], f"conv{i}",
                 kernel_shape=[4, 4], strides=[2, 2])
        x = node("Relu", [x], f"relu{i}")
    x = node("Transpose", [x], "x_nhwc", perm=[0, 2, 3, 1])  # Keras flattens channels-last
    x = node("Reshape", [x, const("flat_shape", np.array([-1, w["mu_w"].shape[0]], np.int64))], "flat")
    z = node("Gemm", [x, const("mu_w", w["mu_w"]), const("mu_b", w["mu_b"])], "z")
    # C: squash(W [z, h] + b): steer = tanh, gas = (tanh + 1) / 2, brake = clip(tanh, 0, 1)
    raw = node("Gemm", [node("Concat", [z, "h"], "zh", axis=1), "c_w", "c_b"], "c_raw")
    t = node("Tanh", [raw], "c_tanh")
    t = node("Add", [node("Mul", [t, const("squash_scale", np.float32([1.0, 0.5, 1.0]))], "c_scaled"),
                     const("squash_shift", np.float32([0.0, 0.5, 0.0]))], "c_shifted")
    action = node("Max", [t, const("action_low", np.float32([-1.0, 0.0, 0.0]))], "action")
    # M: one LSTM step on [z, action], gates i, f, c, o as Keras orders them
    gates = node("Add", [node("MatMul", [node("Concat", [z, action], "za", axis=1),
                                         const("lstm_kernel", w["lstm_kernel"])], "gates_x"),
                         node("Gemm", ["h", const("lstm_recurrent", w["lstm_recurrent"]),
                                       const("lstm_bias", w["lstm_bias"])], "gates_h")], "gates")
    nodes.append(helper.make_node("Split", [gates], ["gate_i", "gate_f", "gate_g", "gate_o"], axis=1,
                                  num_outputs=4))
    c_new = node("Add", [node("Mul", [node("Sigmoid", ["gate_f"], "f"), "c"], "f_c"),
                         node("Mul", [node("Sigmoid", ["gate_i"], "i"), node("Tanh", ["gate_g"], "g")], "i_g")],
                 "c_new")
    node("Mul", [node("Sigmoid", ["gate_o"], "o"), node("Tanh", [c_new], "tanh_c")], "h_new")

    def io(name: str, dtype: int, shape: list) -> object:
        return helper.make_tensor_value_info(name, dtype, shape)

    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "agent_step",
        [io("frames", TensorProto.UINT8, ["n", 64, 64, 3]), io("h", f32, ["n", hidden]), io("c", f32, ["n", hidden]),
         io("c_w", f32, [z_size + hidden, 3]), io("c_b", f32, [3])],
        [io("action", f32, ["n", 3]), io("z", f32, ["n", z_size]), io("h_new", f32, ["n", hidden]),
         io("c_new", f32, ["n", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = ONNX_IR_VERSION
    checker.check_model(model)
    return model.SerializeToString()


class StepSession:
    """One ONNX Runtime session of ``build_step_graph``, one intra-op thread (a rollout worker owns one core)."""

    def __init__(self, w: dict):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(build_step_graph(w), options, providers=["CPUExecutionProvider"])

    def run(self, frames: np.ndarray, h: np.ndarray, c: np.ndarray, c_w: np.ndarray,
            c_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(action, z, h_new, c_new) for uint8 (N, 64, 64, 3) frames and states (N, hidden)."""
        return tuple(self._session.run(None, {"frames": frames, "h": h, "c": c, "c_w": c_w, "c_b": c_b}))


_SESSIONS: OrderedDict[int, tuple[dict, StepSession]] = OrderedDict()
_LOCK = threading.Lock()


def step_session(w: dict) -> StepSession:
    """The session for the weights ``w``, made once (about 90 ms) and shared by every agent on them: a rollout
    makes a new agent each episode. Keyed by the dict's identity, which the entry's reference keeps unique."""
    with _LOCK:
        entry = _SESSIONS.get(id(w))
        if entry is not None and entry[0] is w:
            _SESSIONS.move_to_end(id(w))
            return entry[1]
    session = StepSession(w)
    with _LOCK:
        _SESSIONS[id(w)] = (w, session)
        while len(_SESSIONS) > CACHED_SESSIONS:
            _SESSIONS.popitem(last=False)
    return session
