"""Issue 21: before any cell starts, every pretrained weight of a grid can be had, or the run stops at once.

No network is used here (the hubs are offline or the probe is replaced), which is the case the check is for.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from helpers import run_cli

TINY = "test_resnet.r160_in1k"  # a timm test model with hub weights: small enough to save in a fake cache


@pytest.fixture
def empty_caches(tmp_path, monkeypatch) -> Path:
    """Empty Hugging Face and torch hub caches, hubs offline (HF_HUB_OFFLINE=1); returns the HF hub folder."""
    from huggingface_hub import constants

    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))  # read at its import: patched, not the variable
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("RSBENCH_CACHE", str(tmp_path / "cache"))
    return hub


def fill_hf_cache(hub: Path, repo: str, files: dict[str, bytes]) -> None:
    """The layout huggingface_hub reads offline: refs/main -> a commit, snapshots/<commit>/<file>."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)


def tiny_timm_weights(hub: Path) -> dict:
    """Save test_resnet's weights (random, seed 0) where timm's hub lookup finds them; returns the state dict."""
    import timm
    import torch
    from safetensors.torch import save

    torch.manual_seed(0)
    sd = timm.create_model(TINY, pretrained=False).state_dict()
    fill_hf_cache(hub, f"timm/{TINY}", {"model.safetensors": save({k: v.contiguous() for k, v in sd.items()})})
    return sd


def cell_folders(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_dir()] if out.exists() else []


def test_paper_grid_offline_fails_in_one_line_per_missing_weight(empty_caches, tiny_synthetic, tmp_path, capsys):
    import timm  # noqa: F401 - importing torch and timm (what a cell needs anyway) is not what is timed

    from rsbench.methods.registry import list_methods

    list_methods()
    out = tmp_path / "out"
    t0 = time.perf_counter()
    code, _, err = run_cli(["run", "--methods", "vsepp,clip,msa", "--dataset", "synthetic", "--data-root",
                            str(tiny_synthetic), "--preset", "paper", "--seeds", "0,1", "--out", str(out)], capsys)
    wall = time.perf_counter() - t0
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[0] == "error: 4 pretrained weight(s) cannot be had on this machine; no cell was started:"
    why = f"not in the Hugging Face cache {empty_caches} and offline (HF_HUB_OFFLINE=1)"
    fix = "fix: --set {m}.backbone_weights=FILE or --set {m}.pretrained=false"
    assert lines[1:] == [
        f"  vsepp (2 cells: synthetic): timm weights resnet152.a1h_in1k: {why}; {fix.format(m='vsepp')}",
        f"  clip (2 cells: synthetic): timm weights resnet50.a1_in1k: {why}; {fix.format(m='clip')}",
        f"  msa (2 cells: synthetic): timm weights resnet50.tv_in1k: {why}; {fix.format(m='msa')}",
        (f"  msa (2 cells: synthetic): transformers model bert-base-uncased: {why}; "
         "fix: --set msa.text_model=FOLDER or --set msa.text_model=minilm"),
    ]  # clip's text model is the packaged MiniLM: available, not listed
    assert "Traceback" not in err and cell_folders(out) == []
    assert wall < 5, f"{wall:.1f} s"


def test_paper_grid_with_pretrained_false_runs(empty_caches, tiny_synthetic, tmp_path, monkeypatch, capsys):
    from rsbench.config.resolve import resolve_config
    from rsbench.engine.grid import Grid
    from rsbench.engine.preflight import check_weights
    from rsbench.methods.components import weights as w

    # the grid of the test above, without its pretrained weights: nothing is missing, the network is not asked
    monkeypatch.setattr(w, "reachable", lambda urls: pytest.fail(f"probed {urls}"))
    over = {"pretrained": False, "msa.text_model": "minilm"}
    cfgs = {(m, "synthetic", s): resolve_config(m, "synthetic", s, "paper", overrides=over)
            for m in ("vsepp", "clip", "msa") for s in (0, 1)}
    check_weights(Grid(["vsepp", "clip", "msa"], ["synthetic"], [0, 1], cfgs, tmp_path / "unused"))
    # and a paper-preset cell runs offline (resnet18 for the paper's resnet152 only to keep the test short)
    out = tmp_path / "out"
    code, _, err = run_cli(["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(tiny_synthetic),
                            "--preset", "paper", "--set", "pretrained=false", "--set", "backbone=resnet18",
                            "--epochs", "0", "--set", "train.image_size=32", "--set", "train.resize=36",
                            "--out", str(out)], capsys)
    assert code == 0, err
    run = json.loads((out / "synthetic/vsepp/seed0/run.json").read_text())
    assert run["weights"]["cnn"]["source"] == "random init"


def test_weight_in_a_filled_cache_counts_and_loads_offline(empty_caches, tiny_synthetic, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    sd = tiny_timm_weights(empty_caches)
    out = tmp_path / "out"
    code, _, err = run_cli(["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(tiny_synthetic),
                            "--preset", "paper", "--set", f"backbone={TINY}", "--epochs", "0", "--set",
                            "train.image_size=32", "--set", "train.resize=36", "--out", str(out)], capsys)
    assert code == 0, err
    cell = out / "synthetic/vsepp/seed0"
    rec = json.loads((cell / "run.json").read_text())["weights"]["cnn"]
    assert rec["source"] == "timm" and rec["tag"] == TINY and rec["hf_hub_id"] == f"timm/{TINY}"
    best = load_file(str(next(cell.rglob("*.safetensors"))))
    key = next(k for k in best if k.endswith("conv1.weight") and "cnn" in k)
    own = key.split("cnn.", 1)[1]
    assert torch.equal(best[key], sd[own])  # the cached file is what the backbone holds


def test_unreachable_hub_with_everything_cached_goes_offline(empty_caches, monkeypatch, capsys):
    """The hub is unreachable (probe replaced) but the weight is cached: no error, the hubs go offline."""
    from huggingface_hub import constants

    from rsbench.config.resolve import resolve_config
    from rsbench.engine.grid import Grid
    from rsbench.engine.preflight import check_weights
    from rsbench.methods.components import weights as w

    tiny_timm_weights(empty_caches)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    probed: list[list[str]] = []
    monkeypatch.setattr(w, "reachable", lambda urls: probed.append(sorted(urls)) or {w.host_of(u): False for u in urls})
    cfg = resolve_config("vsepp", "synthetic", 0, "paper", overrides={"backbone": TINY})
    grid = Grid(methods=["vsepp"], datasets=["synthetic"], seeds=[0], cfgs={("vsepp", "synthetic", 0): cfg},
                out=Path("/nonexistent-out"))
    check_weights(grid)
    assert probed == [[f"{constants.ENDPOINT}/timm/{TINY}"]]
    assert constants.HF_HUB_OFFLINE is True and os.environ["HF_HUB_OFFLINE"] == "1"
    assert "unreachable; every weight is cached: the hubs are offline for this run" in capsys.readouterr().err
    # not cached and unreachable: a missing weight, no offline switch needed
    cfg2 = resolve_config("vsepp", "synthetic", 0, "paper", overrides={"backbone": "resnet18.tv_in1k"})
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(Exception, match=r"timm weights resnet18.tv_in1k: not in the Hugging Face cache .* "
                                        r"and huggingface.co unreachable"):
        check_weights(Grid(["vsepp"], ["synthetic"], [0], {("vsepp", "synthetic", 0): cfg2}, Path("/nonexistent-out")))


def test_method_declarations(tmp_path):
    """What each method declares: the packaged MiniLM is local; a user's path is checked; off -> nothing."""
    from rsbench.config.resolve import resolve_config
    from rsbench.methods.components.hf_text import minilm_dir
    from rsbench.methods.registry import get_method_spec

    def needs(method: str, **over):
        cfg = resolve_config(method, "synthetic", 0, "paper", overrides=over)
        return get_method_spec(method).cls.required_weights(cfg.model)

    clip = needs("clip")
    assert [n.what for n in clip if n.local] == ["text model minilm"] and clip[1].where == str(minilm_dir())
    assert needs("vsepp", pretrained=False) == [] and needs("scan", region_features=str(tmp_path)) == []
    f = tmp_path / "w.pth"
    [n] = needs("vsepp", backbone_weights=str(f))
    assert not n.local and n.url == ""
    f.write_bytes(b"x")
    assert needs("vsepp", backbone_weights=str(f))[0].local
    [o] = needs("openclip", pretrained="openai")
    assert o.what == "open_clip weights ViT-B-32 'openai'" and o.fixes == ("checkpoint=FILE pretrained=",)


@pytest.mark.parametrize("name", ["resnet152", "resnet18.tv_in1k", TINY, "vit_small_patch16_224"])
def test_timm_source_is_the_one_timm_uses(name, monkeypatch):
    """Our reading of a pretrained_cfg picks the source timm's builder picks (guards against timm changes)."""
    from timm.models import get_pretrained_cfg
    from timm.models._builder import _resolve_pretrained_source

    from rsbench.methods.components.weights import timm_weight

    load_from, loc = _resolve_pretrained_source(get_pretrained_cfg(name).to_dict())
    need = timm_weight(name, ())
    if load_from == "hf-hub":
        assert need.hub and need.url.endswith("/" + (loc[0] if isinstance(loc, tuple) else loc))
    else:
        assert load_from == "url" and need.url == loc and not need.hub


def test_reachability_probe_is_bounded():
    """A host that answers (even 404) is reachable; one that accepts and never answers costs the timeout."""
    from rsbench.methods.components.weights import reachable

    class NotFound(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        answers = f"http://127.0.0.1:{server.server_port}/x"
        hangs = f"http://127.0.0.1:{silent.getsockname()[1]}/y"
        t0 = time.perf_counter()
        got = reachable([answers, hangs], timeout=0.5)
        assert time.perf_counter() - t0 < 2.0
        assert got == {f"http://127.0.0.1:{server.server_port}": True, f"http://127.0.0.1:{silent.getsockname()[1]}": False}
    finally:
        server.shutdown()
        silent.close()


def test_complete_cells_need_no_weights(monkeypatch, tmp_path):
    """A complete cell is skipped by the run, so its weights are not asked for (unless --overwrite)."""
    import rsbench.results.cell as cellmod
    from rsbench.config.resolve import resolve_config
    from rsbench.engine.grid import Grid
    from rsbench.engine.preflight import cells_to_run

    monkeypatch.setattr(cellmod, "is_complete", lambda cell: Path(cell).name == "seed0")
    cfgs = {("vsepp", "synthetic", s): resolve_config("vsepp", "synthetic", s, "paper") for s in (0, 1)}
    grid = Grid(["vsepp"], ["synthetic"], [0, 1], cfgs, tmp_path)
    assert list(cells_to_run(grid)) == [("vsepp", "synthetic", 1)]
    grid.overwrite = True
    assert list(cells_to_run(grid)) == [("vsepp", "synthetic", 0), ("vsepp", "synthetic", 1)]
