"""Flax NNX task models and the registry used by configs.

``MODELS`` maps a name to ``(config_fn, model_cls)``; ``build_model`` turns a
name, a config and ``nnx.Rngs`` into a model. A typo in a name fails with the
list of names.
"""
