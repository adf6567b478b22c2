"""Training, evaluation, prediction, export and reporting for medurwkv.

Submodules (``metrics``, ``visualize``, ``report``, ...) are imported on demand, so ``import medurwkv.engine``
stays cheap and does not pull in torch or matplotlib.
"""
