"""What a run leaves on disk, and how it is read back.

    checkpoint.py   Orbax checkpoints of a run (last state for resuming, best parameters), the
                    run lock, checkpoints written under earlier layer names restored under today's
    store.py        the content-addressed store of the frozen encoders runs were trained with
    standalone.py   self-contained copies of a finished run, and its encoders on their own
"""
from emojax import lazy_exports

_EXPORTS = {"RunCheckpoints": "checkpoint", "CheckpointError": "checkpoint", "finished_run": "checkpoint",
            "store_encoder": "store", "resolve_run_encoder": "store", "create_standalone": "standalone",
            "load_standalone": "standalone"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
