"""The three networks of the paper and the agent that drives with them.

``vae`` is V (the convolutional VAE, frame <-> z, with its losses), ``mdnrnn`` is M (the LSTM with a
mixture-density head that predicts the next z, reward and episode end, with the MDN loss), ``controller``
is C (one linear layer on [z, h], a flat parameter vector for CMA-ES), and ``agent`` runs all three in
NumPy, one frame at a time, fast enough for rollouts and the live race. Training each model is a stage
of ``core.pipeline``, not a method here.
"""
