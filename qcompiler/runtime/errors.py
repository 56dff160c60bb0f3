"""The one shape of qcompiler's argument errors: which argument, what is allowed, what came."""


def fail(arg: str, allowed: str, got: object) -> ValueError:
    """``ValueError("qcompiler: <arg> must be <allowed>; got <got>")``, to raise."""
    return ValueError(f"qcompiler: {arg} must be {allowed}; got {got!r}")
