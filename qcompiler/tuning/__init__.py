"""autoquant: each layer's scheme chosen by measuring the candidates on their real shapes (``autoquant``), the
timing and errors (``measure``) and the choice, a pure function of them (``choose``); the result is a Plan
(``qcompiler/plan.py``) that a Recipe carries.

``qc.autoquant`` is the function; this package re-exports nothing, so its modules stay reachable by name.
"""
