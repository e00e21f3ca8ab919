"""Speed and memory ratios of minilora against its peers and the arithmetic limits.

``make bench`` (``python -m benchmarks.run``) runs every group and writes ``results.md``.
"""
