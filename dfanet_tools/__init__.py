"""The tools above the library and the node: the ``dfanet`` command and the benchmarks.

``dfanet_model`` (PyTorch only) and ``dfanet_ros`` (the node) never import this package.
"""
