"""What the pipeline keeps on disk: artifacts (atomic writes, ``meta.json``, locks, histories), episode
files (``dataset``), training checkpoints that survive a kill at any moment (``checkpoints``), the
weights cache that loads a world model without Keras (``weights_cache``) and evaluation reports
(``reports``). Everything is arrays and JSON: loading never runs code from a folder someone handed you.
"""
