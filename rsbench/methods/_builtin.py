"""Import every built-in method module so its @register_method runs.

A module whose optional dependency is missing is skipped silently here and reported when used.
"""

import importlib

for _mod in ("vsepp", "amfmn", "msa", "clip", "openclip", "scan", "galr", "swan", "hf_clip", "zoo",
             "harma", "pe_rsitr"):
    try:
        importlib.import_module(f"{__package__}.{_mod}")
    except ModuleNotFoundError as e:  # a method file not written yet, or a missing optional package
        if e.name and (e.name.endswith(f".{_mod}") or e.name == _mod):
            continue
        raise
