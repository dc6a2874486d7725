"""User errors through the real `bench` executable: one line on stderr starting with 'error:', exit 2,
never a traceback. Each case is one row of docs/bad_inputs.md.

The subprocesses are started together (a few at a time) by one module fixture, so the file stays
fast on a small machine; each test then checks its own case.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakedata import make_karpathy

BENCH = str(Path(sys.executable).with_name("bench"))
RUN = ["run", "--methods", "vsepp", "--dataset", "synthetic", "--epochs", "1", "--device", "cpu"]


@dataclass
class Case:
    argv: list[str]
    expect: str  # substring of the stderr line
    code: int = 2
    one_line: bool = True  # `bench data check` prints progress on stderr before its problem lines


def _cases(tmp: Path) -> dict[str, Case]:
    """Build the inputs (files, folders) and the command line of every case."""
    out = ["--out", str(tmp / "results")]
    bad_toml = tmp / "bad.toml"
    bad_toml.write_text("[train\nlr = 1\n", encoding="utf-8")
    unknown_key = tmp / "unknown.toml"
    unknown_key.write_text("[train]\nlearning_rate = 0.1\n", encoding="utf-8")
    not_a_dir = tmp / "results.txt"
    not_a_dir.write_text("x", encoding="utf-8")

    def ucm(name: str, edit) -> Path:
        """A tiny UCM copy whose dataset.json is changed by `edit(images_list)` (or raw bytes)."""
        fs = make_karpathy(tmp / name, "ucm", per_class=2)
        obj = json.loads(fs.ann_file.read_text(encoding="utf-8"))
        res = edit(obj["images"], fs.image_dir)
        data = res if isinstance(res, bytes) else json.dumps(obj).encode()
        fs.ann_file.write_bytes(data)
        return fs.root

    def absolute(images, _d):
        images[1]["filename"] = "/etc/hostname"

    def dotdot(images, _d):
        images[1]["filename"] = "../../outside.tif"

    def symlink(images, d):
        outside = d.parent.parent / "outside.tif"
        outside.write_bytes((d / images[0]["filename"]).read_bytes())
        os.symlink(outside, d / "link.tif")
        images[1]["filename"] = "link.tif"

    def non_utf8(images, _d):
        images[1]["sentences"][0]["raw"] = "caf\u00e9 PLACEHOLDER"
        return json.dumps({"images": images}, ensure_ascii=False).encode().replace(
            "caf\u00e9 PLACEHOLDER".encode(), b"caf\xe9 latin-1")

    roots = {k: ucm(k, f) for k, f in
             {"absolute": absolute, "dotdot": dotdot, "symlink": symlink, "non_utf8": non_utf8}.items()}
    ucm_run = ["run", "--methods", "vsepp", "--dataset", "ucm", "--preset", "small", "--device", "cpu", *out]
    data_msgs = {"absolute": "is an absolute path", "dotdot": "escapes the image folder ('..')",
                 "symlink": "resolves outside the image folder", "non_utf8": "not valid UTF-8 at byte offset"}

    cases = {
        "unknown_method": Case(["run", "--methods", "vsepq", "--dataset", "synthetic", *out],
                               "unknown method 'vsepq' (did you mean 'vsepp'?)"),
        "unknown_dataset": Case(["run", "--methods", "vsepp", "--dataset", "rsicdd", *out],
                                "unknown dataset 'rsicdd' (did you mean 'rsicd'?)"),
        "empty_methods": Case(["run", "--methods", ",", "--dataset", "synthetic", *out], "--methods is empty"),
        "missing_data_root": Case([*RUN, "--data-root", str(tmp / "nope"), *out],
                                  f"{tmp / 'nope'}: data root folder not found"),
        "bad_set_value": Case([*RUN, "--set", "train.lr=fast", *out],
                              "bad value for 'lr': 'fast' is not a valid float"),
        "unknown_set_key": Case([*RUN, "--set", "train.learning_rate=0.1", *out],
                                "unknown option 'train.learning_rate'"),
        "set_without_equals": Case([*RUN, "--set", "train.lr", *out], "bad --set 'train.lr': expected key=value"),
        "config_missing": Case([*RUN, "--config", str(tmp / "none.toml"), *out], "config file not found"),
        "config_unparsable": Case([*RUN, "--config", str(bad_toml), *out], "cannot parse config"),
        "config_unknown_key": Case([*RUN, "--config", str(unknown_key), *out],
                                   "unknown option 'train.learning_rate' in config file"),
        "bad_seeds": Case([*RUN, "--seeds", "0,one", *out], "--seeds must be comma-separated integers, got '0,one'"),
        "unknown_preset": Case([*RUN, "--preset", "tiny", *out], "unknown preset 'tiny'"),
        "negative_epochs": Case([*RUN, "--epochs", "-1", *out], "train.epochs must be >= 0"),
        "batch_size_one": Case([*RUN, "--batch-size", "1", *out], "train.batch_size must be >= 2"),
        "jobs_with_slurm": Case([*RUN, "--jobs", "2", "--launcher", "slurm", *out],
                                "--jobs 2 runs cells side by side here (--launcher local); slurm runs one job per "
                                "cell already: drop --jobs"),
        "nan_checkpoint_interval": Case([*RUN, "--set", "train.checkpoint_every_s=nan", *out],
                                        "train.checkpoint_every_s must be >= 0, got nan"),
        "unknown_device": Case([*RUN, "--device", "tpu", *out], "unknown device 'tpu'"),
        "out_is_a_file": Case([*RUN, "--out", str(not_a_dir)], "exists and is not a folder"),
        "ann_file_missing": Case([*RUN, "--ann-file", str(tmp / "none.json"), *out], "annotation file not found"),
    }
    if not _cuda_available():
        cases["cuda_without_gpu"] = Case([*RUN, "--device", "cuda", *out], "no CUDA GPU is visible")
    for k, msg in data_msgs.items():
        cases[f"run_{k}"] = Case([*ucm_run, "--data-root", str(roots[k])], msg)
        cases[f"check_{k}"] = Case(["data", "check", "ucm", "--data-root", str(roots[k])], msg, code=1,
                                   one_line=False)
    return cases


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


CASE_IDS = [
    "unknown_method", "unknown_dataset", "empty_methods", "missing_data_root", "bad_set_value",
    "unknown_set_key", "set_without_equals", "config_missing", "config_unparsable", "config_unknown_key",
    "bad_seeds", "unknown_preset", "negative_epochs", "batch_size_one", "unknown_device", "out_is_a_file",
    "ann_file_missing", "cuda_without_gpu",
    "run_absolute", "run_dotdot", "run_symlink", "run_non_utf8",
    "check_absolute", "check_dotdot", "check_symlink", "check_non_utf8",
]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[Case, subprocess.CompletedProcess]]:
    tmp = tmp_path_factory.mktemp("cli_errors")
    cases = _cases(tmp)
    env = {**os.environ, "RSBENCH_CACHE": str(tmp / "cache"), "NO_COLOR": "1"}
    env.pop("RSBENCH_TEST_KILL_AT", None)

    def one(item: tuple[str, Case]) -> tuple[str, tuple[Case, subprocess.CompletedProcess]]:
        name, case = item
        proc = subprocess.run([BENCH, *case.argv], capture_output=True, text=True, env=env, cwd=tmp, timeout=300,
                              check=False)
        return name, (case, proc)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(one, cases.items()))


@pytest.mark.parametrize("name", CASE_IDS)
def test_user_error_is_one_line(results, name):
    if name not in results:
        pytest.skip("needs a machine without a CUDA GPU")
    case, proc = results[name]
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == case.code, (proc.returncode, proc.stderr)
    errors = [ln for ln in err_lines if ln.startswith("error:")]
    assert len(errors) == 1, err_lines
    assert case.expect in errors[0], errors[0]
    if case.one_line:
        assert err_lines == errors, err_lines


def test_no_result_files_after_user_errors(results):
    """A refused command writes nothing that could be taken for a result."""
    for case, _proc in results.values():
        if "--out" in case.argv:
            out = Path(case.argv[case.argv.index("--out") + 1])
            if out.is_dir():
                assert not list(out.rglob("metrics.json"))


@pytest.mark.parametrize("argv,expect", [
    (["run", "--methods", "vsepp"], "Missing"),
    ([*RUN, "--epochs", "three"], "--epochs"),
])
def test_usage_errors_have_no_traceback(tmp_path, argv, expect):
    proc = subprocess.run([BENCH, *argv, "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2
    assert expect in proc.stderr



_HEAVY = ("torch", "torchvision", "timm", "transformers", "open_clip", "pandas", "matplotlib", "scipy")
# runs `bench ARGS` in-process, then prints the exit code and which heavy packages got imported
_PROBE = """
import json, sys
from rsbench.cli.app import main
heavy = set(json.loads(sys.argv[1]))
try:
    main(sys.argv[2:])
    code = 0
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "heavy": sorted({m.split('.')[0] for m in sys.modules} & heavy)}))
"""


@pytest.mark.parametrize("argv,code", [
    (["--help"], 0),
    (["run", "--help"], 0),
    (["leaderboard", "--help"], 0),
    (["report", "--help"], 0),
    (["run", "--methods", "vsepp"], 2),  # usage error: --dataset missing
    (["compare"], 2),  # usage error: RESULTS_DIR missing
])
def test_help_and_usage_errors_import_no_heavy_module(argv, code):
    """Every command imports torch, pandas, matplotlib ... inside its body, so `bench --help` and a mistyped
    command line answer without loading them (seconds, not tens of seconds, on a cluster login node)."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(_HEAVY), *argv], capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"code": code, "heavy": []}, proc.stderr[-500:]


def _probe(argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(_HEAVY), *argv], capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stdout": proc.stdout, "stderr": proc.stderr}


def test_status_of_a_results_folder_imports_no_heavy_module(tmp_path):
    """#21: `bench status` reads every cell (metrics.json, ranks.npz, topk.npz) without torch, so it answers in
    about a second, on a folder holding a done, a failed and a started cell."""
    import numpy as np

    from rsbench.evaluation.metrics import compute_ranks
    from rsbench.evaluation.topk import topk_from_scores
    from rsbench.results.cell import write_eval_outputs, write_failure

    out = tmp_path / "res"
    c2i = np.repeat(np.arange(4), 2)
    sims = np.random.default_rng(0).standard_normal((4, 8))
    write_eval_outputs(out / "synthetic" / "vsepp" / "seed0", *compute_ranks(sims, c2i), c2i,
                       topk=topk_from_scores(sims))  # what a finished run leaves: metrics, ranks, top-K lists
    write_failure(out / "synthetic" / "vsepp" / "seed1", "train loss is non-finite")
    (out / "synthetic" / "vsepp" / "seed2").mkdir()
    got = _probe(["status", str(out)])
    assert (got["code"], got["heavy"]) == (0, []), got["stderr"][-500:]
    assert "1 done, 1 failed, 1 started" in got["stdout"]


def _documented_messages() -> dict[str, str]:
    """Case name -> the stderr line the first table of docs/bad_inputs.md promises for it."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md").read_text(encoding="utf-8")
    section = text.split("## Command line and config", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`\w+`", cells[3]) and cells[1].startswith("`error: "):
            rows[cells[3].strip("`")] = cells[1].strip("`")
    return rows


def test_bad_inputs_doc_shows_the_messages_bench_prints(results):
    """#21: docs/bad_inputs.md must show what `bench` prints: each documented line's text, between its `...` and
    `<placeholder>` gaps, appears in that order in the real error line."""
    rows = _documented_messages()
    assert len(rows) >= 15
    wrong = []
    for name, doc in rows.items():
        if name not in results:  # cuda_without_gpu on a machine with a GPU
            continue
        line = next(ln for ln in results[name][1].stderr.splitlines() if ln.startswith("error:"))
        pos = 0
        for part in re.split(r"\.\.\.|<[^>]+>", doc):
            pos = line.find(part, pos) + len(part) if pos >= 0 and line.find(part, pos) >= 0 else -1
        if pos < 0:
            wrong.append(f"{name}: docs/bad_inputs.md says {doc!r}, bench prints {line!r}")
    assert not wrong, "\n".join(wrong)
