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
