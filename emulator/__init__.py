"""precopy: an emulator of live-migration memory pre-copy.

`emulator.migrate(scenario)` runs a whole migration on this machine and returns its
Report (see emulator.running.children); the submodules hold the parts.
"""


def __getattr__(name):
    # imported on first use: the engine loads numba, zmq and the kernels
    if name == "migrate":
        from emulator.running.children import migrate

        return migrate
    raise AttributeError(f"module 'emulator' has no attribute {name!r}")
