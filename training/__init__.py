"""Cross-validated ResNet-50 training, evaluation and the preprocessing shared with the worker.

The worker imports :mod:`training.preprocessing`, :mod:`training.manifest` and
:mod:`training.model`; everything else here is only needed to train or evaluate.
"""
