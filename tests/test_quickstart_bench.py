"""benchmarks.quickstart: seeds side by side give the same runs as one after the other; a
stopped study resumes."""

import json

import pytest

from benchmarks.quickstart import main

SMALL = ["preset=debug", "train.threads=1", "eval.episodes=2"]


def test_parallel_seeds_match_sequential_ones_and_resume_reads_them(tmp_path):
    assert main(["--seeds", "3", "4", "--parallel", "2", "--runs", str(tmp_path / "par"),
                 "--out", str(tmp_path / "par_report"), *SMALL]) == 0
    assert main(["--seeds", "3", "--runs", str(tmp_path / "seq"),
                 "--out", str(tmp_path / "seq_report"), *SMALL]) == 0
    par = json.loads((tmp_path / "par_report.json").read_text())
    seq = json.loads((tmp_path / "seq_report.json").read_text())
    assert [r["seed"] for r in par["results"]] == [3, 4] and par["seeds"] == 2
    assert "seeds_eval_ge_475_within_20k_steps" in par
    a, b = par["results"][0], seq["results"][0]
    for key in ("final_eval_mean", "updates", "env_steps"):
        assert a[key] == b[key], key
    assert [e["return_mean"] for e in a["evals"]] == [e["return_mean"] for e in b["evals"]]
    # the final checkpoint evaluated again both ways, on seeded episodes: the same checkpoint
    # gives the same numbers, and they are the files worldrl eval wrote beside it
    assert a["checkpoint_eval"] == b["checkpoint_eval"]
    for mode, name in (("greedy", "eval_checkpoint.json"),
                       ("sampled", "eval_checkpoint_sample.json")):
        written = json.loads((tmp_path / "seq" / "s3" / name).read_text())
        assert written["policy"] == ("mode" if mode == "greedy" else "sample")
        assert written["env_steps"] == b["env_steps"]
        assert b["checkpoint_eval"][mode]["return_mean"] == written["return_mean"]
    assert set(par["seeds_final_checkpoint_ge_475"]) == {"greedy", "sampled"}
    assert "Seeds run 2 at a time." in (tmp_path / "par_report.md").read_text()

    # the study again with --resume: the finished seed is read, not trained again
    runs = str(tmp_path / "seq")
    with pytest.raises(SystemExit, match=r"seeds \[3\].*--resume"):
        main(["--seeds", "5", "3", "--runs", runs, "--out", str(tmp_path / "again"), *SMALL])
    assert not (tmp_path / "seq" / "s5").exists()  # refused before any seed ran
    with pytest.raises(SystemExit, match="--resume needs --runs"):
        main(["--seeds", "3", "--resume", *SMALL])
    assert main(["--seeds", "3", "--resume", "--runs", runs, "--out", str(tmp_path / "resumed"),
                 *SMALL]) == 0
    again = json.loads((tmp_path / "resumed.json").read_text())["results"][0]
    assert not b["resumed"] and b["wall_s"] > 0
    assert again["resumed"] and again["wall_s"] is None
    assert again["evals"] == b["evals"] and again["updates"] == b["updates"]
    assert again["checkpoint_eval"] == b["checkpoint_eval"]
    assert "resumed:" in (tmp_path / "resumed.md").read_text()
