"""perpdex bench: the benchmark suite (`perpdex bench`, docs/performance.md) and its harnesses.

Installed, this package is perpdex.bench (the extra `bench` brings what it needs); inside a
checkout `import bench` and `python -m bench.X` name the same modules (engine/_checkout.py).
"""
if __name__ == "bench":  # the checkout's folder, found by its short name
    from perpdex.engine._checkout import alias
    alias("bench", "perpdex.bench")
