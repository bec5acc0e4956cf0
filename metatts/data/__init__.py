"""Speech data: corpora loaders, feature cache, synthetic corpus, sampler.

Import the submodules directly (``metatts.data.corpora``,
``metatts.data.features``, ...); this package does not import them so that
``import metatts.data`` stays light.
"""
