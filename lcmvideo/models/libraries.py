"""How lcmvideo sets up the model libraries: offline, quiet unless asked."""

import os


def configure(verbose: bool = False):
    # Offline by construction: nothing we load may reach a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "info" if verbose else "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "error")
    import diffusers
    import transformers

    level = 20 if verbose else 40
    diffusers.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore", module=r"(diffusers|transformers|peft|torch)\b")
