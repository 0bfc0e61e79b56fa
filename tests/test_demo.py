"""The README's main command, minus the training step (tested on its own in test_train_*)."""

from __future__ import annotations

from loraregistry.demo import DEMO_ADAPTERS, run_demo


def test_demo_runs_end_to_end_offline(tmp_path):
    lines: list[str] = []
    shown = run_demo(tmp_path / "demo", say=lines.append, train=False)
    formats = {r["format"] for r in shown["reports"]}
    assert formats == {"kohya", "peft", "diffusers", "attn_procs"}
    assert {r["network_type"] for r in shown["reports"]} == {"lora", "locon", "loha", "lokr", "dora"}
    assert len(shown["reports"]) == len(DEMO_ADAPTERS)
    assert shown["verified_ok"]
    assert shown["merge"]["verify_ok"] and shown["merge"]["max_rel_error"] < 1e-6
    assert shown["resize"]["rank_after"] == {"4": 16}
    assert shown["autov3_unchanged"]
    assert shown["metadata"]["trigger_words"] == ["lrgshape"]
    assert shown["share"]["pulled_identical"]
    assert lines[-1].startswith("Done.")


def test_demo_writes_only_inside_its_folder_and_everything_there_verifies(tmp_path):
    """Training included: caches, the tiny base, the registry and the Hub cache go to OUTPUT/.work, nothing to
    the user's home; `lorareg verify OUTPUT` then judges only the adapters, and all of them pass."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    home, scratch, out = tmp_path / "home", tmp_path / "tmp", tmp_path / "demo-output"
    home.mkdir()
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "XDG_", "LORAREG_", "TRANSFORMERS_", "DIFFUSERS_"))}
    env.update(HOME=str(home), TMPDIR=str(scratch), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    main = "import sys; from loraregistry.cli import main; sys.exit(main())"
    demo = subprocess.run([sys.executable, "-c", main, "demo", str(out)], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=900)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []
    assert sorted(p.name for p in scratch.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-output", "home", "tmp"]
    def verify(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", main, "verify", "--json", *args], env=env, capture_output=True,
                              text=True, cwd=tmp_path, timeout=300)

    whole = json.loads(verify(str(out)).stdout)["files"]
    names = [str(Path(f["path"]).relative_to(out)) for f in whole]
    judged = set(names)
    assert not any(part.startswith(".") for name in judged for part in Path(name).parts)  # .work is skipped
    assert not any("checkpoints" in name for name in judged)  # training state is not an adapter
    trained = {"train-tiny/tiny-lora.safetensors", "train-tiny/tiny-lora-diffusers/pytorch_lora_weights.safetensors"}
    # trained on the tiny base, these fit no real base: verify says so (LRG200) and passes them against that base
    assert {n for n, f in zip(names, whole) if not f["ok"]} == trained
    assert all({x["code"] for x in f["findings"] if x["severity"] == "error"} == {"LRG200"}
               for f in whole if not f["ok"])
    tiny_base = out / ".work" / "train-cache" / "tiny-bases" / "sd1"
    against_tiny = verify(*(str(out / name) for name in sorted(trained)), "--base", str(tiny_base))
    assert against_tiny.returncode == 0, against_tiny.stdout[-3000:]
    assert "pulled/shapes-lora.safetensors" in judged or any(n.startswith("pulled/") for n in judged)
