"""perpdex gateway: everything between the engine and the outside world (files, sockets, CLI).

Installed, this package is perpdex.gateway; inside a checkout `import gateway` names the same
modules (engine/_checkout.py).
"""
if __name__ == "gateway":  # the checkout's folder, found by its short name
    from perpdex.engine._checkout import alias
    alias("gateway", "perpdex.gateway")
